//! Fuzz target: the job-line scanner must accept exactly the lines serde_json accepts, with the
//! same fields, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data)
        && let Err(disagreement) = corral::jobline::reference::compare(line)
    {
        panic!("{disagreement}");
    }
});

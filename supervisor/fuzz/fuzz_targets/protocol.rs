//! Fuzz target: decoding the messages a worker and a supervisor exchange (postcard, as
//! ipc-channel carries them) never panics, and neither does reading a decoded batch or a
//! well-formed answer. (`Hello` carries OS handles that only exist inside ipc-channel, so it is
//! not decoded here.)
#![no_main]

use corral_protocol::{Batch, BatchDone};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = postcard::from_bytes::<Batch>(data) {
        for (_, input) in batch.iter() {
            std::hint::black_box(input);
        }
        for id in batch.ids() {
            std::hint::black_box(id);
        }
    }
    if let Ok(done) = postcard::from_bytes::<BatchDone>(data)
        && done.is_well_formed()
    {
        for (outcome, range) in done.iter() {
            std::hint::black_box((&outcome.result, &done.outputs.0[range]));
        }
    }
});

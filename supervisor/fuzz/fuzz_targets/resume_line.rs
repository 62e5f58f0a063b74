//! Fuzz target: the result-line reader of `--resume` never panics, and an id's digest depends
//! only on what the id spells: a string id and serde_json's own spelling of the same string
//! have one digest.
#![no_main]

use corral::resume::{id_digest, result_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = result_key(data);
    let _ = id_digest(data);
    // Ids reach the digest as their bare token (the scanner's span, a RawValue): no spaces.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(decoded) = serde_json::from_str::<String>(text)
        && text.starts_with('"')
        && text.ends_with('"')
    {
        let respelled = serde_json::to_vec(&decoded).expect("a string serializes");
        let (ours, serde) = (id_digest(data), id_digest(&respelled));
        assert!(ours.is_some(), "a valid string literal is an id: {text:?}");
        assert_eq!(
            ours,
            serde,
            "{text:?} and {:?} spell one string",
            String::from_utf8_lossy(&respelled)
        );
    }
});

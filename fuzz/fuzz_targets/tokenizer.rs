#![no_main]
//! CLIP's tokenizer on arbitrary text: always exactly the context's length, SOT first.

use libfuzzer_sys::fuzz_target;
use reclmis::tokenizer::{SOT, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let ids = Tokenizer::clip().tokenize(&text, 77).ids;
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], SOT);
});

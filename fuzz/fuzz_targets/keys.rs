//! The key codecs of `src/store/keys.rs`: decoders on arbitrary bytes,
//! encode/decode round trips and byte order. The body is
//! `keys::fuzz_check`, which the stable suite also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/store/keys.rs"]
mod keys;

fuzz_target!(|data: &[u8]| keys::fuzz_check(data));

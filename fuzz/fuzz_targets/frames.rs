//! Socket frames: `ClientFrame` parsing, `salvage_ref`, `parse_id` and
//! `parse_msg_id` on arbitrary UTF-8. The body is
//! `ephemera_actors::frames::fuzz_check`, which the stable suite also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        ephemera_actors::frames::fuzz_check(text);
    }
});

//! The `blobstore` target: its body is `media::fuzzing::blobstore`
//! (`src/media/fuzzing.rs`), which the stable suite also runs. The server
//! is a binary crate, so its media modules are included by `#[path]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The server's `src/media/`, three of its files.
#[allow(dead_code)]
#[path = "../../src/media"]
mod media {
    pub mod blobstore;
    pub mod fuzzing;
    pub mod sigv4;
}

fuzz_target!(|data: &[u8]| media::fuzzing::blobstore(data));

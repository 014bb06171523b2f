//! The TTL compaction filter's value decoder and decision
//! (`src/store/filter.rs`). The body is `filter::fuzz_check`, which the
//! stable suite also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

// `filter.rs` names `rocksdb::compaction_filter::Decision`. Building
// RocksDB's C++ under the fuzzer's sanitizers for one enum is not worth
// it: this crate stands in for `rocksdb`, with the same enum.
extern crate self as rocksdb;

/// RocksDB's compaction decision, as the `rocksdb` crate declares it.
pub mod compaction_filter {
    /// Keep, remove or replace a row.
    #[allow(dead_code)]
    pub enum Decision {
        Keep,
        Remove,
        Change(&'static [u8]),
    }
}

#[allow(dead_code)]
#[path = "../../src/store/filter.rs"]
mod filter;

fuzz_target!(|data: &[u8]| filter::fuzz_check(data));

//! The TTL compaction filter. Every value in the main database begins with
//! its expiry (8 bytes, big-endian Unix milliseconds; `u64::MAX` for rows
//! that never expire), so expiry is a property of the row and compaction
//! drops expired rows without a job that lists them.

use rocksdb::compaction_filter::Decision;

/// The name RocksDB records for the filter.
pub const NAME: &str = "ephemera-ttl-v1";

/// Prefixes a payload with its expiry.
pub fn with_expiry(expires_at: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits a stored value into its expiry and payload.
pub fn split(value: &[u8]) -> Option<(u64, &[u8])> {
    if value.len() < 8 {
        return None;
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&value[..8]);
    Some((u64::from_be_bytes(e), &value[8..]))
}

/// Whether compaction keeps a row at `now`.
pub fn decide(now: u64, value: &[u8]) -> Decision {
    match split(value) {
        // Past its expiry: the read path already hides it; now its bytes go.
        Some((expires_at, _)) if expires_at <= now => Decision::Remove,
        // Still live, or never expiring.
        Some(_) => Decision::Keep,
        // Too short to carry a header: not written by us. Keeping it is the
        // safe choice; a filter that guesses would destroy data.
        None => Decision::Keep,
    }
}

/// The filter as RocksDB calls it, reading the wall clock.
pub fn filter(_level: u32, _key: &[u8], value: &[u8]) -> Decision {
    decide(ephemera_actors::store::now_ms(), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(d: Decision) -> bool {
        matches!(d, Decision::Remove)
    }

    #[test]
    fn drops_rows_at_and_after_expiry() {
        let v = with_expiry(1_000, b"secret");
        assert!(!removed(decide(999, &v)), "live one ms before expiry");
        assert!(removed(decide(1_000, &v)), "gone at expires_at");
        assert!(removed(decide(5_000, &v)));
    }

    #[test]
    fn keeps_rows_that_never_expire_and_foreign_values() {
        assert!(!removed(decide(u64::MAX - 1, &with_expiry(u64::MAX, b"x"))));
        assert!(!removed(decide(10, b"short")));
    }

    #[test]
    fn split_reads_the_header() {
        assert_eq!(split(&with_expiry(7, b"ab")), Some((7, &b"ab"[..])));
    }
}

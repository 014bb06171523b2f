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

/// The body of the `filter` fuzz target (`fuzz/fuzz_targets/filter.rs`)
/// and of its stable smoke test: the first 8 bytes are the clock, the rest
/// a stored value. The decoder never panics, reads back what
/// [`with_expiry`] wrote, and compaction removes a row exactly when it
/// carries a header whose expiry has come.
#[cfg(any(test, fuzzing))]
pub fn fuzz_check(data: &[u8]) {
    let (now, value) = match data.split_first_chunk::<8>() {
        Some((clock, value)) => (u64::from_be_bytes(*clock), value),
        None => (0, data),
    };
    let removed = matches!(decide(now, value), Decision::Remove);
    match split(value) {
        Some((expires_at, payload)) => {
            assert_eq!(with_expiry(expires_at, payload), value);
            assert_eq!(removed, expires_at <= now);
        }
        None => {
            assert!(value.len() < 8);
            assert!(!removed, "a value without a header is kept");
        }
    }
    // Rows that never expire survive every clock.
    assert!(
        !matches!(decide(now, &with_expiry(u64::MAX, value)), Decision::Remove) || now == u64::MAX
    );
    assert_eq!(split(&with_expiry(now, value)), Some((now, value)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's body over seeds around the expiry boundary and
    /// thousands of xorshift mutations.
    #[test]
    fn fuzz_target_body_holds_on_seeds_and_mutations() {
        let clock = |now: u64, value: &[u8]| [&now.to_be_bytes()[..], value].concat();
        let seeds: Vec<Vec<u8>> = vec![
            clock(1_000, &with_expiry(1_000, b"secret")),
            clock(999, &with_expiry(1_000, b"secret")),
            clock(u64::MAX, &with_expiry(u64::MAX, b"")),
            clock(5, b"short"),
            b"short".to_vec(),
            vec![],
        ];
        crate::store::tests::byte_mutations(&seeds, 20_000, 0x1234_5678_9abc_def1u64, fuzz_check);
    }

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

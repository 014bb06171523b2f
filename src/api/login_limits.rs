//! What stands between the two password calls (`POST /accounts`,
//! `POST /sessions`) and the password hash, a deliberately slow PBKDF2:
//!
//! 1. token buckets per client address and per username, checked before
//!    any hashing: over either, the call is refused with `429 rate_limited`
//!    and `Retry-After` (whole seconds, at least 1);
//! 2. a pool that runs at most `kdf_threads` hashes at once, with at most
//!    `kdf_queue` calls waiting for it: past that, `503 unavailable` at once
//!    rather than a queue that grows with the attack, so a login flood takes
//!    a bounded share of the CPU and the sockets keep theirs.
//!
//! A username that does not exist is limited and hashed exactly like one
//! that does, so neither a `429` nor the time of a `401` tells who has an
//! account.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ephemera_actors::metrics::{Metrics, Reason};
use ephemera_actors::ratelimit::TokenBucket;
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::config::Config;

/// The limits and the hashing pool of the password calls, shared by every
/// worker of the public listener.
pub struct LoginGuard {
    /// Attempts per client address (IPv6 per /64: one host's share).
    by_address: KeyedBuckets<IpAddr>,
    /// Attempts per username, whatever the address. Keyed by a keyed hash
    /// of the name, so an entry is small whatever a client sends.
    by_account: KeyedBuckets<u64>,
    /// The random key of that hash (fixed for the process).
    account_hasher: RandomState,
    /// Where the hashing runs.
    kdf: KdfPool,
    /// Refusals are counted by reason.
    metrics: Arc<Metrics>,
}

impl LoginGuard {
    /// The guard the configuration asks for.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        LoginGuard {
            by_address: KeyedBuckets::new(
                f64::from(cfg.login_address_rate_per_second),
                cfg.login_address_burst,
                cfg.login_limit_entries,
            ),
            by_account: KeyedBuckets::new(
                f64::from(cfg.login_account_rate_per_minute) / 60.0,
                cfg.login_account_burst,
                cfg.login_limit_entries,
            ),
            account_hasher: RandomState::new(),
            kdf: KdfPool::new(cfg.kdf_threads, cfg.kdf_queue),
            metrics,
        }
    }

    /// Takes one attempt from the budgets of `peer` (the TCP peer; `None`
    /// counts as one shared unknown address) and of `username`, or refuses
    /// with `429` and the seconds until the exhausted one allows another.
    /// The address is checked first, so a refused address does not spend
    /// the account's budget.
    pub fn admit(&self, peer: Option<IpAddr>, username: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let refuse = |reason: &'static str, wait_ms: u64| {
            self.metrics
                .login_refusals
                .get_or_create(&Reason { reason })
                .inc();
            ApiError::RateLimited {
                message: "too many attempts, retry after the Retry-After header",
                retry_after_secs: wait_ms.div_ceil(1000).max(1),
            }
        };
        self.by_address
            .take(address_key(peer), now)
            .map_err(|ms| refuse("address", ms))?;
        self.by_account
            .take(self.account_hasher.hash_one(username), now)
            .map_err(|ms| refuse("account", ms))?;
        Ok(())
    }

    /// Runs `f` (the hashing, and the storage calls around it) on the
    /// bounded pool; `503` at once if the pool and its queue are full.
    pub async fn hash<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let result = self.kdf.run(f).await;
        if matches!(result, Err(ApiError::Unavailable)) {
            self.metrics
                .login_refusals
                .get_or_create(&Reason {
                    reason: "overloaded",
                })
                .inc();
        }
        result
    }
}

/// The budget key of a client address: IPv4 as is (IPv4-mapped IPv6
/// included); IPv6 by its /64, since one host is routinely given a whole
/// /64 and would otherwise have 2^64 budgets.
pub fn address_key(peer: Option<IpAddr>) -> IpAddr {
    match peer {
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// A token bucket per key, at most `max_entries` of them.
///
/// When a new key finds the map full, buckets that have refilled completely
/// are dropped first: a full bucket is exactly what a new entry would be,
/// so forgetting it changes nothing. If that does not free an eighth of the
/// map, the least recently used go too, so the work is paid once per
/// `max_entries / 8` new keys. The cost of the bound: a client cycling
/// through more than `max_entries` keys faster than buckets refill can get
/// an evicted key a fresh burst; the per-account budget and the hashing
/// pool still hold.
pub(crate) struct KeyedBuckets<K> {
    /// Tokens a second.
    rate_per_second: f64,
    /// Tokens saved up at most.
    burst: u32,
    /// Keys tracked at most.
    max_entries: usize,
    /// The buckets. One lock for all: a check is a hash lookup and a few
    /// float operations.
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> KeyedBuckets<K> {
    pub(crate) fn new(rate_per_second: f64, burst: u32, max_entries: usize) -> Self {
        KeyedBuckets {
            rate_per_second,
            burst,
            max_entries: max_entries.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key` at `now`, or says in how many ms one will be
    /// there.
    pub(crate) fn take(&self, key: K, now: Instant) -> Result<(), u64> {
        // A panic elsewhere while holding the lock leaves only token counts
        // behind: still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= self.max_entries && !buckets.contains_key(&key) {
            self.evict(&mut buckets, now);
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::with_rate(self.rate_per_second, self.burst, now))
            .take_at(now)
    }

    /// Frees at least an eighth of the map (see the type's doc).
    fn evict(&self, buckets: &mut HashMap<K, TokenBucket>, now: Instant) {
        buckets.retain(|_, b| !b.is_full_at(now));
        let target = self.max_entries - self.max_entries.div_ceil(8);
        if buckets.len() <= target {
            return;
        }
        let excess = buckets.len() - target;
        let mut used: Vec<Instant> = buckets.values().map(TokenBucket::last_used).collect();
        let (_, cutoff, _) = used.select_nth_unstable(excess - 1);
        let cutoff = *cutoff;
        buckets.retain(|_, b| b.last_used() > cutoff);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// At most `threads` blocking tasks at once, at most `queue` callers
/// waiting for one; the rest refused with `503` at once.
struct KdfPool {
    /// One permit per task allowed to run.
    running: Arc<Semaphore>,
    /// Callers running or waiting.
    admitted: Arc<AtomicUsize>,
    /// `threads + queue`.
    capacity: usize,
}

/// A caller's place in the pool, given back on drop (also when the caller
/// goes away while waiting).
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl KdfPool {
    fn new(threads: usize, queue: usize) -> Self {
        let threads = threads.max(1);
        KdfPool {
            running: Arc::new(Semaphore::new(threads)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: threads + queue,
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::Unavailable);
        }
        let ticket = Ticket(Arc::clone(&self.admitted));
        let permit = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable)?;
        // The permit and the ticket move into the task: if the caller goes
        // away mid-hash, the hash still holds its thread until it ends, so
        // no more than `threads` ever run.
        tokio::task::spawn_blocking(move || {
            let _held = (ticket, permit);
            f()
        })
        .await
        .map_err(|_| {
            tracing::error!("a password hashing task panicked");
            ApiError::Internal
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ipv6_addresses_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(Some(a)), address_key(Some(b)));
        assert_ne!(address_key(Some(a)), address_key(Some(c)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(Some(mapped)), v4);
        assert_eq!(address_key(Some(v4)), v4);
    }

    #[test]
    fn a_key_gets_its_burst_then_waits() {
        let b = KeyedBuckets::new(0.5, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take("x", t0).is_ok());
        }
        let wait = b.take("x", t0).unwrap_err();
        assert!((1990..=2000).contains(&wait), "a token every 2 s: {wait}");
        assert!(b.take("y", t0).is_ok(), "keys are independent");
        assert!(b.take("x", t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn the_map_never_grows_past_its_bound() {
        let b = KeyedBuckets::new(1.0, 2, 64);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            // Each key spends a token, so no bucket is full: eviction has
            // to drop the least recently used.
            assert!(b.take(i, t0 + Duration::from_millis(u64::from(i))).is_ok());
            assert!(b.len() <= 64, "{} entries after key {i}", b.len());
        }
    }

    #[test]
    fn eviction_keeps_the_recent_and_drops_the_idle_first() {
        let b = KeyedBuckets::new(1.0, 2, 8);
        let t0 = Instant::now();
        // Key 0 empties its bucket; keys 1..8 take one token each, long ago.
        assert!(b.take(0u32, t0).is_ok());
        assert!(b.take(0u32, t0).is_ok());
        assert!(b.take(0u32, t0).is_err());
        for k in 1..8u32 {
            assert!(b.take(k, t0).is_ok());
        }
        // 1.5 s later keys 1..8 are full again, key 0 is not: a new key
        // evicts the full ones and key 0 keeps its empty bucket.
        let later = t0 + Duration::from_millis(1500);
        assert!(b.take(100u32, later).is_ok());
        assert!(b.len() <= 3, "{} entries", b.len());
        assert!(b.take(0u32, later).is_ok(), "1.5 tokens refilled");
        assert!(b.take(0u32, later).is_err(), "key 0 was not forgotten");
    }

    #[tokio::test]
    async fn the_pool_sheds_past_its_queue() {
        let pool = Arc::new(KdfPool::new(1, 1));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        // One running (blocked on the channel), one waiting: the third is
        // refused at once.
        let running = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = release_rx.recv();
                })
                .await
            })
        };
        while pool.admitted.load(Ordering::Acquire) < 1 {
            tokio::task::yield_now().await;
        }
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(|| 7).await })
        };
        while pool.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| 0).await, Err(ApiError::Unavailable)));
        release_tx.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(pool.admitted.load(Ordering::Acquire), 0);
        assert_eq!(pool.run(|| 1).await.unwrap(), 1);
    }
}

//! Per-user bounds on uploads, so no user can fill the disk: how many
//! uploads a user may have pending and how many bytes they declare, and
//! how fast a user may mint upload URLs.
//!
//! An upload is pending from its minting until a message uses it or its
//! record's life ends (the URL's 15 minutes plus the grace for an unsent
//! upload): until then its blob may take space nobody else accounts for.
//! The store holds the truth (the media records); this keeps, per user,
//! the ids counted so far, re-checks them against the store before each
//! decision (so a bound or ended upload frees its place at once), and is
//! rebuilt from the store at start. Per node: a user spread over several
//! nodes gets each node's quota.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ephemera_actors::ids::{Id, UserId};
use ephemera_actors::ratelimit::TokenBucket;
use ephemera_actors::store::Millis;

/// The bounds (from the configuration).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct UploadLimits {
    /// Upload URLs a user may mint a second, on average.
    pub rate_per_second: u32,
    /// Upload URLs a user may mint at once above the rate.
    pub burst: u32,
    /// Uploads a user may have pending.
    pub max_pending: usize,
    /// Bytes a user's pending uploads may declare in total.
    pub max_pending_bytes: u64,
}

/// Why an upload URL is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the rate of upload URLs: one is allowed again in this many ms.
    Rate(u64),
    /// Too many uploads, or bytes, pending: the oldest one ends in this
    /// many ms at the latest (sending one frees its place at once).
    Pending(u64),
    /// One upload larger than the whole pending-bytes quota: never fits.
    TooLarge,
}

/// One upload counted against its owner.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: Id,
    bytes: u64,
    /// When its record's life ends, and so its place is free at the latest.
    until: Millis,
}

/// A user's pending uploads and rate bucket.
#[derive(Debug)]
struct UserUploads {
    pending: Vec<Pending>,
    rate: TokenBucket,
}

/// The quotas of every user with uploads pending or minted lately.
#[derive(Debug)]
pub struct UploadQuota {
    limits: UploadLimits,
    users: Mutex<HashMap<UserId, UserUploads>>,
}

impl UploadQuota {
    /// No upload counted yet.
    pub fn new(limits: UploadLimits) -> Self {
        UploadQuota {
            limits,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, UserUploads>> {
        // A panic while holding the lock leaves counts that are still
        // counts: go on with them.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(
        &self,
        users: &'a mut HashMap<UserId, UserUploads>,
        owner: UserId,
    ) -> &'a mut UserUploads {
        users.entry(owner).or_insert_with(|| UserUploads {
            pending: Vec::new(),
            rate: TokenBucket::new(self.limits.rate_per_second, self.limits.burst),
        })
    }

    /// Counts an upload found in the store at start (no rate token taken).
    pub fn restore(&self, owner: UserId, id: Id, bytes: u64, until: Millis) {
        let mut users = self.users();
        let user = self.entry(&mut users, owner);
        if !user.pending.iter().any(|p| p.id == id) {
            user.pending.push(Pending { id, bytes, until });
        }
    }

    /// Takes a place for a new upload `id` of `bytes` for `owner`, or says
    /// why not. `still_pending(id)` tells, from the store, whether an
    /// upload counted earlier still is (it may block: call this off the
    /// event loop). Quotas are checked before the rate, so a refused
    /// upload costs no rate token.
    pub fn reserve(
        &self,
        owner: UserId,
        id: Id,
        bytes: u64,
        until: Millis,
        now: Millis,
        still_pending: impl Fn(Id) -> bool,
    ) -> Result<(), Refusal> {
        if bytes > self.limits.max_pending_bytes {
            return Err(Refusal::TooLarge);
        }
        // Re-check what is counted against the store, without the lock
        // (the store reads block); forgetting an upload twice is harmless.
        let counted: Vec<Id> = {
            let mut users = self.users();
            let user = self.entry(&mut users, owner);
            user.pending.retain(|p| p.until > now);
            user.pending.iter().map(|p| p.id).collect()
        };
        let over: Vec<Id> = counted
            .into_iter()
            .filter(|id| !still_pending(*id))
            .collect();
        let mut users = self.users();
        let user = self.entry(&mut users, owner);
        user.pending.retain(|p| !over.contains(&p.id));
        let count = user.pending.len();
        let total: u64 = user.pending.iter().map(|p| p.bytes).sum();
        if count >= self.limits.max_pending
            || total.saturating_add(bytes) > self.limits.max_pending_bytes
        {
            let free_at = user.pending.iter().map(|p| p.until).min().unwrap_or(now);
            return Err(Refusal::Pending(free_at.saturating_sub(now).max(1)));
        }
        user.rate.take_at(Instant::now()).map_err(Refusal::Rate)?;
        user.pending.push(Pending { id, bytes, until });
        Ok(())
    }

    /// Gives back the place of an upload that was never handed out (its
    /// minting failed after [`UploadQuota::reserve`]).
    pub fn release(&self, owner: UserId, id: Id) {
        if let Some(user) = self.users().get_mut(&owner) {
            user.pending.retain(|p| p.id != id);
        }
    }

    /// Forgets uploads whose life ended by `now`, and users with nothing
    /// pending (their rate bucket refills to full within `burst / rate`
    /// seconds, so a user idle that long loses nothing by being dropped;
    /// one minting again sooner keeps theirs while an upload is pending).
    pub fn prune(&self, now: Millis) {
        self.users().retain(|_, user| {
            user.pending.retain(|p| p.until > now);
            !user.pending.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(max_pending: usize, max_pending_bytes: u64, burst: u32) -> UploadQuota {
        UploadQuota::new(UploadLimits {
            rate_per_second: 1,
            burst,
            max_pending,
            max_pending_bytes,
        })
    }

    fn id(n: u8) -> Id {
        Id([n; 16])
    }

    fn user(n: u8) -> UserId {
        Id([100 + n; 16])
    }

    #[test]
    fn count_bytes_and_rate() {
        let q = quota(2, 100, 10);
        let alice = user(1);
        let pending = |_| true;
        assert_eq!(q.reserve(alice, id(1), 40, 5_000, 0, pending), Ok(()));
        assert_eq!(q.reserve(alice, id(2), 40, 9_000, 0, pending), Ok(()));
        // Two pending: the third waits until the first ends at 5 s.
        assert_eq!(
            q.reserve(alice, id(3), 1, 9_000, 1_000, pending),
            Err(Refusal::Pending(4_000))
        );
        // Another user is not affected.
        assert_eq!(q.reserve(user(2), id(4), 100, 9_000, 0, pending), Ok(()));
        // Once the first is bound (no longer pending in the store), its
        // place is free; bytes still bound the total.
        let bound = |i: Id| i != id(1);
        assert_eq!(
            q.reserve(alice, id(5), 61, 9_000, 1_000, bound),
            Err(Refusal::Pending(8_000))
        );
        assert_eq!(q.reserve(alice, id(5), 60, 9_000, 1_000, bound), Ok(()));
        // After its life ends an upload no longer counts, store or not.
        assert_eq!(q.reserve(alice, id(6), 1, 9_500, 9_000, pending), Ok(()));
        // Larger than the whole quota: never.
        assert_eq!(
            q.reserve(alice, id(7), 101, 9_000, 0, pending),
            Err(Refusal::TooLarge)
        );
    }

    #[test]
    fn rate_is_checked_after_the_quota() {
        let q = quota(1, 100, 1);
        let alice = user(1);
        assert_eq!(q.reserve(alice, id(1), 1, 5_000, 0, |_| true), Ok(()));
        // Refused by the count: no token taken, the bucket is empty anyway.
        assert!(matches!(
            q.reserve(alice, id(2), 1, 5_000, 0, |_| true),
            Err(Refusal::Pending(_))
        ));
        // Free again, but over the rate (burst 1, 1/s).
        assert!(matches!(
            q.reserve(alice, id(2), 1, 5_000, 0, |_| false),
            Err(Refusal::Rate(ms)) if (1..=1000).contains(&ms)
        ));
        q.release(alice, id(1));
    }

    #[test]
    fn restore_prune_and_release() {
        let q = quota(1, 100, 10);
        let alice = user(1);
        q.restore(alice, id(1), 10, 5_000);
        q.restore(alice, id(1), 10, 5_000);
        assert!(matches!(
            q.reserve(alice, id(2), 1, 9_000, 0, |_| true),
            Err(Refusal::Pending(5_000))
        ));
        q.release(alice, id(1));
        assert_eq!(q.reserve(alice, id(2), 1, 9_000, 0, |_| true), Ok(()));
        q.prune(9_000);
        assert!(q.users().is_empty());
    }
}

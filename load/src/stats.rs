//! What a run measures and how it checks delivery.
//!
//! * [`Latency`]: an HdrHistogram of microseconds with merge and a
//!   [`LatencySummary`] (p50/p90/p99/p999/max in milliseconds).
//! * [`Tracker`]: the exactly-once ledger. Every `ack` and every `message`
//!   frame is filed under its `msg_id`; a message is complete when it is
//!   acked and has reached every device slot it must reach. Arrivals may
//!   come before the ack (the recipient can be faster than the sender's
//!   socket), so either side may open the entry. A second arrival at the
//!   same slot, or any arrival after completion, is a duplicate. Whatever is
//!   still open when the run ends is reported by [`Tracker::finish`] as lost
//!   (or as expired, if its lifetime ended first), never dropped silently.
//!   A slot is one device of one receiver ([`crate::schedule::Plan::slot`]):
//!   a pair run has at most 64, a group of 256 members one or more per
//!   member, so the slots a message reached are a bit set that stays inline
//!   up to 64 and grows on the heap beyond.
//! * Three latencies, all from the due time: the ack (per message), the
//!   delivery (per message, to its last slot) and the frame (every first
//!   arrival at a slot; an arrival before the ack is timed once the ack
//!   names the due time). One `message` frame costs one hash, one shard
//!   lock, one map look-up and a histogram record.
//!
//! The tracker is sharded by `msg_id` hash so device tasks on different
//! threads rarely meet on one lock; each shard also keeps its own latency
//! histograms, merged when a report or a per-second point is taken.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::schedule::{hash_str, Expected};

/// Highest latency a histogram tracks exactly, in microseconds (one hour);
/// larger values are clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The counts.
    hist: Histogram<u64>,
}

impl Latency {
    /// An empty distribution accurate to 3 significant digits (for run
    /// totals).
    pub fn precise() -> Latency {
        Latency::with_sigfig(3)
    }

    /// An empty distribution accurate to 2 significant digits (smaller, for
    /// per-second points).
    pub fn coarse() -> Latency {
        Latency::with_sigfig(2)
    }

    fn with_sigfig(sigfig: u8) -> Latency {
        Latency {
            // Constant, valid bounds: 1 ≤ low, high ≥ 2·low, sigfig ≤ 5.
            hist: Histogram::new_with_bounds(1, MAX_US, sigfig).expect("valid histogram bounds"),
        }
    }

    /// Record one value, clamped into the tracked range.
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    /// Add every value of `other` (histograms of any precision merge).
    pub fn merge(&mut self, other: &Latency) {
        // Both cover [1, MAX_US], so the addition cannot go out of range.
        self.hist
            .add(&other.hist)
            .expect("histograms with the same range merge");
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `q` (0..=1), in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// Forget every value.
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// The summary a report prints.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.count(),
            p50_ms: ms(self.quantile_us(0.5)),
            p90_ms: ms(self.quantile_us(0.9)),
            p99_ms: ms(self.quantile_us(0.99)),
            p999_ms: ms(self.quantile_us(0.999)),
            max_ms: ms(if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            }),
            mean_ms: if self.hist.is_empty() {
                0.0
            } else {
                self.hist.mean() / 1000.0
            },
        }
    }
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

// ---------------------------------------------------------------------------
// The ledger
// ---------------------------------------------------------------------------

/// A hasher for keys that are already well-mixed hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in to stay correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Build = BuildHasherDefault<Prehashed>;

/// A set of device slots, a bit each: the first 64 inline (a pair run
/// never needs more, so it never allocates), the rest in words on the heap
/// (a group of 256 members × devices).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SlotSet {
    /// Slots 0..64.
    low: u64,
    /// Slots 64.., 64 a word.
    high: Vec<u64>,
}

impl SlotSet {
    fn word(&self, slot: u32) -> (Option<&u64>, u64) {
        let bit = 1u64 << (slot % 64);
        if slot < 64 {
            (Some(&self.low), bit)
        } else {
            (self.high.get((slot / 64 - 1) as usize), bit)
        }
    }

    fn contains(&self, slot: u32) -> bool {
        match self.word(slot) {
            (Some(w), bit) => w & bit != 0,
            (None, _) => false,
        }
    }

    fn insert(&mut self, slot: u32) {
        let bit = 1u64 << (slot % 64);
        if slot < 64 {
            self.low |= bit;
        } else {
            let i = (slot / 64 - 1) as usize;
            if self.high.len() <= i {
                self.high.resize(i + 1, 0);
            }
            self.high[i] |= bit;
        }
    }

    fn remove(&mut self, slot: u32) {
        let bit = 1u64 << (slot % 64);
        if slot < 64 {
            self.low &= !bit;
        } else if let Some(w) = self.high.get_mut((slot / 64 - 1) as usize) {
            *w &= !bit;
        }
    }
}

/// One message not yet complete.
#[derive(Debug, Default)]
struct Open {
    /// Its number in the schedule, once the ack told us.
    k: Option<u64>,
    /// When it was due, microseconds from the start (valid once acked).
    due_us: u64,
    /// Slots that must receive it (valid once acked).
    expected: Expected,
    /// Slots it has reached.
    got: SlotSet,
    /// How many slots it has reached (`got`'s size).
    got_count: u32,
    /// Arrivals before the ack, `(slot, µs from the start)`: their frame
    /// latency is known once the ack names the due time.
    early: Vec<(u32, u64)>,
    /// Latest arrival so far, microseconds from the start.
    last_arrival_us: u64,
    /// Its `expires_at`, Unix ms (valid once acked).
    expires_at_ms: i64,
}

impl Open {
    fn acked(&self) -> bool {
        self.k.is_some()
    }

    /// Acked, and at every slot it must reach (after the ack `got` holds
    /// expected slots only, so counting is enough).
    fn complete(&self) -> bool {
        self.acked() && self.got_count == self.expected.count()
    }
}

/// Running totals of one shard, or of the whole tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerCounts {
    /// Acks for messages of this run (first ack of each).
    pub acked: u64,
    /// Acks seen again for a message already acked.
    pub duplicate_acks: u64,
    /// Messages that reached every slot they had to.
    pub delivered: u64,
    /// `message` frames that were a first arrival at their slot: the
    /// delivered frames.
    pub device_deliveries: u64,
    /// `message` frames for a slot that already had the message (or for
    /// a message already complete).
    pub duplicates: u64,
    /// Arrivals at a slot the message was not meant for (e.g. the sending
    /// device itself).
    pub unexpected: u64,
}

impl TrackerCounts {
    fn add(&mut self, o: &TrackerCounts) {
        self.acked += o.acked;
        self.duplicate_acks += o.duplicate_acks;
        self.delivered += o.delivered;
        self.device_deliveries += o.device_deliveries;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
    }
}

/// What one shard holds: the open entries, and the books beside them (a
/// separate struct so an entry and the books can be borrowed at once).
struct Shard {
    /// Open entries by `msg_id` hash.
    open: HashMap<u64, Open, Build>,
    /// Everything else.
    books: Books,
}

/// A shard's completed messages, counts and histograms.
struct Books {
    /// Hashes of completed messages, to catch late duplicates.
    done: HashSet<u64, Build>,
    /// Totals since the start.
    counts: TrackerCounts,
    /// Totals since the last [`Tracker::take_interval`].
    interval: TrackerCounts,
    /// Ack latency (due → ack) since the start.
    ack: Latency,
    /// Delivery latency (due → last required arrival) since the start.
    delivery: Latency,
    /// Frame latency (due → each first arrival at a slot) since the start.
    frame: Latency,
    /// Ack latency since the last interval.
    ack_interval: Latency,
    /// Delivery latency since the last interval.
    delivery_interval: Latency,
    /// Frame latency since the last interval.
    frame_interval: Latency,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            open: HashMap::default(),
            books: Books {
                done: HashSet::default(),
                counts: TrackerCounts::default(),
                interval: TrackerCounts::default(),
                ack: Latency::precise(),
                delivery: Latency::precise(),
                frame: Latency::precise(),
                ack_interval: Latency::coarse(),
                delivery_interval: Latency::coarse(),
                frame_interval: Latency::coarse(),
            },
        }
    }
}

impl Books {
    fn bump(&mut self, f: impl Fn(&mut TrackerCounts)) {
        f(&mut self.counts);
        f(&mut self.interval);
    }

    fn ack_latency(&mut self, us: u64) {
        self.ack.record_us(us);
        self.ack_interval.record_us(us);
    }

    fn frame_latency(&mut self, us: u64) {
        self.frame.record_us(us);
        self.frame_interval.record_us(us);
    }

    /// Message `key` is complete, its last arrival `latency` after it was
    /// due.
    fn delivered(&mut self, key: u64, latency: u64) {
        self.done.insert(key);
        self.delivery.record_us(latency);
        self.delivery_interval.record_us(latency);
        self.bump(|c| c.delivered += 1);
    }
}

/// How an arrival was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first copy at this slot.
    First,
    /// The first copy at this slot, and the message is now complete.
    Completed,
    /// A copy this slot already had.
    Duplicate,
    /// A copy at a slot the message was not meant for.
    Unexpected,
}

/// What one ack is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    /// The message's number in the schedule.
    pub k: u64,
    /// When it was due, microseconds from the start.
    pub due_us: u64,
    /// Slots that must receive it ([`crate::schedule::Plan::expected`]).
    pub expected: Expected,
    /// Its `expires_at`, Unix ms.
    pub expires_at_ms: i64,
}

/// Most missing slots a [`Missing`] sample lists.
const MISSING_LISTED: usize = 16;

/// One message that did not reach every slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Missing {
    /// The message's number in the schedule.
    pub k: u64,
    /// Slots it had to reach.
    pub expected_slots: u32,
    /// Slots it did reach.
    pub reached: u32,
    /// The first few slots it did not reach (see `Plan::slot`).
    pub missing: Vec<u32>,
}

/// The loss accounting at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Acked messages that did not reach every slot, though still alive.
    pub lost: u64,
    /// Slot deliveries (frames) those messages are short of.
    pub lost_device_deliveries: u64,
    /// Acked messages that did not reach every slot but whose lifetime had
    /// ended by then (allowed: expiry wins).
    pub expired_undelivered: u64,
    /// Messages that arrived somewhere but were never acked to the sender.
    pub delivered_without_ack: u64,
    /// Up to 20 of the lost messages, for a closer look.
    pub lost_samples: Vec<Missing>,
}

/// Per-interval figures, taken by [`Tracker::take_interval`].
#[derive(Debug, Clone)]
pub struct Interval {
    /// Counts in the interval.
    pub counts: TrackerCounts,
    /// Ack latencies in the interval.
    pub ack: Latency,
    /// Delivery latencies in the interval.
    pub delivery: Latency,
    /// Frame latencies in the interval.
    pub frame: Latency,
}

/// The latency distributions since the start, merged over the shards.
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Due → ack at the sending device, per message.
    pub ack: Latency,
    /// Due → arrival at the last slot, per message.
    pub delivery: Latency,
    /// Due → arrival, per frame (every first arrival at a slot).
    pub frame: Latency,
}

/// The sharded exactly-once ledger (see the module doc).
pub struct Tracker {
    /// The shards; a `msg_id` lives in `shards[hash % len]`.
    shards: Box<[Mutex<Shard>]>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// Lock a shard; a panic elsewhere must not hide the counts, so a poisoned
/// lock is used as is.
fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Tracker {
    /// A ledger with `shards` shards (at least 1).
    pub fn new(shards: usize) -> Tracker {
        Tracker {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard::new()))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The high bits pick the shard; the map uses all of them.
        &self.shards[((key >> 40) as usize) % self.shards.len()]
    }

    /// File the ack of `msg_id`, received at `now_us`; returns its ack
    /// latency in microseconds, or `None` if it was a duplicate ack.
    pub fn on_ack(&self, msg_id: &str, info: AckInfo, now_us: u64) -> Option<u64> {
        let key = hash_str(msg_id);
        let mut guard = lock(self.shard(key));
        let Shard { open, books } = &mut *guard;
        if books.done.contains(&key) {
            books.bump(|c| c.duplicate_acks += 1);
            return None;
        }
        let entry = open.entry(key).or_default();
        if entry.acked() {
            books.bump(|c| c.duplicate_acks += 1);
            return None;
        }
        entry.k = Some(info.k);
        entry.due_us = info.due_us;
        entry.expected = info.expected;
        entry.expires_at_ms = info.expires_at_ms;
        let latency = now_us.saturating_sub(info.due_us);
        books.ack_latency(latency);
        books.bump(|c| c.acked += 1);
        // Early arrivals: their frame latency is known now; those at slots
        // it was never meant for are strays.
        let mut stray = 0;
        for (slot, at) in std::mem::take(&mut entry.early) {
            if info.expected.contains(slot) {
                books.frame_latency(at.saturating_sub(info.due_us));
            } else {
                entry.got.remove(slot);
                entry.got_count -= 1;
                stray += 1;
            }
        }
        if stray > 0 {
            books.bump(|c| c.unexpected += stray);
        }
        if entry.complete() {
            let delivery = entry.last_arrival_us.saturating_sub(entry.due_us);
            open.remove(&key);
            books.delivered(key, delivery);
        }
        Some(latency)
    }

    /// File the arrival of `msg_id` at device slot `slot` at `now_us`.
    pub fn on_arrival(&self, msg_id: &str, slot: u32, now_us: u64) -> Arrival {
        let key = hash_str(msg_id);
        let mut guard = lock(self.shard(key));
        let Shard { open, books } = &mut *guard;
        if books.done.contains(&key) {
            books.bump(|c| c.duplicates += 1);
            return Arrival::Duplicate;
        }
        let entry = open.entry(key).or_default();
        if entry.got.contains(slot) {
            books.bump(|c| c.duplicates += 1);
            return Arrival::Duplicate;
        }
        if entry.acked() && !entry.expected.contains(slot) {
            books.bump(|c| c.unexpected += 1);
            return Arrival::Unexpected;
        }
        entry.got.insert(slot);
        entry.got_count += 1;
        entry.last_arrival_us = entry.last_arrival_us.max(now_us);
        books.bump(|c| c.device_deliveries += 1);
        if !entry.acked() {
            entry.early.push((slot, now_us));
            return Arrival::First;
        }
        books.frame_latency(now_us.saturating_sub(entry.due_us));
        if entry.complete() {
            let delivery = entry.last_arrival_us.saturating_sub(entry.due_us);
            open.remove(&key);
            books.delivered(key, delivery);
            Arrival::Completed
        } else {
            Arrival::First
        }
    }

    /// Messages acked but not yet complete.
    pub fn pending(&self) -> u64 {
        self.shards
            .iter()
            .map(|m| lock(m).open.values().filter(|e| e.acked()).count() as u64)
            .sum()
    }

    /// Totals since the start.
    pub fn counts(&self) -> TrackerCounts {
        let mut total = TrackerCounts::default();
        for m in self.shards.iter() {
            total.add(&lock(m).books.counts);
        }
        total
    }

    /// Ack, delivery and frame latency since the start, merged over the
    /// shards.
    pub fn latencies(&self) -> Latencies {
        let mut out = Latencies {
            ack: Latency::precise(),
            delivery: Latency::precise(),
            frame: Latency::precise(),
        };
        for m in self.shards.iter() {
            let s = lock(m);
            out.ack.merge(&s.books.ack);
            out.delivery.merge(&s.books.delivery);
            out.frame.merge(&s.books.frame);
        }
        out
    }

    /// Counts and latencies since the previous call, merged over the
    /// shards, and a fresh interval begun.
    pub fn take_interval(&self) -> Interval {
        let mut out = Interval {
            counts: TrackerCounts::default(),
            ack: Latency::coarse(),
            delivery: Latency::coarse(),
            frame: Latency::coarse(),
        };
        for m in self.shards.iter() {
            let mut s = lock(m);
            let b = &mut s.books;
            out.counts.add(&b.interval);
            out.ack.merge(&b.ack_interval);
            out.delivery.merge(&b.delivery_interval);
            out.frame.merge(&b.frame_interval);
            b.interval = TrackerCounts::default();
            b.ack_interval.reset();
            b.delivery_interval.reset();
            b.frame_interval.reset();
        }
        out
    }

    /// The loss accounting: every entry still open at `now_ms` (Unix ms) is
    /// lost, expired or unacked. Call after the drain period.
    pub fn finish(&self, now_ms: i64) -> Accounting {
        let mut acc = Accounting::default();
        for m in self.shards.iter() {
            let s = lock(m);
            for entry in s.open.values() {
                let Some(k) = entry.k else {
                    acc.delivered_without_ack += 1;
                    continue;
                };
                if entry.expires_at_ms <= now_ms {
                    acc.expired_undelivered += 1;
                    continue;
                }
                let expected = entry.expected.count();
                acc.lost += 1;
                acc.lost_device_deliveries += u64::from(expected - entry.got_count);
                if acc.lost_samples.len() < 20 {
                    acc.lost_samples.push(Missing {
                        k,
                        expected_slots: expected,
                        reached: entry.got_count,
                        missing: (0..entry.expected.slots)
                            .filter(|&s| entry.expected.contains(s) && !entry.got.contains(s))
                            .take(MISSING_LISTED)
                            .collect(),
                    });
                }
            }
        }
        acc.lost_samples.sort_by_key(|m| m.k);
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(k: u64, due_us: u64, expected: Expected) -> AckInfo {
        AckInfo {
            k,
            due_us,
            expected,
            expires_at_ms: i64::MAX,
        }
    }

    /// Slots `0..slots` but `skip`.
    fn but(slots: u32, skip: u32) -> Expected {
        Expected {
            slots,
            skip: Some(skip),
        }
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_everything() {
        let mut all = Latency::precise();
        let mut parts = [Latency::precise(), Latency::coarse(), Latency::precise()];
        for v in 1..=30_000u64 {
            all.record_us(v);
            parts[(v % 3) as usize].record_us(v);
        }
        let mut merged = Latency::precise();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged.count(), 30_000);
        assert_eq!(merged.count(), all.count());
        for q in [0.5, 0.9, 0.99, 0.999] {
            let (a, b) = (all.quantile_us(q) as f64, merged.quantile_us(q) as f64);
            // The coarse part has 2 significant digits: within 1%.
            assert!((a - b).abs() / a < 0.01, "q={q}: {a} vs {b}");
        }
        let s = merged.summary();
        assert!((s.p50_ms - 15.0).abs() < 0.2, "{s:?}");
        assert!((s.max_ms - 30.0).abs() < 0.2, "{s:?}");
        // Out-of-range values are clamped, not lost.
        merged.record_us(0);
        merged.record_us(u64::MAX);
        assert_eq!(merged.count(), 30_002);
        assert_eq!(Latency::precise().summary(), LatencySummary::default());
    }

    #[test]
    fn slot_sets_hold_slots_past_64() {
        let mut set = SlotSet::default();
        for slot in [0, 63, 64, 255, 8191] {
            assert!(!set.contains(slot));
            set.insert(slot);
            assert!(set.contains(slot));
        }
        assert!(!set.contains(1) && !set.contains(128) && !set.contains(9000));
        set.remove(255);
        set.remove(9000);
        assert!(!set.contains(255) && set.contains(8191));
        // A pair run's slots never allocate.
        let mut small = SlotSet::default();
        small.insert(5);
        assert!(small.high.is_empty());
    }

    #[test]
    fn ack_then_every_slot_completes_once() {
        let t = Tracker::new(4);
        // Two recipient slots (0, 1) and one of the sender's (3).
        assert_eq!(t.on_ack("m1", ack(7, 1_000, but(4, 2)), 3_000), Some(2_000));
        assert_eq!(t.on_arrival("m1", 0, 4_000), Arrival::First);
        assert_eq!(t.on_arrival("m1", 3, 5_000), Arrival::First);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.on_arrival("m1", 1, 9_000), Arrival::Completed);
        assert_eq!(t.pending(), 0);
        let c = t.counts();
        assert_eq!((c.acked, c.delivered, c.device_deliveries), (1, 1, 3));
        let l = t.latencies();
        assert_eq!(l.ack.quantile_us(1.0), 2_000);
        // Delivery waits for the LAST slot: 9 ms - 1 ms.
        assert!((l.delivery.summary().max_ms - 8.0).abs() < 0.01);
        // One frame latency per arrival: 3, 4 and 8 ms.
        assert_eq!(l.frame.count(), 3);
        assert!((l.frame.summary().p50_ms - 4.0).abs() < 0.01);
        assert_eq!(t.finish(0), Accounting::default());
    }

    #[test]
    fn arrivals_before_the_ack_count() {
        let t = Tracker::new(2);
        assert_eq!(t.on_arrival("m2", 0, 2_000), Arrival::First);
        // Not acked yet: pending counts only acked messages.
        assert_eq!(t.pending(), 0);
        t.on_ack("m2", ack(1, 500, Expected::all(1)), 3_000);
        let c = t.counts();
        assert_eq!((c.acked, c.delivered), (1, 1));
        let l = t.latencies();
        assert!((l.delivery.summary().max_ms - 1.5).abs() < 0.01);
        // The early frame is timed from the due time the ack gave.
        assert_eq!(l.frame.count(), 1);
        assert!((l.frame.summary().max_ms - 1.5).abs() < 0.01);
        // An arrival that never gets an ack is reported.
        t.on_arrival("ghost", 0, 1);
        assert_eq!(t.finish(0).delivered_without_ack, 1);
    }

    #[test]
    fn duplicates_are_counted_before_and_after_completion() {
        let t = Tracker::new(1);
        t.on_ack("m3", ack(3, 0, Expected::all(2)), 10);
        assert_eq!(t.on_arrival("m3", 0, 20), Arrival::First);
        assert_eq!(t.on_arrival("m3", 0, 30), Arrival::Duplicate);
        assert_eq!(t.on_arrival("m3", 1, 40), Arrival::Completed);
        assert_eq!(t.on_arrival("m3", 1, 50), Arrival::Duplicate);
        assert_eq!(t.on_arrival("m3", 5, 60), Arrival::Duplicate);
        assert_eq!(t.on_ack("m3", ack(3, 0, Expected::all(2)), 70), None);
        let c = t.counts();
        assert_eq!((c.duplicates, c.duplicate_acks, c.delivered), (3, 1, 1));
        assert_eq!(c.device_deliveries, 2);
        assert_eq!(t.latencies().frame.count(), 2, "duplicates are not frames");
    }

    #[test]
    fn unexpected_slots_are_not_deliveries() {
        let t = Tracker::new(1);
        // Early arrival at slot 2, which the ack then says is not expected.
        t.on_arrival("m4", 2, 5);
        t.on_ack("m4", ack(4, 0, Expected::all(1)), 10);
        assert_eq!(t.on_arrival("m4", 3, 12), Arrival::Unexpected);
        let c = t.counts();
        assert_eq!(c.unexpected, 2);
        assert_eq!(c.delivered, 0);
        assert_eq!(t.on_arrival("m4", 0, 20), Arrival::Completed);
        // The sending device's own slot is unexpected too.
        t.on_ack("m8", ack(8, 0, but(3, 1)), 10);
        assert_eq!(t.on_arrival("m8", 1, 12), Arrival::Unexpected);
    }

    #[test]
    fn a_group_message_counts_every_receiver_once() {
        // 256 members, one device each, sent by member 3: 255 frames.
        let t = Tracker::new(8);
        let expected = but(256, 3);
        // A third of the receivers are faster than the sender's ack.
        for slot in (0..256u32).filter(|s| *s != 3 && s % 3 == 0) {
            assert_eq!(t.on_arrival("g1", slot, 100), Arrival::First);
        }
        t.on_ack("g1", ack(1, 0, expected), 150);
        let mut last = Arrival::First;
        for slot in (0..256u32).filter(|s| *s != 3 && s % 3 != 0) {
            last = t.on_arrival("g1", slot, 200);
        }
        assert_eq!(last, Arrival::Completed);
        assert_eq!(t.on_arrival("g1", 255, 300), Arrival::Duplicate);
        let c = t.counts();
        assert_eq!((c.acked, c.delivered, c.device_deliveries), (1, 1, 255));
        assert_eq!((c.duplicates, c.unexpected), (1, 0));
        let l = t.latencies();
        assert_eq!(l.frame.count(), 255);
        assert_eq!(l.delivery.count(), 1);
        // A second message misses members 200 and 201: lost, and named.
        t.on_ack("g2", ack(2, 0, expected), 10);
        for slot in (0..256u32).filter(|s| ![3, 200, 201].contains(s)) {
            t.on_arrival("g2", slot, 20);
        }
        // The sender's own slot is refused, not counted as a delivery.
        assert_eq!(t.on_arrival("g2", 3, 30), Arrival::Unexpected);
        let acc = t.finish(0);
        assert_eq!((acc.lost, acc.lost_device_deliveries), (1, 2));
        assert_eq!(
            acc.lost_samples,
            vec![Missing {
                k: 2,
                expected_slots: 255,
                reached: 253,
                missing: vec![200, 201],
            }]
        );
    }

    #[test]
    fn losses_are_reported_unless_expired() {
        let t = Tracker::new(8);
        // m5: acked, reached 1 of 3 slots, alive: lost, 2 deliveries short.
        t.on_ack("m5", ack(5, 0, Expected::all(3)), 10);
        t.on_arrival("m5", 1, 20);
        // m6: acked, nothing arrived, but it expired at 1000 ms.
        t.on_ack(
            "m6",
            AckInfo {
                expires_at_ms: 1_000,
                ..ack(6, 0, Expected::all(1))
            },
            10,
        );
        // m7: complete.
        t.on_ack("m7", ack(7, 0, Expected::all(1)), 10);
        t.on_arrival("m7", 0, 20);
        let acc = t.finish(2_000);
        assert_eq!(acc.lost, 1);
        assert_eq!(acc.lost_device_deliveries, 2);
        assert_eq!(acc.expired_undelivered, 1);
        assert_eq!(
            acc.lost_samples,
            vec![Missing {
                k: 5,
                expected_slots: 3,
                reached: 1,
                missing: vec![0, 2],
            }]
        );
        // Before m6's expiry it would have been a loss too.
        assert_eq!(t.finish(500).lost, 2);
    }

    #[test]
    fn intervals_reset_and_sum_to_the_total() {
        let t = Tracker::new(3);
        for i in 0..10u64 {
            let id = format!("a{i}");
            t.on_ack(&id, ack(i, 0, Expected::all(1)), 100);
            t.on_arrival(&id, 0, 200);
        }
        let first = t.take_interval();
        assert_eq!(first.counts.acked, 10);
        assert_eq!(first.ack.count(), 10);
        assert_eq!(first.frame.count(), 10);
        assert_eq!(first.counts.device_deliveries, 10);
        t.on_ack("b", ack(99, 0, Expected::all(1)), 100);
        let second = t.take_interval();
        assert_eq!(second.counts.acked, 1);
        assert_eq!(second.delivery.count(), 0);
        assert_eq!(second.frame.count(), 0);
        assert_eq!(t.counts().acked, 11);
    }
}

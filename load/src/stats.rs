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
//!
//! The tracker is sharded by `msg_id` hash so device tasks on different
//! threads rarely meet on one lock; each shard also keeps its own latency
//! histograms, merged when a report or a per-second point is taken.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::schedule::hash_str;

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

/// One message not yet complete.
#[derive(Debug, Clone, Copy, Default)]
struct Open {
    /// Its number in the schedule, once the ack told us.
    k: Option<u64>,
    /// When it was due, microseconds from the start (valid once acked).
    due_us: u64,
    /// Slots that must receive it (valid once acked).
    expected: u64,
    /// Slots it has reached.
    got: u64,
    /// Latest arrival so far, microseconds from the start.
    last_arrival_us: u64,
    /// Its `expires_at`, Unix ms (valid once acked).
    expires_at_ms: i64,
}

impl Open {
    fn acked(&self) -> bool {
        self.k.is_some()
    }

    fn complete(&self) -> bool {
        self.acked() && self.got & self.expected == self.expected
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
    /// `message` frames that were a first arrival at their slot.
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

/// What one shard holds.
struct Shard {
    /// Open entries by `msg_id` hash.
    open: HashMap<u64, Open, Build>,
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
    /// Ack latency since the last interval.
    ack_interval: Latency,
    /// Delivery latency since the last interval.
    delivery_interval: Latency,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            open: HashMap::default(),
            done: HashSet::default(),
            counts: TrackerCounts::default(),
            interval: TrackerCounts::default(),
            ack: Latency::precise(),
            delivery: Latency::precise(),
            ack_interval: Latency::coarse(),
            delivery_interval: Latency::coarse(),
        }
    }

    fn bump(&mut self, f: impl Fn(&mut TrackerCounts)) {
        f(&mut self.counts);
        f(&mut self.interval);
    }

    /// Close `entry` if it is complete: record its delivery latency.
    fn settle(&mut self, key: u64, entry: Open) -> bool {
        if !entry.complete() {
            return false;
        }
        self.open.remove(&key);
        self.done.insert(key);
        let latency = entry.last_arrival_us.saturating_sub(entry.due_us);
        self.delivery.record_us(latency);
        self.delivery_interval.record_us(latency);
        self.bump(|c| c.delivered += 1);
        true
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
    /// Slots that must receive it ([`crate::schedule::Plan::expected_slots`]).
    pub expected: u64,
    /// Its `expires_at`, Unix ms.
    pub expires_at_ms: i64,
}

/// One message that did not reach every slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The message's number in the schedule.
    pub k: u64,
    /// Slots it should have reached, as a bit mask.
    pub expected: u64,
    /// Slots it did reach.
    pub got: u64,
}

/// The loss accounting at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    /// Acked messages that did not reach every slot, though still alive.
    pub lost: u64,
    /// Slot deliveries those messages are short of.
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
        let mut s = lock(self.shard(key));
        if s.done.contains(&key) {
            s.bump(|c| c.duplicate_acks += 1);
            return None;
        }
        let mut entry = s.open.get(&key).copied().unwrap_or_default();
        if entry.acked() {
            s.bump(|c| c.duplicate_acks += 1);
            return None;
        }
        entry.k = Some(info.k);
        entry.due_us = info.due_us;
        entry.expected = info.expected;
        entry.expires_at_ms = info.expires_at_ms;
        let latency = now_us.saturating_sub(info.due_us);
        s.ack.record_us(latency);
        s.ack_interval.record_us(latency);
        s.bump(|c| c.acked += 1);
        // Early arrivals at slots it was never meant for.
        let stray = (entry.got & !entry.expected).count_ones();
        if stray > 0 {
            s.bump(|c| c.unexpected += u64::from(stray));
            entry.got &= entry.expected;
        }
        if !s.settle(key, entry) {
            s.open.insert(key, entry);
        }
        Some(latency)
    }

    /// File the arrival of `msg_id` at device slot `slot` at `now_us`.
    pub fn on_arrival(&self, msg_id: &str, slot: u32, now_us: u64) -> Arrival {
        let key = hash_str(msg_id);
        let bit = 1u64 << slot.min(63);
        let mut s = lock(self.shard(key));
        if s.done.contains(&key) {
            s.bump(|c| c.duplicates += 1);
            return Arrival::Duplicate;
        }
        let mut entry = s.open.get(&key).copied().unwrap_or_default();
        if entry.got & bit != 0 {
            s.bump(|c| c.duplicates += 1);
            return Arrival::Duplicate;
        }
        if entry.acked() && entry.expected & bit == 0 {
            s.bump(|c| c.unexpected += 1);
            return Arrival::Unexpected;
        }
        entry.got |= bit;
        entry.last_arrival_us = entry.last_arrival_us.max(now_us);
        s.bump(|c| c.device_deliveries += 1);
        if s.settle(key, entry) {
            Arrival::Completed
        } else {
            s.open.insert(key, entry);
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
            total.add(&lock(m).counts);
        }
        total
    }

    /// Ack and delivery latency since the start, merged over the shards.
    pub fn latencies(&self) -> (Latency, Latency) {
        let mut ack = Latency::precise();
        let mut delivery = Latency::precise();
        for m in self.shards.iter() {
            let s = lock(m);
            ack.merge(&s.ack);
            delivery.merge(&s.delivery);
        }
        (ack, delivery)
    }

    /// Counts and latencies since the previous call, merged over the
    /// shards, and a fresh interval begun.
    pub fn take_interval(&self) -> Interval {
        let mut out = Interval {
            counts: TrackerCounts::default(),
            ack: Latency::coarse(),
            delivery: Latency::coarse(),
        };
        for m in self.shards.iter() {
            let mut s = lock(m);
            out.counts.add(&s.interval);
            out.ack.merge(&s.ack_interval);
            out.delivery.merge(&s.delivery_interval);
            s.interval = TrackerCounts::default();
            s.ack_interval.reset();
            s.delivery_interval.reset();
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
                acc.lost += 1;
                acc.lost_device_deliveries += u64::from((entry.expected & !entry.got).count_ones());
                if acc.lost_samples.len() < 20 {
                    acc.lost_samples.push(Missing {
                        k,
                        expected: entry.expected,
                        got: entry.got,
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

    fn ack(k: u64, due_us: u64, expected: u64) -> AckInfo {
        AckInfo {
            k,
            due_us,
            expected,
            expires_at_ms: i64::MAX,
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
    fn ack_then_every_slot_completes_once() {
        let t = Tracker::new(4);
        // Two recipient slots (0, 1) and one of the sender's (3).
        assert_eq!(t.on_ack("m1", ack(7, 1_000, 0b1011), 3_000), Some(2_000));
        assert_eq!(t.on_arrival("m1", 0, 4_000), Arrival::First);
        assert_eq!(t.on_arrival("m1", 3, 5_000), Arrival::First);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.on_arrival("m1", 1, 9_000), Arrival::Completed);
        assert_eq!(t.pending(), 0);
        let c = t.counts();
        assert_eq!((c.acked, c.delivered, c.device_deliveries), (1, 1, 3));
        let (ack_l, delivery) = t.latencies();
        assert_eq!(ack_l.quantile_us(1.0), 2_000);
        // Delivery waits for the LAST slot: 9 ms - 1 ms.
        assert!((delivery.summary().max_ms - 8.0).abs() < 0.01);
        assert_eq!(t.finish(0), Accounting::default());
    }

    #[test]
    fn arrivals_before_the_ack_count() {
        let t = Tracker::new(2);
        assert_eq!(t.on_arrival("m2", 0, 2_000), Arrival::First);
        // Not acked yet: pending counts only acked messages.
        assert_eq!(t.pending(), 0);
        t.on_ack("m2", ack(1, 500, 0b1), 3_000);
        let c = t.counts();
        assert_eq!((c.acked, c.delivered), (1, 1));
        let (_, delivery) = t.latencies();
        assert!((delivery.summary().max_ms - 1.5).abs() < 0.01);
        // An arrival that never gets an ack is reported.
        t.on_arrival("ghost", 0, 1);
        assert_eq!(t.finish(0).delivered_without_ack, 1);
    }

    #[test]
    fn duplicates_are_counted_before_and_after_completion() {
        let t = Tracker::new(1);
        t.on_ack("m3", ack(3, 0, 0b11), 10);
        assert_eq!(t.on_arrival("m3", 0, 20), Arrival::First);
        assert_eq!(t.on_arrival("m3", 0, 30), Arrival::Duplicate);
        assert_eq!(t.on_arrival("m3", 1, 40), Arrival::Completed);
        assert_eq!(t.on_arrival("m3", 1, 50), Arrival::Duplicate);
        assert_eq!(t.on_arrival("m3", 5, 60), Arrival::Duplicate);
        assert_eq!(t.on_ack("m3", ack(3, 0, 0b11), 70), None);
        let c = t.counts();
        assert_eq!((c.duplicates, c.duplicate_acks, c.delivered), (3, 1, 1));
        assert_eq!(c.device_deliveries, 2);
    }

    #[test]
    fn unexpected_slots_are_not_deliveries() {
        let t = Tracker::new(1);
        // Early arrival at slot 2, which the ack then says is not expected.
        t.on_arrival("m4", 2, 5);
        t.on_ack("m4", ack(4, 0, 0b1), 10);
        assert_eq!(t.on_arrival("m4", 3, 12), Arrival::Unexpected);
        let c = t.counts();
        assert_eq!(c.unexpected, 2);
        assert_eq!(c.delivered, 0);
        assert_eq!(t.on_arrival("m4", 0, 20), Arrival::Completed);
    }

    #[test]
    fn losses_are_reported_unless_expired() {
        let t = Tracker::new(8);
        // m5: acked, reached 1 of 3 slots, alive: lost, 2 deliveries short.
        t.on_ack("m5", ack(5, 0, 0b111), 10);
        t.on_arrival("m5", 1, 20);
        // m6: acked, nothing arrived, but it expired at 1000 ms.
        t.on_ack(
            "m6",
            AckInfo {
                expires_at_ms: 1_000,
                ..ack(6, 0, 0b1)
            },
            10,
        );
        // m7: complete.
        t.on_ack("m7", ack(7, 0, 0b1), 10);
        t.on_arrival("m7", 0, 20);
        let acc = t.finish(2_000);
        assert_eq!(acc.lost, 1);
        assert_eq!(acc.lost_device_deliveries, 2);
        assert_eq!(acc.expired_undelivered, 1);
        assert_eq!(
            acc.lost_samples,
            vec![Missing {
                k: 5,
                expected: 0b111,
                got: 0b010
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
            t.on_ack(&id, ack(i, 0, 0b1), 100);
            t.on_arrival(&id, 0, 200);
        }
        let first = t.take_interval();
        assert_eq!(first.counts.acked, 10);
        assert_eq!(first.ack.count(), 10);
        t.on_ack("b", ack(99, 0, 0b1), 100);
        let second = t.take_interval();
        assert_eq!(second.counts.acked, 1);
        assert_eq!(second.delivery.count(), 0);
        assert_eq!(t.counts().acked, 11);
    }
}

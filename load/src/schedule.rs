//! The open-loop clock: when message `k` is due, and what kind it is.
//!
//! The offered rate is a function of time, `rate(t) = base(t) * peak(t)`:
//! `base` rises linearly from 0 to the base rate over the ramp and stays
//! there; `peak` is `peak_factor` inside the peak window and 1 elsewhere.
//! Message `k` (counted from 0) is due at the instant the cumulative offered
//! load `Λ(t) = ∫ rate` reaches `k`, so a constant rate `r` gives `k / r`.
//! Due times never depend on acks: a stalled server cannot slow the offered
//! load, and latency measured from the due time shows the stall
//! (no coordinated omission).
//!
//! The rate is piecewise linear between the breakpoints (0, the end of the
//! ramp, both edges of the peak, the end of the run), so `Λ` is piecewise
//! quadratic and inverts in closed form per segment.
//!
//! Everything else about message `k` (who sends it from which device, to
//! whom, timed or once, text or media, preceded by typing) is a pure
//! function of `k` too ([`Plan`]), so the device that receives an ack can
//! rebuild what the message was without a shared table. So is the split of
//! the users into groups ([`Groups`]) in group mode.

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shape of the offered load over time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateProfile {
    /// Base offered rate, messages per second summed over all senders.
    pub rate: f64,
    /// How long messages are offered, in seconds.
    pub duration: f64,
    /// Seconds over which the rate rises linearly from 0 to `rate`.
    pub ramp: f64,
    /// Multiplier on the base rate inside the peak window (1 = no peak).
    pub peak_factor: f64,
    /// When the peak window opens, seconds from the start.
    pub peak_at: f64,
    /// How long the peak window lasts, in seconds (0 = no peak).
    pub peak_for: f64,
}

impl RateProfile {
    /// A flat profile: `rate` msg/s for `duration` seconds.
    pub fn flat(rate: f64, duration: f64) -> RateProfile {
        RateProfile {
            rate,
            duration,
            ramp: 0.0,
            peak_factor: 1.0,
            peak_at: 0.0,
            peak_for: 0.0,
        }
    }

    /// The offered rate at `t` seconds (right-continuous).
    pub fn rate_at(&self, t: f64) -> f64 {
        if t < 0.0 || t >= self.duration {
            return 0.0;
        }
        let base = if self.ramp > 0.0 && t < self.ramp {
            self.rate * t / self.ramp
        } else {
            self.rate
        };
        let in_peak = self.peak_for > 0.0 && t >= self.peak_at && t < self.peak_at + self.peak_for;
        if in_peak {
            base * self.peak_factor
        } else {
            base
        }
    }

    /// Whether the numbers describe a run that can happen.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            self.rate,
            self.duration,
            self.ramp,
            self.peak_factor,
            self.peak_at,
            self.peak_for,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0);
        if !finite {
            return Err("rates and times must be finite and not negative".into());
        }
        if self.duration <= 0.0 {
            return Err("duration must be above 0".into());
        }
        if self.peak_for > 0.0 && self.peak_factor <= 0.0 {
            return Err("peak factor must be above 0".into());
        }
        Ok(())
    }
}

/// One piece of the rate function: linear from `rate0` at `start` to
/// `rate0 + slope * (end - start)` just before `end`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    /// Start, seconds.
    start: f64,
    /// End (exclusive), seconds.
    end: f64,
    /// Rate at `start`.
    rate0: f64,
    /// Rate change per second inside the segment.
    slope: f64,
    /// `Λ(start)`: messages offered before this segment.
    before: f64,
}

impl Segment {
    /// Messages offered within the segment.
    fn volume(&self) -> f64 {
        let d = self.end - self.start;
        self.rate0 * d + 0.5 * self.slope * d * d
    }

    /// Seconds after `start` at which `x` messages (0 ≤ x ≤ volume) have
    /// been offered: the root of `rate0·d + slope·d²/2 = x`, written
    /// `2x / (rate0 + √(rate0² + 2·slope·x))` so it stays exact when either
    /// `rate0` or `slope` is 0.
    fn offset_of(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let disc = (self.rate0 * self.rate0 + 2.0 * self.slope * x).max(0.0);
        let denom = self.rate0 + disc.sqrt();
        if denom <= 0.0 {
            return self.end - self.start;
        }
        (2.0 * x / denom).min(self.end - self.start)
    }
}

/// Due times of every message of a run, from a [`RateProfile`].
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The profile it was built from.
    profile: RateProfile,
    /// The rate function in order, covering `[0, duration)`.
    segments: Vec<Segment>,
    /// `Λ(duration)`: the offered volume of the whole run.
    volume: f64,
}

impl Schedule {
    /// The schedule of `profile` (which should pass
    /// [`RateProfile::validate`]).
    pub fn new(profile: RateProfile) -> Schedule {
        let end = profile.duration.max(0.0);
        let mut cuts = vec![0.0, end];
        for cut in [
            profile.ramp,
            profile.peak_at,
            profile.peak_at + profile.peak_for,
        ] {
            if cut > 0.0 && cut < end {
                cuts.push(cut);
            }
        }
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        let mut segments = Vec::with_capacity(cuts.len());
        let mut before = 0.0;
        for pair in cuts.windows(2) {
            let (start, stop) = (pair[0], pair[1]);
            if stop <= start {
                continue;
            }
            // The rate is linear inside [start, stop): read it at both ends
            // from inside the segment.
            let rate0 = profile.rate_at(start);
            let mid = start + (stop - start) / 2.0;
            let slope = (profile.rate_at(mid) - rate0) / (mid - start);
            let segment = Segment {
                start,
                end: stop,
                rate0,
                slope,
                before,
            };
            before += segment.volume();
            segments.push(segment);
        }
        Schedule {
            profile,
            segments,
            volume: before,
        }
    }

    /// The profile this schedule follows.
    pub fn profile(&self) -> &RateProfile {
        &self.profile
    }

    /// How many messages the run offers: every `k` with `Λ⁻¹(k) <
    /// duration`.
    pub fn total(&self) -> u64 {
        // Guard against 1e-9 noise turning an exact integer volume into
        // one message more.
        let v = self.volume - 1e-9;
        if v <= 0.0 {
            0
        } else {
            v.ceil() as u64
        }
    }

    /// `Λ(t)`: messages offered in `[0, t)`.
    pub fn offered_by(&self, t: f64) -> f64 {
        let mut total = 0.0;
        for s in &self.segments {
            if t <= s.start {
                break;
            }
            let d = t.min(s.end) - s.start;
            total = s.before + s.rate0 * d + 0.5 * s.slope * d * d;
        }
        total
    }

    /// How many messages are due by `t` seconds (those with due time ≤ t).
    pub fn due_by(&self, t: f64) -> u64 {
        if t < 0.0 {
            return 0;
        }
        let x = self.offered_by(t);
        (x.floor() as u64 + 1).min(self.total())
    }

    /// When message `k` is due, in seconds from the start; `None` past the
    /// end of the run.
    pub fn time_of(&self, k: u64) -> Option<f64> {
        if k >= self.total() {
            return None;
        }
        let x = k as f64;
        // The last segment whose volume starts at or below x.
        let i = self.segments.partition_point(|s| s.before <= x);
        let s = self.segments.get(i.checked_sub(1)?)?;
        Some(s.start + s.offset_of(x - s.before))
    }

    /// [`Schedule::time_of`] as a duration.
    pub fn due(&self, k: u64) -> Option<Duration> {
        self.time_of(k).map(Duration::from_secs_f64)
    }

    /// [`Schedule::time_of`] in whole microseconds.
    pub fn due_us(&self, k: u64) -> Option<u64> {
        self.time_of(k).map(|t| (t * 1e6).round() as u64)
    }
}

// ---------------------------------------------------------------------------
// What message k is
// ---------------------------------------------------------------------------

/// The shares of the traffic mix, each a fraction in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Shares {
    /// Of sends: `once` (the rest are `timed`).
    pub once: f64,
    /// Of sends: carrying an uploaded, encrypted media object.
    pub media: f64,
    /// Of sends: preceded by a `typing` frame from the same device.
    pub typing: f64,
    /// Of `once` arrivals at the recipient's first device: opened with
    /// `view`.
    pub view: f64,
    /// Of arrivals at the recipient's first device: answered with
    /// `delivered`.
    pub delivered: f64,
    /// Of arrivals at the recipient's first device: answered with `read`.
    pub read: f64,
}

impl Shares {
    /// Text only, `timed` only, no side traffic.
    pub const PLAIN: Shares = Shares {
        once: 0.0,
        media: 0.0,
        typing: 0.0,
        view: 0.0,
        delivered: 0.0,
        read: 0.0,
    };
}

/// How users pair into 1:1 conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// User `i` talks to `i ^ 1` (pairs 0-1, 2-3, ...); with an odd user
    /// count the last user talks to user 0.
    Xor,
    /// User `i` sends to `(i + 1) % N`: a ring, every user in two
    /// conversations.
    Ring,
}

impl Pairing {
    /// Whom user `sender` of `users` sends to.
    pub fn peer(self, sender: u32, users: u32) -> u32 {
        match self {
            Pairing::Xor => {
                let peer = sender ^ 1;
                if peer >= users {
                    0
                } else {
                    peer
                }
            }
            Pairing::Ring => (sender + 1) % users,
        }
    }
}

/// Most members of a group (PROTOCOL 6).
pub const MAX_GROUP_SIZE: u32 = 256;

/// How the users of a group run split into groups (`--group-size`):
/// group `g` holds users `g·size .. min((g+1)·size, users)`, so the last
/// group takes the remainder. A user's *index* is its place in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// Users in the run.
    pub users: u32,
    /// Members per group (the last may have fewer).
    pub size: u32,
}

impl Groups {
    /// Whether the split is one the server accepts and every member of
    /// which has someone to receive its messages.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_GROUP_SIZE).contains(&self.size) {
            return Err(format!("group size must be within 2..={MAX_GROUP_SIZE}"));
        }
        if self.users < self.size {
            return Err("users must be at least the group size".into());
        }
        if self.users % self.size == 1 {
            return Err("the last group would have one member (nobody to send to): \
                 choose users so that users % group size is not 1"
                .into());
        }
        Ok(())
    }

    /// How many groups there are.
    pub fn count(&self) -> u32 {
        self.users.div_ceil(self.size.max(1))
    }

    /// The group of `user`.
    pub fn of(&self, user: u32) -> u32 {
        user / self.size.max(1)
    }

    /// The place of `user` in its group (0 for the group's first member).
    pub fn index(&self, user: u32) -> u32 {
        user % self.size.max(1)
    }

    /// The users of `group`.
    pub fn members(&self, group: u32) -> Range<u32> {
        let start = group.saturating_mul(self.size).min(self.users);
        start..start.saturating_add(self.size).min(self.users)
    }

    /// How many members `group` has.
    pub fn len(&self, group: u32) -> u32 {
        let m = self.members(group);
        m.end - m.start
    }
}

/// Where message `k` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// `to`: the 1:1 conversation with this user (by index).
    User(u32),
    /// `conversation_id`: this group's conversation (by group number).
    Group(u32),
}

/// The device slots a message must reach: every slot below `slots` but
/// `skip`, the sending device (it gets the `ack` instead). See
/// [`Plan::slot`] for what a slot is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    /// Slots `0..slots` may receive the message.
    pub slots: u32,
    /// The one slot among them that must not.
    pub skip: Option<u32>,
}

impl Expected {
    /// Every slot below `slots`.
    pub fn all(slots: u32) -> Expected {
        Expected { slots, skip: None }
    }

    /// Whether `slot` must receive the message.
    pub fn contains(&self, slot: u32) -> bool {
        slot < self.slots && Some(slot) != self.skip
    }

    /// How many slots must receive it: the `message` frames it makes.
    pub fn count(&self) -> u32 {
        self.slots - u32::from(self.skip.is_some_and(|s| s < self.slots))
    }
}

/// Everything about message `k` that follows from `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// The sending user's index.
    pub sender: u32,
    /// The sending user's device index.
    pub device: u32,
    /// Where it goes.
    pub to: To,
    /// `view_policy: "once"` (else `"timed"`).
    pub once: bool,
    /// Carries media (else a text body).
    pub media: bool,
    /// Preceded by `typing`.
    pub typing: bool,
}

/// Maps message numbers to senders, recipients and kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Users in the run (at least 2).
    pub users: u32,
    /// Devices per user (1..=32).
    pub devices: u32,
    /// Who talks to whom (pairs; unused in group mode).
    pub pairing: Pairing,
    /// The mix.
    pub shares: Shares,
    /// Group mode: every user sends to its group. `None`: 1:1 pairs.
    pub groups: Option<Groups>,
}

impl Plan {
    /// Message `k`: users take turns (`k % users`), so each sends at
    /// `rate / users`; a user's devices take turns among its own messages.
    pub fn message(&self, k: u64) -> Planned {
        let users = u64::from(self.users.max(1));
        let sender = (k % users) as u32;
        let device = ((k / users) % u64::from(self.devices.max(1))) as u32;
        let to = match self.groups {
            Some(g) => To::Group(g.of(sender)),
            None => To::User(self.pairing.peer(sender, self.users)),
        };
        Planned {
            sender,
            device,
            to,
            once: chance(k, 1, self.shares.once),
            media: chance(k, 2, self.shares.media),
            typing: chance(k, 3, self.shares.typing),
        }
    }

    /// The slot a `message` frame arrives at, on `device` of user `user`
    /// (`own`: the frame is from that user's own other device).
    ///
    /// Pairs: slots `0..devices` are the recipient's devices,
    /// `devices..2·devices` the sender's own. Groups: member `i` of the
    /// group (its [`Groups::index`]) has slots `i·devices..(i+1)·devices`,
    /// the sender included.
    pub fn slot(&self, user: u32, device: u32, own: bool) -> u32 {
        match self.groups {
            Some(g) => g.index(user) * self.devices + device,
            None if own => self.devices + device,
            None => device,
        }
    }

    /// Which slots must receive message `k`'s `message` frame: every
    /// device of every member but the sending device.
    pub fn expected(&self, k: u64) -> Expected {
        let p = self.message(k);
        let d = self.devices;
        match self.groups {
            Some(g) => Expected {
                slots: g.len(g.of(p.sender)) * d,
                skip: Some(g.index(p.sender) * d + p.device),
            },
            None => Expected {
                slots: 2 * d,
                skip: Some(d + p.device),
            },
        }
    }
}

/// SplitMix64: a fast, well-mixed hash of one integer.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic coin for `(key, salt)` that comes up true with
/// probability `share`.
pub fn chance(key: u64, salt: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    if share >= 1.0 {
        return true;
    }
    let h = mix64(key ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    ((h >> 11) as f64) / ((1u64 << 53) as f64) < share
}

/// FNV-1a of a string: the key the tracker files a `msg_id` under.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits are weak; mixing makes shard choice and `chance` fair.
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn flat_rate_is_evenly_spaced() {
        let s = Schedule::new(RateProfile::flat(100.0, 2.0));
        assert_eq!(s.total(), 200);
        assert!(close(s.time_of(0).unwrap(), 0.0));
        assert!(close(s.time_of(1).unwrap(), 0.01));
        assert!(close(s.time_of(150).unwrap(), 1.5));
        assert!(close(s.time_of(199).unwrap(), 1.99));
        assert_eq!(s.time_of(200), None);
        assert_eq!(s.due_us(37), Some(370_000));
        assert_eq!(s.due_by(0.0), 1);
        assert_eq!(s.due_by(0.015), 2);
        assert_eq!(s.due_by(10.0), 200);
    }

    #[test]
    fn due_times_increase_and_never_depend_on_acks() {
        let s = Schedule::new(RateProfile {
            rate: 1000.0,
            duration: 10.0,
            ramp: 2.0,
            peak_factor: 5.0,
            peak_at: 4.0,
            peak_for: 3.0,
        });
        let mut last = -1.0;
        for k in 0..s.total() {
            let t = s.time_of(k).unwrap();
            assert!(t > last, "k={k}: {t} after {last}");
            assert!(t < 10.0);
            // Λ(time_of(k)) == k: the inverse is exact.
            assert!((s.offered_by(t) - k as f64).abs() < 1e-6, "k={k}");
            last = t;
        }
        // Asking twice gives the same answer: a pure function of k.
        assert_eq!(s.time_of(1234), s.time_of(1234));
    }

    #[test]
    fn ramp_rises_linearly() {
        // 0 → 100 msg/s over 10 s, then flat for 10 s.
        let s = Schedule::new(RateProfile {
            rate: 100.0,
            duration: 20.0,
            ramp: 10.0,
            peak_factor: 1.0,
            peak_at: 0.0,
            peak_for: 0.0,
        });
        // Ramp volume: 100 * 10 / 2 = 500, then 1000 more.
        assert_eq!(s.total(), 1500);
        assert!(close(s.offered_by(10.0), 500.0));
        // Λ(t) = 5 t² during the ramp: message 125 at t = 5.
        assert!(close(s.time_of(125).unwrap(), 5.0));
        assert!(close(s.time_of(500).unwrap(), 10.0));
        assert!(close(s.time_of(600).unwrap(), 11.0));
        // Fewer messages in the first second of the ramp than in its last.
        let first = s.due_by(1.0);
        let last = s.due_by(10.0) - s.due_by(9.0);
        assert!(first < 10 && last > 90, "first {first}, last {last}");
        assert_eq!(s.profile().rate_at(5.0), 50.0);
    }

    #[test]
    fn peak_multiplies_the_base_rate() {
        // 100 msg/s with a 5x peak from 2 s to 4 s, 6 s in all.
        let s = Schedule::new(RateProfile {
            rate: 100.0,
            duration: 6.0,
            ramp: 0.0,
            peak_factor: 5.0,
            peak_at: 2.0,
            peak_for: 2.0,
        });
        assert_eq!(s.total(), 100 * 4 + 500 * 2);
        assert_eq!(s.due_by(3.0) - s.due_by(2.0), 500);
        assert_eq!(s.due_by(5.0) - s.due_by(4.0), 100);
        assert!(close(s.time_of(200).unwrap(), 2.0));
        assert!(close(s.time_of(700).unwrap(), 3.0));
        assert!(close(s.time_of(1200).unwrap(), 4.0));
        assert_eq!(s.profile().rate_at(2.5), 500.0);
        assert_eq!(s.profile().rate_at(4.0), 100.0);
    }

    #[test]
    fn peak_during_the_ramp_and_past_the_end() {
        let p = RateProfile {
            rate: 10.0,
            duration: 4.0,
            ramp: 2.0,
            peak_factor: 2.0,
            peak_at: 1.0,
            peak_for: 10.0,
        };
        let s = Schedule::new(p);
        // [0,1): ramp 0→5 = 2.5; [1,2): 2·(5→10) = 15; [2,4): 20·2 = 40.
        assert!(close(s.offered_by(4.0), 57.5));
        assert_eq!(s.total(), 58);
        assert!(s.time_of(57).unwrap() < 4.0);
        assert_eq!(s.time_of(58), None);
    }

    #[test]
    fn empty_and_invalid_profiles() {
        assert_eq!(Schedule::new(RateProfile::flat(0.0, 5.0)).total(), 0);
        assert!(RateProfile::flat(10.0, 0.0).validate().is_err());
        assert!(RateProfile::flat(f64::NAN, 1.0).validate().is_err());
        assert!(RateProfile::flat(10.0, 1.0).validate().is_ok());
    }

    #[test]
    fn plan_spreads_senders_and_pairs_users() {
        let plan = Plan {
            users: 4,
            devices: 2,
            pairing: Pairing::Xor,
            shares: Shares::PLAIN,
            groups: None,
        };
        let m: Vec<_> = (0..8).map(|k| plan.message(k)).collect();
        assert_eq!(
            m.iter().map(|p| p.sender).collect::<Vec<_>>(),
            [0, 1, 2, 3, 0, 1, 2, 3]
        );
        assert_eq!(
            m.iter().map(|p| p.device).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1]
        );
        assert_eq!(
            m.iter().map(|p| p.to).collect::<Vec<_>>(),
            [1, 0, 3, 2, 1, 0, 3, 2].map(To::User)
        );
        // Recipient devices 0,1 and the sender's device 1 (slot 3).
        let e = plan.expected(0);
        assert_eq!(
            (0..5).filter(|&s| e.contains(s)).collect::<Vec<_>>(),
            [0, 1, 3]
        );
        assert_eq!(e.count(), 3);
        // Sent from device 1: the sender's device 0 (slot 2).
        let e = plan.expected(4);
        assert_eq!(
            (0..5).filter(|&s| e.contains(s)).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!((plan.slot(1, 1, false), plan.slot(0, 0, true)), (1, 2));
        assert_eq!(Pairing::Ring.peer(3, 4), 0);
        assert_eq!(Pairing::Xor.peer(4, 5), 0);
    }

    #[test]
    fn shares_come_out_near_their_fraction() {
        let plan = Plan {
            users: 10,
            devices: 1,
            pairing: Pairing::Ring,
            shares: Shares {
                once: 0.25,
                media: 0.1,
                ..Shares::PLAIN
            },
            groups: None,
        };
        let n = 100_000;
        let once = (0..n).filter(|&k| plan.message(k).once).count() as f64 / n as f64;
        let media = (0..n).filter(|&k| plan.message(k).media).count() as f64 / n as f64;
        assert!((once - 0.25).abs() < 0.01, "{once}");
        assert!((media - 0.1).abs() < 0.01, "{media}");
        assert!((0..n).all(|k| !plan.message(k).typing));
        assert_eq!(plan.expected(0).count(), 1);
    }

    #[test]
    fn groups_split_the_users_and_the_last_takes_the_rest() {
        let g = Groups { users: 20, size: 8 };
        assert!(g.validate().is_ok());
        assert_eq!(g.count(), 3);
        assert_eq!(
            (0..3).map(|i| g.members(i)).collect::<Vec<_>>(),
            [0..8, 8..16, 16..20]
        );
        assert_eq!((g.len(2), g.of(17), g.index(17)), (4, 2, 1));
        // Every user in exactly one group, at its index.
        for u in 0..20 {
            let m = g.members(g.of(u));
            assert!(m.contains(&u));
            assert_eq!(u - m.start, g.index(u));
        }
        let one = Groups {
            users: 256,
            size: 256,
        };
        assert!(one.validate().is_ok());
        assert_eq!((one.count(), one.len(0)), (1, 256));
        // Refused: a lone last member, more than the protocol allows, a
        // group of one, fewer users than one group.
        assert!(Groups { users: 17, size: 8 }.validate().is_err());
        assert!(Groups {
            users: 514,
            size: 257
        }
        .validate()
        .is_err());
        assert!(Groups { users: 10, size: 1 }.validate().is_err());
        assert!(Groups {
            users: 10,
            size: 16
        }
        .validate()
        .is_err());
    }

    #[test]
    fn group_messages_reach_every_device_of_every_member_but_the_sender() {
        let plan = Plan {
            users: 20,
            devices: 2,
            pairing: Pairing::Xor,
            shares: Shares::PLAIN,
            groups: Some(Groups { users: 20, size: 8 }),
        };
        // Message 9: user 9 (group 1, index 1) from device 0.
        let p = plan.message(9);
        assert_eq!((p.sender, p.device, p.to), (9, 0, To::Group(1)));
        let e = plan.expected(9);
        assert_eq!((e.slots, e.skip, e.count()), (16, Some(2), 15));
        // Its own other device is a receiving slot; the sending one is not.
        assert_eq!(plan.slot(9, 1, true), 3);
        assert!(e.contains(3) && !e.contains(plan.slot(9, 0, true)));
        // Message 37: user 17 of the 4-member group, device 1: 4·2 − 1.
        let p = plan.message(37);
        assert_eq!((p.sender, p.device, p.to), (17, 1, To::Group(2)));
        assert_eq!(plan.expected(37).count(), 7);
        // 256 members, one device: 255 frames per message.
        let big = Plan {
            users: 256,
            devices: 1,
            groups: Some(Groups {
                users: 256,
                size: 256,
            }),
            ..plan
        };
        assert_eq!(big.expected(1000).count(), 255);
        assert_eq!(big.slot(255, 0, false), 255);
    }
}

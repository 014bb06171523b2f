//! A token bucket: `rate` tokens a second, at most `burst` saved up.

use std::time::Instant;

/// Limits how often something may happen.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self::with_rate(f64::from(rate_per_second.max(1)), burst, Instant::now())
    }

    /// A full bucket at `now` refilling at a fractional rate (such as
    /// 5 a minute: `5.0 / 60.0`); rates below one a day count as one a day.
    pub fn with_rate(rate_per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_second.max(1.0 / 86_400.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Whether the bucket has refilled completely by `now`: then it is no
    /// different from a new one, and may be forgotten.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// When a token was last asked for (or the bucket made).
    pub fn last_used(&self) -> Instant {
        self.last
    }

    /// Takes one token at `now`, or says in how many ms one will be there.
    pub fn take_at(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Takes one token now.
    pub fn take(&mut self) -> Result<(), u64> {
        self.take_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert!(b.take_at(t0).is_ok());
        }
        let wait = b.take_at(t0).unwrap_err();
        assert!(
            (90..=100).contains(&wait),
            "a token every 100 ms, got {wait}"
        );
        assert!(b.take_at(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take_at(t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn fractional_rates_and_fullness() {
        let t0 = Instant::now();
        // 5 a minute: one every 12 s.
        let mut b = TokenBucket::with_rate(5.0 / 60.0, 2, t0);
        assert!(b.is_full_at(t0));
        assert!(b.take_at(t0).is_ok());
        assert!(!b.is_full_at(t0));
        assert!(b.take_at(t0).is_ok());
        let wait = b.take_at(t0).unwrap_err();
        assert!((11_990..=12_000).contains(&wait), "{wait}");
        assert_eq!(b.last_used(), t0);
        assert!(!b.is_full_at(t0 + Duration::from_secs(23)));
        assert!(b.is_full_at(t0 + Duration::from_secs(24)));
    }
}

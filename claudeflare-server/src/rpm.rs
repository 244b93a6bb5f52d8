//! `--rpm`: a client key's requests per minute, as a GCRA limit (the `governor` crate): up to
//! `rpm` requests at once, then one more every `60 / rpm` seconds. There are no windows, so no
//! window boundary lets twice the limit through in a moment (a fixed per-minute counter did:
//! `rpm` requests at 11:59:59 and `rpm` more at 12:00:00).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// One key's limit.
pub struct PerMinute<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for PerMinute<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMinute").finish_non_exhaustive()
    }
}

impl PerMinute {
    /// `rpm` requests a minute (at least 1).
    pub fn new(rpm: u32) -> Self {
        Self::with_clock(rpm, DefaultClock::default())
    }
}

impl<C: Clock + Clone> PerMinute<C> {
    /// `rpm` requests a minute by `clock`.
    pub fn with_clock(rpm: u32, clock: C) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(rpm).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Take one request in, or say how long until one would be.
    pub fn take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_minutes_boundary_lets_no_second_burst_through() {
        let clock = FakeRelativeClock::default();
        let limit = PerMinute::with_clock(10, clock.clone());
        // The last second of a minute: the whole limit at once.
        clock.advance(Duration::from_secs(59));
        for _ in 0..10 {
            assert!(limit.take().is_ok());
        }
        assert!(limit.take().is_err());
        // The first second of the next: a per-minute counter would start again at 0 and take
        // 10 more; one request has come back in that second's worth of time, none more.
        clock.advance(Duration::from_secs(1));
        let admitted = (0..10).filter(|_| limit.take().is_ok()).count();
        assert_eq!(admitted, 0, "a second is a sixth of one request's share");
        let wait = limit.take().unwrap_err();
        assert_eq!(
            wait,
            Duration::from_secs(5),
            "one request every 6 s, 1 s of it passed"
        );
        clock.advance(wait);
        assert!(limit.take().is_ok());
        assert!(limit.take().is_err());
        // A minute of quiet gives the whole limit back.
        clock.advance(Duration::from_secs(60));
        assert_eq!((0..20).filter(|_| limit.take().is_ok()).count(), 10);
    }
}

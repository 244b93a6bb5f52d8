//! Load-balancing strategies: which accounts a request may use, in which order.
//!
//! A [`Strategy`] returns the available accounts (not paused, not rate-limited, not needing
//! re-authentication) in the order to try them: the first serves the request, the rest are the
//! failover order. Write your own by implementing the trait:
//!
//! ```
//! use std::sync::Arc;
//! use chrono::{DateTime, Utc};
//! use claudeflare_tower::{AccountEntry, strategy::Strategy};
//!
//! /// Prefers the account with the highest tier.
//! struct BiggestFirst;
//!
//! impl Strategy for BiggestFirst {
//!     fn name(&self) -> &str { "biggest-first" }
//!     fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
//!         let mut available = claudeflare_tower::strategy::available(accounts, now);
//!         available.sort_by_key(|a| std::cmp::Reverse(a.tier()));
//!         available
//!     }
//! }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

use crate::account::AccountEntry;
use crate::setting::Setting;

/// Orders the available accounts for one request.
pub trait Strategy: Send + Sync + 'static {
    /// The name used in configuration and the API.
    fn name(&self) -> &str;

    /// The available accounts among `accounts` in the order to try them.
    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>>;
}

/// The strategy in use, switchable while requests are in flight (they keep the order they got).
pub type StrategyHandle = Setting<Box<dyn Strategy>>;

/// The names of the built-in strategies, the default first.
pub const STRATEGY_NAMES: [&str; 5] = [
    "session",
    "least-requests",
    "round-robin",
    "weighted",
    "weighted-round-robin",
];

/// Default length of a sticky session: Anthropic's 5-hour window.
pub const DEFAULT_SESSION_DURATION: TimeDelta = TimeDelta::hours(5);

/// A strategy name that is not one of [`STRATEGY_NAMES`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown strategy `{0}`: expected one of session, least-requests, round-robin, weighted, weighted-round-robin"
)]
pub struct UnknownStrategy(pub String);

/// The built-in strategy called `name`.
pub fn by_name(
    name: &str,
    session_duration: TimeDelta,
) -> Result<Box<dyn Strategy>, UnknownStrategy> {
    Ok(match name {
        "session" => Box::new(Session::new(session_duration)),
        "least-requests" => Box::new(LeastRequests),
        "round-robin" => Box::new(RoundRobin::default()),
        "weighted" => Box::new(Weighted),
        "weighted-round-robin" => Box::new(WeightedRoundRobin::default()),
        other => return Err(UnknownStrategy(other.to_owned())),
    })
}

impl fmt::Debug for dyn Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Strategy({})", self.name())
    }
}

/// The accounts that can take a request at `now`, in pool order.
pub fn available(accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
    accounts
        .iter()
        .filter(|a| a.is_available(now))
        .cloned()
        .collect()
}

/// Sticky sessions (the default): one account serves every request for `duration` (5 h), which
/// keeps Anthropic's per-account prompt cache warm. When it is limited or paused, the next
/// available account in pool order gets a new session.
#[derive(Debug, Clone)]
pub struct Session {
    duration: TimeDelta,
}

impl Session {
    /// Sessions of `duration`.
    pub fn new(duration: TimeDelta) -> Self {
        Self { duration }
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new(DEFAULT_SESSION_DURATION)
    }
}

impl Strategy for Session {
    fn name(&self) -> &str {
        "session"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        let mut available = available(accounts, now);
        // Several open sessions happen when a limited account recovers inside its window: stay
        // with the newest, where the user's cache now is.
        let current = available
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.session_open(now, self.duration).map(|start| (start, i)))
            .max()
            .map(|(_, i)| i);
        match current {
            Some(i) => available[..=i].rotate_right(1),
            None => {
                if let Some(first) = available.first() {
                    first.start_session(now);
                }
            }
        }
        available
    }
}

/// Fewest requests first.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastRequests;

impl Strategy for LeastRequests {
    fn name(&self) -> &str {
        "least-requests"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        let mut available = available(accounts, now);
        available.sort_by_cached_key(|a| a.request_count());
        available
    }
}

/// Each request starts at the next account.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        let mut available = available(accounts, now);
        if !available.is_empty() {
            let start = self.cursor.fetch_add(1, Ordering::Relaxed) % available.len();
            available.rotate_left(start);
        }
        available
    }
}

/// Lowest request count divided by tier first, so a Max 20x account takes 20 times the requests
/// of a Pro one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Weighted;

impl Strategy for Weighted {
    fn name(&self) -> &str {
        "weighted"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        let mut available = available(accounts, now);
        // Compare count_a / tier_a with count_b / tier_b without division: multiply across.
        let mut keyed: Vec<(u64, u64, Arc<AccountEntry>)> = available
            .drain(..)
            .map(|a| (a.request_count(), u64::from(a.tier().weight()), a))
            .collect();
        keyed.sort_by(|(ca, ta, _), (cb, tb, _)| (ca * tb).cmp(&(cb * ta)));
        keyed.into_iter().map(|(_, _, a)| a).collect()
    }
}

/// Round robin over tier-many slots per account: in every 26 requests over a Pro, a Max 5x and
/// a Max 20x account, they start 1, 5 and 20 of them.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    cursor: AtomicUsize,
}

impl Strategy for WeightedRoundRobin {
    fn name(&self) -> &str {
        "weighted-round-robin"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        let available = available(accounts, now);
        let weights: Vec<usize> = available
            .iter()
            .map(|a| usize::from(a.tier().weight()))
            .collect();
        let slots: usize = weights.iter().sum();
        if slots == 0 {
            return available;
        }
        let mut slot = self.cursor.fetch_add(1, Ordering::Relaxed) % slots;
        let first = weights
            .iter()
            .position(|&w| {
                if slot < w {
                    true
                } else {
                    slot -= w;
                    false
                }
            })
            .unwrap_or(0);
        let mut ordered = available;
        ordered.rotate_left(first);
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{Account, Tier};

    fn pool(names: &[&str]) -> Vec<Arc<AccountEntry>> {
        names
            .iter()
            .map(|n| Arc::new(AccountEntry::new(Account::api_key(*n, "k"))))
            .collect()
    }

    fn names(list: &[Arc<AccountEntry>]) -> Vec<&str> {
        list.iter().map(|a| a.name()).collect()
    }

    fn bump(account: &AccountEntry, n: u64) {
        account.lock().live.request_count += n;
    }

    #[test]
    fn session_sticks_for_the_window_then_moves_on() {
        let accounts = pool(&["a", "b", "c"]);
        let strategy = Session::new(TimeDelta::hours(5));
        let t0 = Utc::now();
        assert_eq!(names(&strategy.select(&accounts, t0)), ["a", "b", "c"]);
        assert_eq!(accounts[0].live().session_start, Some(t0));

        // Limited: the next available account takes over with a new session.
        accounts[0].mark_rate_limited(t0 + TimeDelta::minutes(30));
        let t1 = t0 + TimeDelta::minutes(1);
        assert_eq!(names(&strategy.select(&accounts, t1)), ["b", "c"]);
        assert_eq!(accounts[1].live().session_start, Some(t1));

        // `a` recovers inside its own window, but the user's cache is on `b` now.
        let t2 = t0 + TimeDelta::minutes(31);
        assert_eq!(names(&strategy.select(&accounts, t2)), ["b", "a", "c"]);

        // `b`'s window ends: a new session starts on the first available account.
        let t3 = t1 + TimeDelta::hours(5);
        assert_eq!(names(&strategy.select(&accounts, t3)), ["a", "b", "c"]);
        assert_eq!(accounts[0].live().session_start, Some(t3));
    }

    #[test]
    fn session_skips_paused_and_reauth_accounts() {
        let accounts = pool(&["a", "b", "c"]);
        let strategy = Session::default();
        let now = Utc::now();
        strategy.select(&accounts, now);
        accounts[0].set_paused(true);
        accounts[1].mark_needs_reauth();
        assert_eq!(names(&strategy.select(&accounts, now)), ["c"]);
        accounts[2].mark_rate_limited(now + TimeDelta::seconds(1));
        assert!(strategy.select(&accounts, now).is_empty());
    }

    #[test]
    fn least_requests_orders_by_count() {
        let accounts = pool(&["a", "b", "c"]);
        bump(&accounts[0], 5);
        bump(&accounts[1], 1);
        bump(&accounts[2], 3);
        assert_eq!(
            names(&LeastRequests.select(&accounts, Utc::now())),
            ["b", "c", "a"]
        );
    }

    #[test]
    fn round_robin_rotates_over_available_accounts() {
        let accounts = pool(&["a", "b", "c"]);
        let rr = RoundRobin::default();
        let now = Utc::now();
        let firsts: Vec<_> = (0..4)
            .map(|_| rr.select(&accounts, now)[0].name().to_owned())
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a"]);
        assert_eq!(
            names(&rr.select(&accounts, now)),
            ["b", "c", "a"],
            "the rest is the failover order"
        );
        accounts[1].set_paused(true);
        assert!(rr.select(&accounts, now).iter().all(|a| a.name() != "b"));
    }

    #[test]
    fn weighted_divides_requests_by_tier() {
        let accounts = pool(&["pro", "max20"]);
        accounts[1].set_tier(Tier::Twenty);
        bump(&accounts[0], 2); // 2 / 1 = 2
        bump(&accounts[1], 30); // 30 / 20 = 1.5
        assert_eq!(
            names(&Weighted.select(&accounts, Utc::now())),
            ["max20", "pro"]
        );
        bump(&accounts[1], 20); // 50 / 20 = 2.5
        assert_eq!(
            names(&Weighted.select(&accounts, Utc::now())),
            ["pro", "max20"]
        );
    }

    #[test]
    fn weighted_round_robin_gives_tier_many_slots() {
        let accounts = pool(&["pro", "max5"]);
        accounts[1].set_tier(Tier::Five);
        let wrr = WeightedRoundRobin::default();
        let now = Utc::now();
        let firsts: Vec<_> = (0..12)
            .map(|_| wrr.select(&accounts, now)[0].name().to_owned())
            .collect();
        assert_eq!(firsts.iter().filter(|n| *n == "pro").count(), 2);
        assert_eq!(firsts.iter().filter(|n| *n == "max5").count(), 10);
        assert_eq!(
            wrr.select(&accounts, now).len(),
            2,
            "every available account is a candidate"
        );
    }

    #[test]
    fn names_resolve_and_unknown_is_an_error() {
        for name in STRATEGY_NAMES {
            assert_eq!(
                by_name(name, DEFAULT_SESSION_DURATION).unwrap().name(),
                name
            );
        }
        let err = by_name("random", DEFAULT_SESSION_DURATION).unwrap_err();
        assert!(err.to_string().contains("least-requests"));
    }
}

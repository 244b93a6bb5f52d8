//! Orders the available accounts for one request.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

use crate::account::AccountEntry;
use crate::setting::Setting;

/// Orders the available accounts for one request.
///
/// Load-balancing strategies: which accounts a request may use, in which order.
///
/// A [`Strategy`] returns the available accounts (not paused, not rate-limited, not needing
/// re-authentication) in the order to try them: the first serves the request, the rest are the
/// failover order. Write your own by implementing the trait:
///
/// ```
/// use std::sync::Arc;
/// use chrono::{DateTime, Utc};
/// use claudeflare_tower::{AccountEntry, Strategy};
///
/// /// Prefers the account with the highest tier.
/// struct BiggestFirst;
///
/// impl Strategy for BiggestFirst {
///     fn name(&self) -> &str { "biggest-first" }
///     fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
///         let mut available = claudeflare_tower::available_accounts(accounts, now);
///         available.sort_by_key(|a| std::cmp::Reverse(a.tier()));
///         available
///     }
/// }
/// ```
pub trait Strategy: Send + Sync + 'static {
    /// The name used in configuration and the API.
    fn name(&self) -> &str;

    /// The available accounts among `accounts` in the order to try them.
    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>>;
}

/// The strategy in use, switchable while requests are in flight (they keep the order they got).
pub type StrategyHandle = Setting<Box<dyn Strategy>>;

/// Default length of a sticky session: Anthropic's 5-hour window.
pub const DEFAULT_SESSION_DURATION: TimeDelta = TimeDelta::hours(5);

impl fmt::Debug for dyn Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Strategy({})", self.name())
    }
}

/// The accounts that can take a request at `now`, in pool order.
pub fn available_accounts(
    accounts: &[Arc<AccountEntry>],
    now: DateTime<Utc>,
) -> Vec<Arc<AccountEntry>> {
    accounts
        .iter()
        .filter(|a| a.is_available(now))
        .cloned()
        .collect()
}

/// Sticky sessions (the default): one account serves every request for `duration` (5 h), which
/// keeps Anthropic's per-account prompt cache warm. When it is limited or paused, the next
/// available account gets a new session.
///
/// Rotation before the 429: once the session's account has used `rotate_at` of its 5-hour or
/// 7-day window (from the unified rate-limit headers or the usage endpoint), the next request
/// starts a new session on the freshest available account instead of waiting for the refusal.
/// It trades one prompt-cache miss now for a refused request (and a failover) a little later.
/// Accounts over the threshold stay at the end of the candidate list, usable for failover. A
/// `rotate_at` of 1 or more turns rotation off.
#[derive(Debug, Clone)]
pub struct Session {
    duration: TimeDelta,
    rotate_at: f64,
}

/// Default utilization at which new sessions move off a subscription: 98% of its window.
pub const DEFAULT_ROTATE_AT: f64 = 0.98;

impl Session {
    /// Sessions of `duration`, rotating at [`DEFAULT_ROTATE_AT`].
    pub fn new(duration: TimeDelta) -> Self {
        Self {
            duration,
            rotate_at: DEFAULT_ROTATE_AT,
        }
    }

    /// Move new sessions off an account once it has used `rotate_at` (0–1) of its window; 1 or
    /// more turns that off.
    pub fn rotate_at(mut self, rotate_at: f64) -> Self {
        self.rotate_at = rotate_at;
        self
    }

    /// Whether `account` is too close to its limit to take a new session at `now`.
    fn hot(&self, account: &AccountEntry, now: DateTime<Utc>) -> bool {
        self.rotate_at < 1.0
            && account
                .utilization(now)
                .is_some_and(|used| used >= self.rotate_at)
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
        let available = available_accounts(accounts, now);
        if available.is_empty() {
            return available;
        }
        let hot: Vec<bool> = available.iter().map(|a| self.hot(a, now)).collect();
        // Several open sessions happen when a limited account recovers inside its window: stay
        // with the newest, where the user's cache now is.
        let current = available
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.session_open(now, self.duration).map(|start| (start, i)))
            .max()
            .map(|(_, i)| i);
        let first = match current {
            Some(i) if !hot[i] => i,
            _ => {
                // A new session, on the freshest account under the threshold; when every
                // account is over it, moving gains nothing: stay, or take the freshest.
                let fresh = |i: &usize| !hot[*i];
                let freshest = |candidates: &mut dyn Iterator<Item = usize>| {
                    candidates.min_by(|&a, &b| {
                        let used = |i: usize| available[i].utilization(now).unwrap_or(0.0);
                        used(a).total_cmp(&used(b))
                    })
                };
                let fresh_one = if self.rotate_at < 1.0 {
                    freshest(&mut (0..available.len()).filter(fresh))
                } else {
                    Some(0)
                };
                match (fresh_one, current) {
                    (Some(i), _) => {
                        if let Some(from) = current {
                            tracing::info!(
                                from = available[from].name(),
                                to = available[i].name(),
                                utilization = available[from].utilization(now).unwrap_or(0.0),
                                "the session's account is close to its limit; new session on a fresher account"
                            );
                        }
                        available[i].start_session(now);
                        i
                    }
                    (None, Some(i)) => i,
                    (None, None) => {
                        let i = freshest(&mut (0..available.len())).unwrap_or(0);
                        available[i].start_session(now);
                        i
                    }
                }
            }
        };
        // The session's account first, then the others in pool order with those over the
        // threshold last: still candidates for failover.
        let mut ordered: Vec<(bool, Arc<AccountEntry>)> = hot.into_iter().zip(available).collect();
        let chosen = ordered.remove(first);
        // A stable sort: pool order within each group.
        ordered.sort_by_key(|(is_hot, _)| *is_hot);
        std::iter::once(chosen)
            .chain(ordered)
            .map(|(_, account)| account)
            .collect()
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
        let mut available = available_accounts(accounts, now);
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
        let mut available = available_accounts(accounts, now);
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
        let mut available = available_accounts(accounts, now);
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
        let available = available_accounts(accounts, now);
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
    fn session_rotates_before_the_limit_to_the_freshest_account() {
        let accounts = pool(&["a", "b", "c"]);
        let strategy = Session::new(TimeDelta::hours(5)).rotate_at(0.98);
        let t0 = Utc::now();
        let reset = Some(t0 + TimeDelta::hours(3));
        assert_eq!(names(&strategy.select(&accounts, t0)), ["a", "b", "c"]);
        accounts[1].set_utilization(Some((0.60, reset)), None);
        accounts[2].set_utilization(Some((0.20, reset)), None);

        // Under the threshold the session stays, however high.
        accounts[0].set_utilization(Some((0.97, reset)), None);
        let t1 = t0 + TimeDelta::minutes(1);
        assert_eq!(names(&strategy.select(&accounts, t1)), ["a", "b", "c"]);

        // At the threshold: a new session on the freshest, the hot account last (failover only).
        accounts[0].set_utilization(None, Some((0.98, Some(t0 + TimeDelta::days(2)))));
        let t2 = t0 + TimeDelta::minutes(2);
        assert_eq!(names(&strategy.select(&accounts, t2)), ["c", "b", "a"]);
        assert_eq!(accounts[2].live().session_start, Some(t2));
        // And it sticks.
        assert_eq!(names(&strategy.select(&accounts, t2)), ["c", "b", "a"]);
    }

    #[test]
    fn session_rotation_off_or_nowhere_to_go_keeps_the_session() {
        let t0 = Utc::now();
        let reset = Some(t0 + TimeDelta::hours(3));
        let accounts = pool(&["a", "b"]);
        let off = Session::new(TimeDelta::hours(5)).rotate_at(1.0);
        off.select(&accounts, t0);
        accounts[0].set_utilization(Some((0.999, reset)), None);
        assert_eq!(
            names(&off.select(&accounts, t0)),
            ["a", "b"],
            "1 turns rotation off"
        );

        let on = Session::new(TimeDelta::hours(5));
        accounts[1].set_utilization(Some((0.99, reset)), None);
        assert_eq!(
            names(&on.select(&accounts, t0)),
            ["a", "b"],
            "every account is hot: moving gains nothing"
        );
        // A window that reset no longer counts.
        let later = t0 + TimeDelta::hours(4);
        accounts[0].start_session(later - TimeDelta::hours(1));
        assert_eq!(names(&on.select(&accounts, later)), ["a", "b"]);
    }

    #[test]
    fn session_skips_paused_and_reauth_accounts() {
        let accounts = pool(&["a", "b", "c"]);
        let strategy = Session::default();
        let now = Utc::now();
        strategy.select(&accounts, now);
        accounts[0].set_paused(true);
        accounts[1].mark_needs_reauth("refresh token rejected");
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
}

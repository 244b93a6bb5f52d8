//! The accounts the balancer can use. Cheap to clone; clones share the same accounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::account::{Account, AccountEntry, LiveState};
use crate::provider::{Classification, Outcome};

/// Receives account state that must survive a restart (rate-limit marks, sessions, counters,
/// re-auth flags). Called on the request path, so it must not block: queue the change and write
/// it elsewhere. The server implements it with its database; [`MemoryStore`] keeps it in memory.
pub trait StateStore: Send + Sync + 'static {
    /// The live state of `account_id` changed to `state`.
    fn save(&self, account_id: &str, state: &LiveState);

    /// `account` was rate-limited until `until` (already part of the next `save`); for metrics
    /// and alerts.
    fn rate_limited(&self, account: &AccountEntry, until: DateTime<Utc>) {
        let _ = (account, until);
    }

    /// `account` left rotation until a person acts (it needs re-authentication, or the upstream
    /// refused it): `state` has the flag and the reason. Unlike counters, this must not wait for
    /// the next batch, and must not be undone by an older state written later: store it at once
    /// and apart from [`save`](Self::save). The default hands it to `save`.
    fn blocked(&self, account: &AccountEntry, state: &LiveState) {
        self.save(account.id(), state);
    }
}

/// What a store shared by several balancers (instances of a server over one database) does to
/// the pool's entries when it reads what the others stored. A single balancer has no use for
/// it: the layers keep the entries up to date.
///
/// Implemented for [`AccountEntry`]; bring it into scope to call these.
pub trait StoreSync {
    /// Take the settings of `account` as stored (route, tier, pause, credentials and the flags
    /// that take it out of rotation), keeping the live state this process counted.
    fn update_from(&self, account: &Account);

    /// [`update_from`](Self::update_from), and take the stored request counters too: for a
    /// process that learns the stored counters were reset (`reset-stats` elsewhere).
    fn reload(&self, account: &Account);

    /// Change the live state under the entry's lock; returns the state after the change. For
    /// folding in what other balancers stored: nothing counted meanwhile by this one is lost.
    fn update_live(&self, change: impl FnOnce(&mut LiveState)) -> LiveState;
}

impl StoreSync for AccountEntry {
    fn update_from(&self, account: &Account) {
        self.adopt_settings(account);
    }

    fn reload(&self, account: &Account) {
        self.adopt_settings(account);
        let mut state = self.lock();
        state.live.request_count = account.live.request_count;
        state.live.session_request_count = account.live.session_request_count;
    }

    fn update_live(&self, change: impl FnOnce(&mut LiveState)) -> LiveState {
        let mut state = self.lock();
        change(&mut state.live);
        state.live.clone()
    }
}

/// A [`StateStore`] that keeps the latest state of each account in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    states: Mutex<HashMap<String, LiveState>>,
}

impl MemoryStore {
    /// The last state saved for `account_id`.
    pub fn get(&self, account_id: &str) -> Option<LiveState> {
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.get(account_id).cloned()
    }
}

impl StateStore for MemoryStore {
    fn save(&self, account_id: &str, state: &LiveState) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.insert(account_id.to_owned(), state.clone());
    }
}

/// The accounts the balancer can use. Cheap to clone; clones share the same accounts.
///
/// Reads take a lock-free snapshot (`arc-swap`); adding or removing accounts swaps in a new
/// list, so requests in flight keep the list they started with.
///
/// Every account and its live state, read on the request path without a database and without
/// holding a lock across an `.await`.
#[derive(Clone)]
pub struct AccountPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    accounts: ArcSwap<Vec<Arc<AccountEntry>>>,
    store: Option<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for AccountPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot().iter()).finish()
    }
}

impl Default for AccountPool {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl AccountPool {
    /// A pool of `accounts`, in this order (the order strategies fall back to).
    pub fn new(accounts: Vec<Account>) -> Self {
        Self::build(accounts, None)
    }

    /// A pool whose live-state changes are handed to `store`.
    pub fn with_store(accounts: Vec<Account>, store: Arc<dyn StateStore>) -> Self {
        Self::build(accounts, Some(store))
    }

    fn build(accounts: Vec<Account>, store: Option<Arc<dyn StateStore>>) -> Self {
        let entries = accounts
            .into_iter()
            .map(|account| Arc::new(AccountEntry::new(account)))
            .collect();
        Self {
            inner: Arc::new(PoolInner {
                accounts: ArcSwap::from_pointee(entries),
                store,
            }),
        }
    }

    /// The accounts as of now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<AccountEntry>>> {
        self.inner.accounts.load_full()
    }

    /// The accounts, for the moment of a call, without touching a reference count.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<Vec<Arc<AccountEntry>>>> {
        self.inner.accounts.load()
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.inner.accounts.load().len()
    }

    /// Whether the pool has no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The account with this id, or else this name.
    pub fn get(&self, id_or_name: &str) -> Option<Arc<AccountEntry>> {
        let accounts = self.inner.accounts.load();
        let by_id = accounts.iter().find(|a| a.id() == id_or_name);
        by_id
            .or_else(|| accounts.iter().find(|a| a.name() == id_or_name))
            .cloned()
    }

    /// Add an account, or update the one with the same id (tier, pause, credentials).
    pub fn upsert(&self, account: Account) -> Arc<AccountEntry> {
        if let Some(existing) = self.get_by_id(&account.id) {
            existing.adopt_settings(&account);
            return existing;
        }
        let entry = Arc::new(AccountEntry::new(account));
        self.inner.accounts.rcu(|accounts| {
            let mut next = Vec::clone(accounts);
            next.push(Arc::clone(&entry));
            next
        });
        entry
    }

    /// Remove the account with this id; returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut removed = false;
        self.inner.accounts.rcu(|accounts| {
            let next: Vec<_> = accounts.iter().filter(|a| a.id() != id).cloned().collect();
            removed = next.len() != accounts.len();
            next
        });
        removed
    }

    fn get_by_id(&self, id: &str) -> Option<Arc<AccountEntry>> {
        self.inner
            .accounts
            .load()
            .iter()
            .find(|a| a.id() == id)
            .cloned()
    }

    /// The earliest time at which a rate-limited account becomes available again.
    pub fn earliest_reset(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.snapshot()
            .iter()
            .filter(|a| !a.paused() && !a.blocked())
            .filter_map(|a| a.limited_until(now))
            .min()
    }

    /// Apply what the provider read in a response of `account` received at `now`: one more
    /// request, the limits it reported, a rate limit, a ban. Every change of an account's state
    /// that an upstream answer causes goes through here (or
    /// [`observe_in_stream`](Self::observe_in_stream)), so the store hears of all of them.
    pub fn observe(&self, account: &AccountEntry, seen: &Classification, now: DateTime<Utc>) {
        self.apply(account, seen, true, now);
    }

    /// Apply an error announced inside a stream whose response [`observe`](Self::observe) has
    /// already counted.
    pub fn observe_in_stream(
        &self,
        account: &AccountEntry,
        seen: &Classification,
        now: DateTime<Utc>,
    ) {
        self.apply(account, seen, false, now);
    }

    fn apply(
        &self,
        account: &AccountEntry,
        seen: &Classification,
        counted: bool,
        now: DateTime<Utc>,
    ) {
        let live = account.update_live(|live| apply_to_live(live, seen, counted, now));
        if let Some(until) = seen.bench_until {
            tracing::warn!(account = account.name(), until = %until, "account rate-limited");
            if let Some(store) = &self.inner.store {
                store.rate_limited(account, until);
            }
        }
        // Saved before a block below, which is written apart and must not be undone by it.
        self.save(account, &live);
        let reason = seen.reason.as_deref().unwrap_or("");
        match seen.outcome {
            Outcome::Forbidden => {
                tracing::error!(
                    account = account.name(),
                    reason,
                    "the upstream refused this account (disabled or banned?); it is out of rotation until you resume or re-authenticate it"
                );
                let reason = if reason.is_empty() {
                    "the upstream answered 403 permission_error"
                } else {
                    reason
                };
                self.forbidden(account, reason);
            }
            Outcome::ScopedRefusal => tracing::warn!(
                account = account.name(),
                reason,
                "refused for this request's model or beta only; trying the next account, this one stays in rotation"
            ),
            Outcome::ExtraUsageRequired => tracing::warn!(
                account = account.name(),
                reason,
                "a billing-policy refusal (extra usage), not a rate limit; the account stays in rotation"
            ),
            _ => {}
        }
    }

    /// `account` needs re-authentication, for `reason`: out of rotation, and stored at once.
    pub fn needs_reauth(&self, account: &AccountEntry, reason: impl Into<String>) {
        let live = account.mark_needs_reauth(reason);
        if let Some(store) = &self.inner.store {
            store.blocked(account, &live);
        }
    }

    /// The upstream refused `account` itself (disabled or banned), saying `reason`: out of
    /// rotation until a person resumes or re-authenticates it, and stored at once.
    pub fn forbidden(&self, account: &AccountEntry, reason: impl Into<String>) {
        let live = account.mark_forbidden(reason);
        if let Some(store) = &self.inner.store {
            store.blocked(account, &live);
        }
    }

    /// Hand the live state of `account` to the store, if there is one.
    pub fn persist(&self, account: &AccountEntry) {
        if self.inner.store.is_some() {
            self.save(account, &account.live());
        }
    }

    /// Hand `live`, a copy of the live state of `account` just taken, to the store.
    pub(crate) fn save(&self, account: &AccountEntry, live: &LiveState) {
        if let Some(store) = &self.inner.store {
            store.save(account.id(), live);
        }
    }
}

/// What one response (`counted`: one more request) or one error inside a stream (already
/// counted) changes in an account's live state.
fn apply_to_live(live: &mut LiveState, seen: &Classification, counted: bool, now: DateTime<Utc>) {
    if counted {
        live.request_count += 1;
        live.total_requests += 1;
        live.last_used = Some(now);
        if live.session_start.is_some() {
            live.session_request_count += 1;
        }
    }
    let limits = &seen.limits;
    if let Some(status) = &limits.status {
        live.rate_limit_status = Some(status.clone());
    }
    if limits.reset.is_some() {
        live.rate_limit_reset = limits.reset;
    }
    if limits.utilization_5h.is_some() {
        live.utilization_5h = limits.utilization_5h;
        live.utilization_5h_reset = limits.reset_5h;
    }
    if limits.utilization_7d.is_some() {
        live.utilization_7d = limits.utilization_7d;
        live.utilization_7d_reset = limits.reset_7d;
    }
    if let Some(until) = seen.bench_until {
        live.rate_limited_until = Some(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Tier;
    use chrono::TimeDelta;

    #[test]
    fn upsert_updates_in_place_and_remove_drops() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k1")]);
        let a = pool.get("a").unwrap();
        a.start_session(Utc::now());
        let mut changed = Account::api_key("a", "k1").with_tier(Tier::Five);
        changed.id = a.id().to_owned();
        let same = pool.upsert(changed);
        assert!(Arc::ptr_eq(&a, &same), "an update keeps the live entry");
        assert_eq!(a.tier(), Tier::Five);
        assert!(a.live().session_start.is_some(), "live state survives");
        pool.upsert(Account::api_key("b", "k2"));
        assert_eq!(pool.len(), 2);
        assert!(pool.get(a.id()).is_some());
        assert!(pool.remove(a.id()));
        assert!(!pool.remove(a.id()));
        assert_eq!(pool.len(), 1);
        assert!(pool.get("a").is_none());
    }

    #[test]
    fn earliest_reset_ignores_paused_accounts() {
        let now = Utc::now();
        let pool = AccountPool::new(vec![Account::api_key("a", "k"), Account::api_key("b", "k")]);
        assert_eq!(pool.earliest_reset(now), None);
        pool.get("a")
            .unwrap()
            .mark_rate_limited(now + TimeDelta::seconds(50));
        pool.get("b")
            .unwrap()
            .mark_rate_limited(now + TimeDelta::seconds(20));
        assert_eq!(pool.earliest_reset(now), Some(now + TimeDelta::seconds(20)));
        pool.get("b").unwrap().set_paused(true);
        assert_eq!(pool.earliest_reset(now), Some(now + TimeDelta::seconds(50)));
    }

    #[test]
    fn memory_store_keeps_the_latest_state() {
        let store = Arc::new(MemoryStore::default());
        let pool = AccountPool::with_store(vec![Account::api_key("a", "k")], store.clone());
        let a = pool.get("a").unwrap();
        a.mark_rate_limited(Utc::now());
        pool.persist(&a);
        assert!(store.get(a.id()).unwrap().rate_limited_until.is_some());
    }
}

//! Keeping the pool and the database in step, and through the database, several instances.
//!
//! # Design
//!
//! The request path never waits on the database: it changes the pool in memory and tells
//! [`DbStore`] which account changed. One task, [`exchange`], then does both directions in turn,
//! every 200 ms:
//!
//! 1. **Out**: for each account this instance changed, it reads the stored row, folds this
//!    instance's changes into it, and writes the result with the row's `live_version` bumped,
//!    only if the version is still the one it read (a compare-and-set: when another instance
//!    wrote meanwhile, nothing is written, and the next tick reads and folds again). Blocks
//!    (needs re-auth, forbidden) do not wait for the tick.
//! 2. **In**: it reads every account row (every tick on PostgreSQL, every second on SQLite, where
//!    no other instance writes) and folds in what changed: settings (pause, tier, credentials,
//!    blocks; `version` bumped by every change of them) are taken whole; live state
//!    (`live_version` bumped by another instance's write) is folded in as below.
//!
//! A change made on one instance is therefore stored within 200 ms and seen by the others within
//! 200 ms more (measured in the three-instance tests: see docs/benchmarks-history.md).
//!
//! **Why a versioned poll, not `LISTEN`/`NOTIFY`.** The accounts table has a handful of rows:
//! reading it five times a second costs PostgreSQL next to nothing, and an instance that was cut
//! off, restarted or slow catches up on its next read with nothing to replay. Notifications would
//! still need that read (a notification sent while a listener reconnects is lost), plus a
//! connection held open per instance, to gain at best the 200 ms of the tick. SQLite, the
//! single-instance default, runs the same code reading once a second, as it did before.
//!
//! **Folding** ([`rebase`]): each instance keeps, per account, the stored state it last saw.
//! What it changed since then is applied on top of the newer stored state, field by field:
//!
//! - counters are added, never overwritten: an instance stores what it counted since it last
//!   looked, so three instances serving the same account add up;
//! - rate-limit marks: the later reset wins (a mark only ends by its time);
//! - sessions: the newest session start wins, with its request count, so every instance follows
//!   the session moved last; two instances starting one at once end on the same, newest one;
//! - the last rate-limit headers and utilization seen: the instance that saw them last;
//! - last use: the latest.
//!
//! The same rule folds the stored state back into the pool (what other instances did is added to
//! what this one did meanwhile), so nothing counted on either side is lost. A restarted
//! instance loads the stored state, so it rejoins with the others' marks and sessions; marks whose
//! time has passed mean nothing, whoever stored them. An instance that dies loses what it had
//! not stored yet: at most the last 200 ms of its counters, and its requests in flight.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use claudeflare_tower::{AccountEntry, AccountPool, LiveState, StateStore, StoreSync};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::entities::account::Model;
use crate::db::{DbError, accounts};
use crate::metrics::{AccountLabel, Metrics};
use crate::secrets::Cipher;

/// How often live-state changes are stored, and (on PostgreSQL) the others' changes read.
const TICK: Duration = Duration::from_millis(200);
/// How often the accounts are read on SQLite, where only the CLI and the API change them.
const SQLITE_READ_EVERY: u32 = 5;

/// What this instance last knew of a stored account: the versions of its settings and counters,
/// and its live state as stored then.
#[derive(Debug, Clone)]
struct Known {
    version: i64,
    epoch: i64,
    live_version: i64,
    live: LiveState,
}

impl Known {
    fn of(row: &Model) -> Self {
        Self {
            version: row.version,
            epoch: row.counters_epoch,
            live_version: row.live_version,
            live: accounts::live(row),
        }
    }
}

/// What this instance knows of every stored account; owned by the [`exchange`] task.
#[derive(Debug, Default)]
pub struct Ledger(HashMap<String, Known>);

/// `live` with its times at the database's precision (microseconds).
fn stored(live: &LiveState) -> LiveState {
    let micros = |time: &mut Option<DateTime<Utc>>| {
        *time = time.map(|t| t.trunc_subsecs(6));
    };
    let mut live = live.clone();
    micros(&mut live.rate_limited_until);
    micros(&mut live.rate_limit_reset);
    micros(&mut live.utilization_5h_reset);
    micros(&mut live.utilization_7d_reset);
    micros(&mut live.session_start);
    micros(&mut live.last_used);
    live
}

/// `base` with what `ours` changed since `reference` applied on top (see the module's notes).
///
/// To store: `base` is the row as it is now, `ours` this instance's state, `reference` the row
/// as this instance last saw it. To fold the row back: `base` is the row, `ours` the pool's
/// state, `reference` what the pool's state was based on.
fn rebase(base: &LiveState, ours: &LiveState, reference: &LiveState) -> LiveState {
    // PostgreSQL keeps microseconds: compared and stored at that precision, a time this instance
    // made and the same time read back from the database are one time.
    let (base, ours, reference) = (stored(base), stored(ours), stored(reference));
    let (base, ours, reference) = (&base, &ours, &reference);
    let mut next = ours.clone();
    let added =
        |base: u64, ours: u64, reference: u64| base.saturating_add(ours.saturating_sub(reference));
    next.request_count = added(
        base.request_count,
        ours.request_count,
        reference.request_count,
    );
    next.total_requests = added(
        base.total_requests,
        ours.total_requests,
        reference.total_requests,
    );
    // `None` sorts before any start: a session beats none.
    match ours.session_start.cmp(&base.session_start) {
        std::cmp::Ordering::Greater => {}
        std::cmp::Ordering::Equal => {
            // Counted in this session since the reference; all of it if the session is newer.
            let since = if reference.session_start == ours.session_start {
                reference.session_request_count
            } else {
                0
            };
            next.session_request_count = added(
                base.session_request_count,
                ours.session_request_count,
                since,
            );
        }
        std::cmp::Ordering::Less => {
            next.session_start = base.session_start;
            next.session_request_count = base.session_request_count;
        }
    }
    next.rate_limited_until = ours.rate_limited_until.max(base.rate_limited_until);
    next.last_used = ours.last_used.max(base.last_used);
    // What was last seen of the upstream's limits: ours if we saw something new, else the base's.
    if ours.rate_limit_status == reference.rate_limit_status {
        next.rate_limit_status.clone_from(&base.rate_limit_status);
    }
    if ours.rate_limit_reset == reference.rate_limit_reset {
        next.rate_limit_reset = base.rate_limit_reset;
    }
    if (ours.utilization_5h, ours.utilization_5h_reset)
        == (reference.utilization_5h, reference.utilization_5h_reset)
    {
        next.utilization_5h = base.utilization_5h;
        next.utilization_5h_reset = base.utilization_5h_reset;
    }
    if (ours.utilization_7d, ours.utilization_7d_reset)
        == (reference.utilization_7d, reference.utilization_7d_reset)
    {
        next.utilization_7d = base.utilization_7d;
        next.utilization_7d_reset = base.utilization_7d_reset;
    }
    next
}

/// Collects which accounts changed, for the [`exchange`] task.
pub struct DbStore {
    /// Accounts whose live state changed since the last write.
    dirty: Mutex<HashSet<String>>,
    /// Blocks (needs re-auth, forbidden) to store at once, in the order they were decided.
    blocks: Mutex<Vec<(String, LiveState)>>,
    /// Woken for blocks, which do not wait for the next tick.
    urgent: Notify,
    /// Since when writes fail, and when that was last logged.
    failing: Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    metrics: Arc<Metrics>,
}

impl DbStore {
    /// A store reporting rate limits to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            dirty: Mutex::default(),
            blocks: Mutex::default(),
            urgent: Notify::new(),
            failing: Mutex::default(),
            metrics,
        }
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn dirty_again(&self, id: String) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
    }

    /// Log a failed write: the first of an outage, then one a minute.
    fn report_failure(&self, error: &DbError) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        let now = std::time::Instant::now();
        let due = match *failing {
            None => true,
            Some((_, logged)) => now - logged >= Duration::from_secs(60),
        };
        if due {
            tracing::error!(%error, "could not store account state; keeping it and trying again");
            let since = failing.map_or(now, |(since, _)| since);
            *failing = Some((since, now));
        }
    }

    fn report_recovery(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((since, _)) = failing.take() {
            tracing::info!(
                seconds = since.elapsed().as_secs(),
                "the database takes writes again; account state is stored"
            );
        }
    }

    fn blocked_again(&self, id: String, state: LiveState) {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(0, (id, state));
    }

    fn take_blocks(&self) -> Vec<(String, LiveState)> {
        std::mem::take(&mut *self.blocks.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl StateStore for DbStore {
    fn save(&self, account_id: &str, _state: &LiveState) {
        // Called for every response: only which account changed is noted here (a string
        // allocated once per account per tick); its state is read from the pool when stored.
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        if !dirty.contains(account_id) {
            dirty.insert(account_id.to_owned());
        }
    }

    fn blocked(&self, account: &AccountEntry, state: &LiveState) {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((account.id().to_owned(), state.clone()));
        // Written at once, not with the next tick.
        self.urgent.notify_one();
    }

    fn rate_limited(&self, account: &AccountEntry, _until: DateTime<Utc>) {
        self.metrics
            .rate_limits
            .get_or_create(&AccountLabel {
                account: account.name().to_owned(),
            })
            .inc();
    }
}

/// The pool and the database, kept in step by [`exchange`].
pub struct Exchange {
    /// The database.
    pub db: DatabaseConnection,
    /// To decrypt reloaded credentials.
    pub cipher: Cipher,
    /// The balancer's accounts.
    pub pool: AccountPool,
    /// What the request path changed.
    pub store: Arc<DbStore>,
    /// What this instance last knew of the stored accounts ([`load_pool`] fills it).
    pub ledger: Ledger,
    /// Accounts left out because of an error.
    pub skipped: Arc<Skipped>,
}

/// Store what this instance changed and take in what others did, every [`TICK`] (blocks at
/// once), until `stop`; then store what is left.
pub async fn exchange(mut exchange: Exchange, stop: CancellationToken) {
    let shared = exchange.db.get_database_backend() == DbBackend::Postgres;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    // After a failed write, the next tries wait longer (up to 5 s) so an outage is not hammered.
    let mut retry_at: Option<(tokio::time::Instant, Duration)> = None;
    // Reads fail every tick while the database is away: said once, and once it is back.
    let mut read_failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = exchange.store.urgent.notified() => {
                exchange.write_blocks().await;
                continue;
            }
            () = stop.cancelled() => break,
        }
        ticks = ticks.wrapping_add(1);
        let due = retry_at.is_none_or(|(at, _)| tokio::time::Instant::now() >= at);
        if due {
            exchange.write_blocks().await;
            retry_at = if exchange.write_changes().await {
                None
            } else {
                let wait = retry_at.map_or(Duration::from_millis(400), |(_, wait)| {
                    (wait * 2).min(Duration::from_secs(5))
                });
                Some((tokio::time::Instant::now() + wait, wait))
            };
        }
        if shared || ticks % SQLITE_READ_EVERY == 0 {
            match exchange.read().await {
                Err(error) if !read_failing => {
                    read_failing = true;
                    tracing::error!(%error, "could not read accounts from the database; trying again");
                }
                Err(_) => {}
                Ok(()) if read_failing => {
                    read_failing = false;
                    tracing::info!("the accounts are read from the database again");
                }
                Ok(()) => {}
            }
        }
    }
    // Bounded: a database that takes no writes must not hold the shutdown for the pool's
    // acquire timeout once per account.
    let last = async {
        exchange.write_blocks().await;
        exchange.write_changes().await
    };
    if !matches!(tokio::time::timeout(STOP_WRITE, last).await, Ok(true)) {
        tracing::warn!(
            "the database takes no writes: the accounts' latest state (counters, rate limits) is not stored"
        );
    }
}

/// How long the last write of account state at a shutdown may take.
const STOP_WRITE: Duration = Duration::from_secs(10);

impl Exchange {
    /// Store the live state of every account changed since the last write; returns whether
    /// everything was stored (what was not stays to be stored).
    async fn write_changes(&mut self) -> bool {
        let mut failed = None;
        for id in self.store.take() {
            if failed.is_some() {
                // The database failed the last write: the others wait for the next try.
                self.store.dirty_again(id);
                continue;
            }
            if let Err(error) = self.write(&id).await {
                self.store.dirty_again(id);
                failed = Some(error);
            }
        }
        match failed {
            Some(error) => {
                self.store.report_failure(&error);
                false
            }
            None => {
                self.store.report_recovery();
                true
            }
        }
    }

    /// Fold this instance's changes to account `id` into its row, and what the row held that
    /// this instance had not seen into the pool.
    async fn write(&mut self, id: &str) -> Result<(), DbError> {
        let (Some(entry), Some(known)) = (self.pool.get(id), self.ledger.0.get(id)) else {
            tracing::debug!(account = %id, "account state not stored: the account is not loaded");
            return Ok(());
        };
        let ours = entry.live();
        let mut reset = false;
        let stored = accounts::share_live(&self.db, id, |row| {
            // `reset-stats` since: the read adopts the reset first, then this is stored.
            reset = row.counters_epoch != known.epoch;
            (!reset).then(|| rebase(&accounts::live(row), &ours, &known.live))
        })
        .await?;
        let (written, live_version) = match stored {
            accounts::Shared::Written(written, live_version) => (written, live_version),
            // Another instance wrote first: folded again on the next tick.
            accounts::Shared::Raced => {
                self.store.dirty_again(id.to_owned());
                return Ok(());
            }
            accounts::Shared::Nothing => {
                if reset {
                    // The read adopts the reset first; then this is stored.
                    self.store.dirty_again(id.to_owned());
                }
                return Ok(());
            }
        };
        // What other instances had stored is now in `written`: the pool takes it, keeping what
        // it counted since `ours`.
        entry.update_live(|live| *live = rebase(&written, live, &ours));
        if let Some(known) = self.ledger.0.get_mut(id) {
            known.live_version = live_version;
            known.live = written;
        }
        tracing::debug!(account = entry.name(), "stored account state");
        Ok(())
    }

    async fn write_blocks(&mut self) {
        for (id, state) in self.store.take_blocks() {
            let seen = self.ledger.0.get(&id).map(|known| known.version);
            match accounts::set_block(&self.db, &id, &state, seen).await {
                Ok(true) => {}
                // Someone changed the account since (a `reauth`, a `resume`): their word wins,
                // and the next read brings it here.
                Ok(false) => {
                    tracing::info!(account = %id, "not storing the block: the account changed meanwhile")
                }
                Err(error) => {
                    tracing::error!(%error, "could not store that an account is out of rotation");
                    // Kept for the next round rather than lost, and that round is asked for.
                    self.store.blocked_again(id, state);
                    self.store.urgent.notify_one();
                }
            }
        }
    }

    /// Bring the pool in line with the database once.
    async fn read(&mut self) -> Result<(), DbError> {
        let rows = accounts::all(&self.db).await?;
        for row in &rows {
            self.adopt(row);
        }
        for entry in self.pool.snapshot().iter() {
            if !rows.iter().any(|row| row.id == entry.id()) {
                self.pool.remove(entry.id());
                tracing::info!(account = entry.name(), "account removed");
            }
        }
        self.ledger
            .0
            .retain(|id, _| rows.iter().any(|row| &row.id == id));
        Ok(())
    }

    /// Take in what changed in one stored account since this instance last saw it.
    fn adopt(&mut self, row: &Model) {
        let known = self.ledger.0.get(&row.id);
        let existing = self.pool.get(&row.id);
        let settings_changed =
            known.is_none_or(|k| (k.version, k.epoch) != (row.version, row.counters_epoch));
        if settings_changed || existing.is_none() {
            let account = match accounts::to_account(row, &self.cipher) {
                Ok(account) => account,
                Err(error) => {
                    self.skipped.report(&row.id, &error);
                    return;
                }
            };
            self.skipped.clear(&row.id);
            let reset = known.is_some_and(|k| k.epoch != row.counters_epoch);
            match &existing {
                // `reset-stats` ran: the stored counters start again, and so do the pool's.
                Some(entry) if reset => entry.reload(&account),
                Some(entry) => entry.update_from(&account),
                None => {
                    let entry = self.pool.upsert(account);
                    tracing::info!(account = entry.name(), mode = %entry.mode(), "account added");
                    self.ledger.0.insert(row.id.clone(), Known::of(row));
                    return;
                }
            }
            if !reset {
                tracing::info!(account = row.name.as_str(), "account settings changed");
            }
        }
        let Some(entry) = existing else { return };
        let known = self
            .ledger
            .0
            .entry(row.id.clone())
            .or_insert_with(|| Known::of(row));
        if known.live_version != row.live_version || known.epoch != row.counters_epoch {
            let stored = accounts::live(row);
            let seen = &known.live;
            entry.update_live(|live| *live = rebase(&stored, live, seen));
        }
        *known = Known::of(row);
    }
}

/// Accounts left out of the pool because of an error, each reported once.
#[derive(Debug, Default)]
pub struct Skipped(Mutex<HashMap<String, String>>);

impl Skipped {
    fn report(&self, id: &str, error: &DbError) {
        let message = error.to_string();
        let mut skipped = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if skipped.get(id) != Some(&message) {
            tracing::error!(error = %message, "this account is out of rotation");
            skipped.insert(id.to_owned(), message);
        }
    }

    fn clear(&self, id: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// Load every stored account into a new pool, noting what was loaded in `ledger`.
pub async fn load_pool(
    db: &DatabaseConnection,
    cipher: &Cipher,
    store: Arc<DbStore>,
    ledger: &mut Ledger,
    skipped: &Skipped,
) -> Result<AccountPool, DbError> {
    let mut list = Vec::new();
    for row in accounts::all(db).await? {
        match accounts::to_account(&row, cipher) {
            Ok(account) => {
                ledger.0.insert(row.id.clone(), Known::of(&row));
                list.push(account);
            }
            Err(error) => skipped.report(&row.id, &error),
        }
    }
    Ok(AccountPool::with_store(list, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::seconds(1_800_000_000 + seconds)
    }

    fn counted(requests: u64, session: Option<(DateTime<Utc>, u64)>) -> LiveState {
        let mut live = LiveState::default();
        live.request_count = requests;
        live.total_requests = requests + 100;
        live.session_start = session.map(|(start, _)| start);
        live.session_request_count = session.map_or(0, |(_, count)| count);
        live
    }

    /// Two instances store in turn what they counted from the same stored state: the row ends
    /// with both counts, and each pool, folded back, with both too.
    #[test]
    fn counts_of_two_instances_add_up() {
        let seen = counted(10, Some((at(0), 4)));
        let a = counted(13, Some((at(0), 7)));
        let b = counted(15, Some((at(0), 9)));
        let after_a = rebase(&seen, &a, &seen);
        let after_b = rebase(&after_a, &b, &seen);
        assert_eq!(after_b.request_count, 10 + 3 + 5);
        assert_eq!(after_b.total_requests, 110 + 3 + 5);
        assert_eq!(after_b.session_request_count, 4 + 3 + 5);
        // Instance a counted 2 more meanwhile; it learns b's 5 and keeps its 2.
        let a_now = counted(15, Some((at(0), 9)));
        let folded = rebase(&after_b, &a_now, &a);
        assert_eq!(folded.request_count, 18 + 2);
        assert_eq!(folded.session_request_count, 12 + 2);
    }

    #[test]
    fn the_later_rate_limit_reset_wins_either_way() {
        let seen = LiveState::default();
        let mut a = seen.clone();
        a.rate_limited_until = Some(at(60));
        let mut b = seen.clone();
        b.rate_limited_until = Some(at(30));
        let stored = rebase(&rebase(&seen, &a, &seen), &b, &seen);
        assert_eq!(stored.rate_limited_until, Some(at(60)));
        let stored = rebase(&rebase(&seen, &b, &seen), &a, &seen);
        assert_eq!(stored.rate_limited_until, Some(at(60)));
        // An instance that never saw the mark takes it in.
        let folded = rebase(&stored, &seen, &seen);
        assert_eq!(folded.rate_limited_until, Some(at(60)));
    }

    #[test]
    fn the_newest_session_wins_with_its_count() {
        let seen = counted(0, Some((at(0), 50)));
        // a moved the session on (a new one, 3 requests in); b still counts in the old one.
        let a = counted(3, Some((at(100), 3)));
        let b = counted(4, Some((at(0), 54)));
        let stored = rebase(&rebase(&seen, &a, &seen), &b, &seen);
        assert_eq!(stored.session_start, Some(at(100)));
        assert_eq!(stored.session_request_count, 3);
        assert_eq!(
            stored.request_count, 7,
            "requests count whatever the session"
        );
        // b follows the new session.
        let folded = rebase(&stored, &b, &seen);
        assert_eq!(folded.session_start, Some(at(100)));
        assert_eq!(folded.session_request_count, 3);
        // Stored the other way round, the same.
        let stored = rebase(&rebase(&seen, &b, &seen), &a, &seen);
        assert_eq!(stored.session_start, Some(at(100)));
        assert_eq!(stored.session_request_count, 3);
    }

    #[test]
    fn two_sessions_started_at_once_end_as_the_newer() {
        let seen = LiveState::default();
        let a = counted(1, Some((at(10), 1)));
        let b = counted(1, Some((at(11), 1)));
        for stored in [
            rebase(&rebase(&seen, &a, &seen), &b, &seen),
            rebase(&rebase(&seen, &b, &seen), &a, &seen),
        ] {
            assert_eq!(stored.session_start, Some(at(11)));
            assert_eq!(rebase(&stored, &a, &a).session_start, Some(at(11)));
        }
    }

    #[test]
    fn what_was_seen_last_of_the_limits_wins_and_stale_copies_do_not_undo_it() {
        let mut seen = LiveState::default();
        seen.utilization_5h = Some(0.2);
        seen.rate_limit_status = Some("allowed".into());
        // b saw new headers; a saw nothing new.
        let a = seen.clone();
        let mut b = seen.clone();
        b.utilization_5h = Some(0.9);
        b.rate_limit_status = Some("allowed_warning".into());
        let stored = rebase(&rebase(&seen, &b, &seen), &a, &seen);
        assert_eq!(stored.utilization_5h, Some(0.9));
        assert_eq!(stored.rate_limit_status.as_deref(), Some("allowed_warning"));
        // a takes them in, and keeps them on its next write.
        let a_folded = rebase(&stored, &a, &seen);
        assert_eq!(a_folded.utilization_5h, Some(0.9));
        assert_eq!(
            rebase(&stored, &a_folded, &stored).utilization_5h,
            Some(0.9)
        );
    }
}

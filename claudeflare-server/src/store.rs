//! Keeping the pool and the database in step.
//!
//! - Live state changes (rate-limit marks, sessions, counters) reach the database through
//!   [`DbStore`], which the request path only hands them to; a task writes them a few times a
//!   second.
//! - Changes made by the CLI or the API (new, removed, paused, re-tiered accounts, counter resets)
//!   reach the pool through [`sync`], which reads the accounts every second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use claudeflare_tower::{AccountEntry, AccountPool, LiveState, StateStore};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{DbError, accounts};
use crate::metrics::{AccountLabel, Metrics};
use crate::secrets::Cipher;

/// The version and counter epoch of each account as this process last saw them.
#[derive(Debug, Default)]
pub struct Versions(Mutex<HashMap<String, (i64, i64)>>);

impl Versions {
    fn get(&self, id: &str) -> Option<(i64, i64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    fn set(&self, id: &str, versions: (i64, i64)) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), versions);
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keep(id));
    }
}

/// Collects live-state changes for the writer task.
pub struct DbStore {
    dirty: Mutex<HashMap<String, LiveState>>,
    /// Blocks (needs re-auth, forbidden) to store at once, in the order they were decided.
    blocks: Mutex<Vec<(String, LiveState)>>,
    wake: Notify,
    /// Woken for blocks, which do not wait for the next batch.
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
            wake: Notify::new(),
            urgent: Notify::new(),
            failing: Mutex::default(),
            metrics,
        }
    }

    fn take(&self) -> HashMap<String, LiveState> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn dirty_again(&self, id: String, state: LiveState) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(state);
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
    fn save(&self, account_id: &str, state: &LiveState) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        // Called for every response: overwrite a state still waiting to be written rather than
        // allocating a new key each time.
        match dirty.get_mut(account_id) {
            // The writer was woken when this entry went in and has not taken it yet.
            Some(waiting) => waiting.clone_from(state),
            None => {
                dirty.insert(account_id.to_owned(), state.clone());
                drop(dirty);
                self.wake.notify_one();
            }
        }
    }

    fn blocked(&self, account: &AccountEntry, state: &LiveState) {
        self.blocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((account.id().to_owned(), state.clone()));
        // Written at once, not with the next batch of counters.
        self.wake.notify_one();
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

/// Write live-state changes, at most every 200 ms (blocks at once), until `stop`; then write
/// what is left, including changes that arrived while the last batch was being written.
pub async fn write_live_states(
    db: DatabaseConnection,
    store: Arc<DbStore>,
    versions: Arc<Versions>,
    stop: CancellationToken,
) {
    let mut retry_wait = Duration::from_millis(200);
    loop {
        let stopping = tokio::select! {
            () = store.wake.notified() => false,
            () = stop.cancelled() => true,
        };
        let written = write_dirty(&db, &store, &versions).await;
        // Counters wait 200 ms to be written together (longer, growing, while the database
        // refuses writes); blocks do not wait.
        let wait = if written {
            retry_wait = Duration::from_millis(200);
            Duration::from_millis(200)
        } else {
            // What failed is kept: try again after the wait even if nothing else changes.
            store.wake.notify_one();
            retry_wait = (retry_wait * 2).min(Duration::from_secs(5));
            retry_wait
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = stopping || stop.is_cancelled();
        while !stopping {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = store.urgent.notified() => write_blocks(&db, &store, &versions).await,
                () = stop.cancelled() => stopping = true,
            }
        }
        if stopping {
            write_dirty(&db, &store, &versions).await;
            return;
        }
    }
}

/// Write what changed; returns whether everything was written (what was not is kept).
async fn write_dirty(db: &DatabaseConnection, store: &DbStore, versions: &Versions) -> bool {
    write_blocks(db, store, versions).await;
    let mut failed = None;
    for (id, state) in store.take() {
        let Some((_, epoch)) = versions.get(&id) else {
            tracing::debug!(account = %id, "account state not stored: the account is not loaded");
            continue;
        };
        match accounts::save_live(db, &id, epoch, &state).await {
            Ok(written) => tracing::debug!(account = %id, written, "stored account state"),
            Err(error) => {
                // Kept for the next try, unless a newer state came meanwhile.
                store.dirty_again(id, state);
                failed = Some(error);
            }
        }
    }
    match failed {
        Some(error) => {
            store.report_failure(&error);
            false
        }
        None => {
            store.report_recovery();
            true
        }
    }
}

async fn write_blocks(db: &DatabaseConnection, store: &DbStore, versions: &Versions) {
    for (id, state) in store.take_blocks() {
        let seen = versions.get(&id).map(|(version, _)| version);
        match accounts::set_block(db, &id, &state, seen).await {
            Ok(true) => {}
            // Someone changed the account since (a `reauth`, a `resume`): their word wins, and
            // the next sync brings it here.
            Ok(false) => {
                tracing::info!(account = %id, "not storing the block: the account changed meanwhile")
            }
            Err(error) => {
                tracing::error!(%error, "could not store that an account is out of rotation");
                // Kept for the next round rather than lost, and that round is asked for.
                store.blocked_again(id, state);
                store.wake.notify_one();
            }
        }
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

/// Load every stored account into a new pool.
pub async fn load_pool(
    db: &DatabaseConnection,
    cipher: &Cipher,
    store: Arc<DbStore>,
    versions: &Versions,
    skipped: &Skipped,
) -> Result<AccountPool, DbError> {
    let mut list = Vec::new();
    for model in accounts::all(db).await? {
        match accounts::to_account(&model, cipher) {
            Ok(account) => {
                versions.set(&model.id, accounts::versions(&model));
                list.push(account);
            }
            Err(error) => skipped.report(&model.id, &error),
        }
    }
    Ok(AccountPool::with_store(list, store))
}

/// Bring the pool in line with the database once.
pub async fn sync_once(
    db: &DatabaseConnection,
    cipher: &Cipher,
    pool: &AccountPool,
    versions: &Versions,
    skipped: &Skipped,
) -> Result<(), DbError> {
    let models = accounts::all(db).await?;
    for model in &models {
        let seen = accounts::versions(model);
        let known = versions.get(&model.id);
        if known == Some(seen) && pool.get(&model.id).is_some() {
            continue;
        }
        let account = match accounts::to_account(model, cipher) {
            Ok(account) => account,
            Err(error) => {
                skipped.report(&model.id, &error);
                continue;
            }
        };
        skipped.clear(&model.id);
        let existed = pool.get(&model.id);
        let reset = known.is_some_and(|(_, epoch)| epoch != seen.1);
        let entry = match existed.clone() {
            // `reset-stats` ran elsewhere: take the stored counters, which started again.
            Some(entry) if reset => {
                entry.reload(&account);
                entry
            }
            _ => pool.upsert(account),
        };
        let existed = existed.is_some();
        versions.set(&model.id, seen);
        if existed {
            tracing::info!(account = entry.name(), "account settings changed");
        } else {
            tracing::info!(account = entry.name(), mode = %entry.mode(), "account added");
        }
        pool.persist(&entry);
    }
    for entry in pool.snapshot().iter() {
        if !models.iter().any(|m| m.id == entry.id()) {
            pool.remove(entry.id());
            tracing::info!(account = entry.name(), "account removed");
        }
    }
    versions.retain(|id| models.iter().any(|m| m.id == id));
    Ok(())
}

/// Keep syncing every second until `stop`.
pub async fn sync(
    db: DatabaseConnection,
    cipher: Cipher,
    pool: AccountPool,
    versions: Arc<Versions>,
    skipped: Arc<Skipped>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(error) = sync_once(&db, &cipher, &pool, &versions, &skipped).await {
            tracing::error!(%error, "could not read accounts from the database");
        }
    }
}

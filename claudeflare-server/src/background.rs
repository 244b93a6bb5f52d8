//! Background work on subscription accounts: refreshing tokens ahead of expiry, and fetching
//! their usage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::TimeDelta;
use claudeflare_tower::auth::{AuthError, TokenRefresher, refresh_if_needed};
use claudeflare_tower::{AccountPool, Mode, Setting};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use crate::config::Config;
use crate::db::accounts;
use crate::oauth::{self, Usage};

/// Tokens expiring within this are refreshed by the background task, so a request almost never
/// waits for a refresh.
pub const REFRESH_AHEAD: TimeDelta = TimeDelta::minutes(10);

/// The last usage fetched, by account id.
#[derive(Debug, Default)]
pub struct UsageMap(Mutex<HashMap<String, Usage>>);

impl UsageMap {
    /// The usage of `id`, if known.
    pub fn get(&self, id: &str) -> Option<Usage> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    fn set(&self, id: &str, usage: Usage) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), usage);
    }

    /// Fill from the stored usage of each account.
    pub fn load(&self, models: &[crate::db::entities::account::Model]) {
        for model in models {
            if let Some(usage) = model
                .usage
                .as_deref()
                .and_then(|u| serde_json::from_str(u).ok())
            {
                self.set(&model.id, usage);
            }
        }
    }
}

async fn pause(period: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(period) => false,
        _ = stop.changed() => true,
    }
}

/// Every 30 s, refresh subscription tokens that expire within 10 minutes. A temporary failure is
/// tried again at the next round; a definitive one marks the account (in `Auth`).
pub async fn refresh_ahead(
    pool: AccountPool,
    refresher: Arc<dyn TokenRefresher>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        for account in pool.snapshot().iter() {
            if account.mode() != Mode::Max || account.needs_reauth() {
                continue;
            }
            match refresh_if_needed(account, &refresher, &pool, REFRESH_AHEAD).await {
                Ok(()) | Err(AuthError::NeedsReauth { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, "refreshing ahead of expiry failed; trying again in 30 s")
                }
            }
        }
        if pause(Duration::from_secs(30), &mut stop).await {
            return;
        }
    }
}

/// Fetch every subscription's usage each `usage_poll_interval_seconds` (0: off).
pub async fn poll_usage(
    db: DatabaseConnection,
    pool: AccountPool,
    config: Setting<Config>,
    usage: Arc<UsageMap>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let config = config.get();
        let interval = config.usage_poll_interval_seconds;
        if interval > 0 {
            for account in pool.snapshot().iter() {
                if account.mode() != Mode::Max || account.needs_reauth() {
                    continue;
                }
                let Some(authorization) = account.credential_header() else {
                    continue;
                };
                match oauth::fetch_usage(&config, &authorization).await {
                    Ok(fetched) => {
                        if let Ok(json) = serde_json::to_string(&fetched) {
                            if let Err(error) = accounts::save_usage(&db, account.id(), &json).await
                            {
                                tracing::warn!(%error, "could not store usage");
                            }
                        }
                        usage.set(account.id(), fetched);
                    }
                    Err(error) => {
                        tracing::warn!(account = account.name(), %error, "could not fetch subscription usage")
                    }
                }
            }
        }
        let wait = if interval == 0 { 5 } else { interval };
        if pause(Duration::from_secs(wait), &mut stop).await {
            return;
        }
    }
}

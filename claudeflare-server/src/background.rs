//! Background work on subscription accounts: refreshing tokens ahead of expiry, and fetching
//! their usage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use chrono::TimeDelta;
use claudeflare_tower::{AccountPool, Mode, Setting};
use claudeflare_tower::{AuthError, TokenRefresher};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::accounts;
use crate::oauth::{self, OAuthError};
use crate::usage::Usage;

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

async fn pause(period: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(period) => false,
        () = stop.cancelled() => true,
    }
}

/// Every 30 s, refresh subscription tokens that expire within 10 minutes. A temporary failure is
/// tried again at the next round; a definitive one marks the account (in `Auth`).
pub async fn refresh_ahead(
    pool: AccountPool,
    refresher: Arc<dyn TokenRefresher>,
    stop: CancellationToken,
) {
    loop {
        for account in pool.snapshot().iter() {
            if account.mode() != Mode::Max || account.blocked() {
                continue;
            }
            match pool.refresh_token(account, &refresher, REFRESH_AHEAD).await {
                Ok(()) | Err(AuthError::NeedsReauth { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, "refreshing ahead of expiry failed; trying again in 30 s")
                }
            }
        }
        if pause(Duration::from_secs(30), &stop).await {
            return;
        }
    }
}

/// The longest a throttled usage poll waits before trying again.
const MAX_USAGE_BACKOFF: Duration = Duration::from_secs(3600);

/// When each account's usage is fetched next, and how long the last 429 made it wait.
#[derive(Default)]
struct UsageSchedule(HashMap<String, (Instant, Option<Duration>)>);

impl UsageSchedule {
    fn due(&self, id: &str, now: Instant) -> bool {
        self.0.get(id).is_none_or(|(next, _)| *next <= now)
    }

    /// After a good answer (or a failure other than throttling): the regular interval.
    fn fetched(&mut self, id: &str, now: Instant, interval: Duration) {
        self.0.insert(id.to_owned(), (now + interval, None));
    }

    /// After a 429: twice the last wait (at least the interval, at least `retry-after`), at most
    /// an hour. Returns the wait.
    fn throttled(
        &mut self,
        id: &str,
        now: Instant,
        interval: Duration,
        retry_after: Option<Duration>,
    ) -> Duration {
        let last = self.0.get(id).and_then(|(_, backoff)| *backoff);
        let wait = last
            .map_or(interval, |last| last * 2)
            .max(interval)
            .max(retry_after.unwrap_or_default())
            .min(MAX_USAGE_BACKOFF);
        self.0.insert(id.to_owned(), (now + wait, Some(wait)));
        wait
    }

    /// When the next account is due, if any is known.
    fn next(&self) -> Option<Instant> {
        self.0.values().map(|(next, _)| *next).min()
    }
}

/// Fetch every subscription's usage each `usage_poll_interval_seconds` (0: off), gently: a 429
/// from the usage endpoint doubles that account's wait (it never marks the account). What is
/// fetched is stored, shown, and feeds the account's utilization (so rotation before the limit
/// works without traffic too).
pub async fn poll_usage(
    db: DatabaseConnection,
    pool: AccountPool,
    config: Setting<Config>,
    usage: Arc<UsageMap>,
    stop: CancellationToken,
) {
    let mut schedule = UsageSchedule::default();
    loop {
        let config = config.get();
        let interval = Duration::from_secs(config.usage_poll_interval_seconds);
        if !interval.is_zero() {
            for account in pool.snapshot().iter() {
                if account.mode() != Mode::Max || account.blocked() {
                    continue;
                }
                if !schedule.due(account.id(), Instant::now()) {
                    continue;
                }
                let Some(authorization) = claudeflare_tower::Anthropic::credential(account) else {
                    continue;
                };
                let proxy = account.route().proxy.clone();
                match oauth::fetch_usage(&config, &authorization, proxy.as_ref()).await {
                    Ok(fetched) => {
                        schedule.fetched(account.id(), Instant::now(), interval);
                        if let Ok(json) = serde_json::to_string(&fetched) {
                            if let Err(error) = accounts::save_usage(&db, account.id(), &json).await
                            {
                                tracing::warn!(%error, "could not store usage");
                            }
                        }
                        let [five_hour, seven_day] = fetched.fractions();
                        account.set_utilization(five_hour, seven_day);
                        pool.persist(account);
                        usage.set(account.id(), fetched);
                    }
                    Err(OAuthError::Throttled { retry_after }) => {
                        let wait =
                            schedule.throttled(account.id(), Instant::now(), interval, retry_after);
                        tracing::warn!(
                            account = account.name(),
                            wait_seconds = wait.as_secs(),
                            "the usage endpoint asks to slow down; polling this account less often (the account itself is fine)"
                        );
                    }
                    Err(error) => {
                        schedule.fetched(account.id(), Instant::now(), interval);
                        tracing::warn!(account = account.name(), %error, "could not fetch subscription usage");
                    }
                }
            }
        }
        // Wake for the next due account, and at least every 5 s to notice new accounts and a
        // changed interval.
        let until_next = schedule
            .next()
            .map_or(Duration::from_secs(5), |next| {
                next.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        if pause(until_next, &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_polls_back_off_to_an_hour_and_recover() {
        let mut schedule = UsageSchedule::default();
        let now = Instant::now();
        let interval = Duration::from_secs(300);
        assert!(schedule.due("a", now));
        let waits: Vec<u64> = (0..6)
            .map(|_| schedule.throttled("a", now, interval, None).as_secs())
            .collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 3600, 3600]);
        assert!(!schedule.due("a", now + Duration::from_secs(3599)));
        schedule.fetched("a", now, interval);
        assert_eq!(
            schedule.throttled("a", now, interval, None).as_secs(),
            300,
            "reset by a good answer"
        );
        assert_eq!(
            schedule
                .throttled("b", now, interval, Some(Duration::from_secs(900)))
                .as_secs(),
            900,
            "retry-after is honoured"
        );
    }
}

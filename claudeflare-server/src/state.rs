//! What the API, the dashboard and the metrics share: one `AppState`, in a module of its own so
//! that every part of the server can use it without importing another part.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use claudeflare_tower::StrategyHandle;
use claudeflare_tower::{AccountPool, Setting};
use sea_orm::DatabaseConnection;

use crate::config::Config;
use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: DatabaseConnection,
    /// The accounts in use.
    pub pool: AccountPool,
    /// The strategy in use.
    pub strategy: StrategyHandle,
    /// The configuration in use.
    pub config: Setting<Config>,
    /// Where API changes are written back.
    pub config_path: Arc<PathBuf>,
    /// Command-line flags and API choices, which hold over the file and the environment.
    pub overrides: Setting<crate::config::Overrides>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Request records not stored.
    pub dropped: Arc<AtomicU64>,
    /// Subscription usage by account id.
    pub usage: Arc<crate::background::UsageMap>,
    /// Problems `/health` reports.
    pub health: Arc<crate::health::Health>,
    /// Client keys and dashboard sessions.
    pub access: crate::access::Access,
    /// Tries of the sign-in page per address (a user code is short: guessing must be slow).
    pub device_tries: Arc<crate::signin::DeviceTries>,
}

//! What the benchmarks in `benches/` drive: the server's parts behind a small surface, so the
//! rest of the crate stays its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use claudeflare_tower::{Account, AccountPool, RequestRecord, Session, Setting, StrategyHandle};

use crate::config::{Config, Overrides};
use crate::pricing::Cost;
use crate::state::AppState;
use crate::{access, db, metrics};

/// A server's state over a fresh SQLite database, for rendering its dashboard.
pub struct Dashboard {
    state: AppState,
}

impl Dashboard {
    /// A database in `dir` holding `records` (each priced at one cent), and a pool of API-key
    /// accounts named `accounts`.
    pub async fn seeded(
        dir: &Path,
        accounts: &[&str],
        records: impl IntoIterator<Item = RequestRecord>,
    ) -> Result<Self, db::DbError> {
        let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
        let db = db::open(&url).await?;
        let records: Vec<RequestRecord> = records.into_iter().collect();
        for chunk in records.chunks(5000) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|record| (record.clone(), Cost::priced(0.01)))
                .collect();
            db::requests::insert_batch(&db, &batch, false).await?;
        }
        let pool = AccountPool::new(accounts.iter().map(|n| Account::api_key(*n, "k")).collect());
        let config = Setting::new(Config::default());
        let state = AppState {
            db,
            pool,
            strategy: StrategyHandle::new(Box::new(Session::default())),
            access: access::Access::new(config.clone()),
            device_tries: Default::default(),
            config,
            config_path: Arc::new(dir.join("claudeflare.json")),
            overrides: Setting::new(Overrides::default()),
            metrics: Arc::new(metrics::Metrics::new()),
            dropped: Arc::new(AtomicU64::new(0)),
            usage: Arc::default(),
            health: Arc::default(),
        };
        Ok(Self { state })
    }

    /// The dashboard's page, every query and the markup, as a user opening it gets it; its
    /// length in bytes.
    pub async fn render(&self) -> Result<usize, db::DbError> {
        let data = crate::dashboard::gather(&self.state, Default::default()).await?;
        Ok(crate::dashboard::render(&data).len())
    }
}

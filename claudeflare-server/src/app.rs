//! The axum application: the proxy on `/v1/*`, the JSON API, metrics and the dashboard.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::routing::{get, post};
use claudeflare_tower::strategy::StrategyHandle;
use claudeflare_tower::{AccountPool, BalancerService, Setting};
use sea_orm::DatabaseConnection;

use crate::api;
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
}

/// The router.
pub fn router(state: AppState, balancer: BalancerService) -> Router {
    Router::new()
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/api/stats", get(api::stats))
        .route("/api/accounts", get(api::accounts))
        .route("/api/accounts/{id}/tier", post(api::set_tier))
        .route("/api/accounts/{id}/pause", post(api::pause))
        .route("/api/accounts/{id}/resume", post(api::resume))
        .route("/api/requests", get(api::requests))
        .route("/api/config", get(api::config))
        .route(
            "/api/config/strategy",
            get(api::strategy).post(api::set_strategy),
        )
        .route("/api/strategies", get(api::strategies))
        .route("/", get(crate::dashboard::page))
        .route("/dashboard", get(crate::dashboard::page))
        .route_service("/v1/{*path}", balancer)
        .fallback(api::not_found)
        .with_state(state)
}

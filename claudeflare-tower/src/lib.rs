//! # claudeflare-tower
//!
//! Load balancing over several Claude accounts (Pro/Max subscriptions and console API keys) as a
//! stack of [tower] layers: keep a user on one account for the 5-hour window, fail over the
//! moment an account is rate-limited, refresh OAuth tokens, and record every request with its
//! tokens.
//!
//! ```no_run
//! use axum::Router;
//! use claudeflare_tower::{Account, AccountPool, Balancer};
//!
//! # async fn run() -> std::io::Result<()> {
//! let pool = AccountPool::new(vec![Account::api_key("work", std::env::var("KEY_A").unwrap_or_default())]);
//! let app = Router::new().route_service("/v1/{*path}", Balancer::new(pool).build());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The layers, outermost first, each usable on its own:
//!
//! | layer | does |
//! |---|---|
//! | [`record`] | one [`RequestRecord`](record::RequestRecord) per request, usage read from the stream |
//! | [`buffer`] | reads the body once (so it can be retried), 413 over the limit |
//! | [`select`] | candidate accounts from the [`strategy`], 503 when none |
//! | [`failover`] | retries with backoff, then the next account |
//! | [`auth`] | the account's credentials instead of the client's; token refresh |
//! | [`ratelimit`] | reads status and rate-limit headers, marks the account |
//! | [`upstream`] | the hyper client |
//!
//! They talk through request and response extensions ([`ext`]).

pub mod account;
pub mod auth;
pub mod body;
pub mod buffer;
pub mod control;
pub mod error;
pub mod ext;
pub mod failover;
pub mod oauth;
mod path;
pub mod pool;
pub mod ratelimit;
pub mod record;
pub mod select;
mod setting;
mod stack;
pub mod strategy;
pub mod upstream;

pub use account::{
    Account, AccountEntry, AccountInfo, AccountStatus, AccountView, Credentials, LiveState, Mode,
    OAuthTokens, Tier,
};
pub use body::ProxyBody;
pub use pool::{AccountPool, MemoryStore, StateStore};
pub use setting::{Current, Setting};
pub use stack::{Balancer, BalancerService, DEFAULT_UPSTREAM_URL};
pub use tokio_util::sync::CancellationToken;

/// The error type layers box their errors into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

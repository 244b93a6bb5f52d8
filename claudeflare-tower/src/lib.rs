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
//! | [`record`] | one [`RequestRecord`](record::RequestRecord) per request, usage read from the body as it passes |
//! | [`intake`] | reads the body once (so it can be retried), 413 over the limit, notes model and stream flag |
//! | [`select`] | candidate accounts from the [`strategy`], 503 when none |
//! | [`failover`] | retries with backoff, then the next account (tower's `Retry` driven by a failover policy) |
//! | [`auth`] | the account's credentials instead of the client's; token refresh |
//! | [`classify`] | what each response means for the request and the account |
//! | [`upstream`] | the hyper client |
//!
//! Two things tie them together, and only these two: the [`RequestContext`] that the outermost
//! layer puts in the request's extensions and the layers below fill in (data flows one way),
//! and the [`Provider`], which holds everything upstream-specific: each account names its own, and
//! [`Providers`] (the default) mixes Anthropic, Anthropic-compatible backends and providers of
//! your own in one pool, ordered by priority.
//!
//! # Features
//!
//! - `rustls-ring` (default): HTTPS to the upstream and the control plane through rustls with
//!   ring and the webpki roots. Without it, only `http://` upstreams work, unless you pass a
//!   client of your own to [`Upstream::from_client`](upstream::Upstream::from_client).

/// tower-http's accessors for a layer's service: the service it wraps, as `inner`.
macro_rules! inner_accessors {
    ($service:ident <S $(, $param:ident)*>) => {
        impl<S $(, $param)*> $service<S $(, $param)*> {
            /// The service it wraps.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The service it wraps, to change.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// The service it wraps, this layer taken off.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

pub mod account;
pub mod auth;
pub mod body;
pub mod classify;
pub mod context;
pub mod control;
pub mod egress;
pub(crate) mod error;
pub mod failover;
pub mod intake;
mod path;
pub mod pool;
pub mod provider;
pub mod record;
pub mod select;
mod setting;
mod stack;
pub mod strategy;
pub mod upstream;

pub use account::{
    Account, AccountEntry, AccountInfo, AccountStatus, AwsKeys, Credentials, LiveState, Mode,
    OAuthTokens, Route, Tier,
};
pub use body::ProxyBody;
pub use context::RequestContext;
pub use egress::EgressProxy;
pub use error::{SHOULD_RETRY, claudeflare_envelope, error_envelope};
pub use pool::{AccountPool, MemoryStore, StateStore};
pub use provider::{Anthropic, Backend, ModelMap, Provider, Providers};
pub use setting::{Current, Setting};
pub use stack::{Balancer, BalancerService};
pub use tokio_util::sync::CancellationToken;

/// The error type layers box their errors into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The README's Rust examples, compiled as doctests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

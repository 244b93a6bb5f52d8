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
//! | [`RecordLayer`] | one [`RequestRecord`] per request, usage read from the body as it passes |
//! | [`IntakeLayer`] | reads the body once (so it can be retried), 413 over the limit, notes model and stream flag |
//! | [`SelectLayer`] | candidate accounts from the [`Strategy`], 503 when none |
//! | [`FailoverLayer`] | retries with backoff, then the next account (tower's `Retry` driven by a failover policy) |
//! | [`AuthLayer`] | the account's credentials instead of the client's; token refresh |
//! | [`ClassifyLayer`] | what each response means for the request and the account |
//! | [`Upstream`] | the hyper client |
//!
//! Two things tie them together, and only these two: the [`RequestContext`] that the outermost
//! layer puts in the request's extensions and the layers below fill in (data flows one way),
//! and the [`Provider`], which holds everything upstream-specific: each account names its own, and
//! [`Providers`] (the default) mixes Anthropic, Anthropic-compatible backends, Bedrock, Vertex AI
//! and providers of your own in one pool, ordered by priority.
//!
//! Every item is at the crate's root; the docs group them as the sections below the table of
//! contents do: the stack, accounts and the pool, the layers, strategies, records, providers.
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

mod account;
mod auth;
mod body;
mod classify;
mod context;
mod control;
mod egress;
mod error;
mod failover;
mod intake;
mod path;
mod pool;
mod provider;
mod record;
mod select;
mod setting;
mod stack;
mod strategy;
mod upstream;

// The stack as one service.
pub use stack::{Balancer, BalancerService};

// Accounts and the pool.
pub use account::{
    Account, AccountEntry, AccountInfo, AccountStatus, AwsKeys, Credentials, InvalidValue,
    LiveState, Mode, OAuthTokens, Route, Tier,
};
pub use egress::{EgressProxy, InvalidProxy, ProxyKind};
pub use pool::{AccountPool, MemoryStore, StateStore, StoreSync};

// The layers, outermost first, with their services and futures.
pub use auth::{Auth, AuthError, AuthFuture, AuthLayer, REFRESH_MARGIN, TokenRefresher};
pub use classify::{Classify, ClassifyFuture, ClassifyLayer, ERROR_BODY_LIMIT};
pub use failover::{Failover, FailoverFuture, FailoverLayer, RetryConfig};
pub use intake::{
    BodyBudget, DEFAULT_BODY_LIMIT, DEFAULT_BUFFERED_LIMIT, DEFAULT_READ_TIMEOUT, Intake,
    IntakeFuture, IntakeLayer,
};
pub use record::{
    ACCOUNT_HEADER, MemoryRecorder, NoopRecorder, PROVIDER_HEADER, REQUEST_ID_HEADER, Record,
    RecordBody, RecordFuture, RecordLayer, Recorder, RequestRecord,
};
pub use select::{Select, SelectFuture, SelectLayer};
pub use upstream::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DefaultConnector, Upstream, UpstreamError,
    UpstreamFuture,
};

// What the layers share about one request.
pub use body::ProxyBody;
pub use context::{ContextSnapshot, RequestContext};

// Strategies.
pub use strategy::{
    DEFAULT_ROTATE_AT, DEFAULT_SESSION_DURATION, LeastRequests, RoundRobin, Session, Strategy,
    StrategyHandle, Weighted, WeightedRoundRobin, available_accounts,
};

// Providers, and the parts for writing one.
pub use provider::{
    Anthropic, AnthropicTap, AnyTap, AuthStyle, Backend, Bedrock, Billing, Classification,
    CloudTap, Compatible, DEFAULT_COOLDOWN, InvalidModelMap, InvalidUpstream, Iteration, Limits,
    MapEntry, ModelMap, Outcome, Provider, Providers, RefreshError, StreamError, TapSummary,
    TokenPair, Usage, UsageTap, Vertex, error_message, join_uri, retry_after,
};

// Errors in Anthropic's envelope, and settings that change while the stack runs.
pub use error::{SHOULD_RETRY, claudeflare_envelope, error_envelope};
pub use setting::{Current, Setting};
pub use tokio_util::sync::CancellationToken;

/// The error type layers box their errors into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The README's Rust examples, compiled as doctests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

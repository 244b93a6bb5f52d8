//! [`Balancer`]: the standard stack assembled in one call.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::auth::{Auth, AuthLayer, TokenRefresher};
use crate::classify::{Classify, ClassifyLayer};
use crate::failover::{Failover, FailoverLayer, RetryConfig};
use crate::intake::{BodyBudget, DEFAULT_BODY_LIMIT, Intake, IntakeLayer};
use crate::pool::AccountPool;
use crate::provider::{Provider, Providers};
use crate::record::{NoopRecorder, Record, RecordLayer, Recorder};
use crate::select::{Select, SelectLayer};
use crate::setting::Setting;
use crate::strategy::{Session, StrategyHandle};
use crate::upstream::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, Upstream};

/// The whole balancer as one service: `Record → Intake → Select → Failover → Auth → Classify →
/// Upstream`, for providers `P` ([`Providers`]: each account's own). Accepts
/// `http::Request<B>` for any body, never fails (errors are responses in Anthropic's
/// envelope), and streams responses.
pub type BalancerService<P = Providers> =
    Record<Intake<Select<Failover<Auth<Classify<Upstream, P>, P>>>>, P>;

/// Builds a [`BalancerService`]. Every setting that can change while serving is a [`Setting`]
/// you can keep a clone of.
///
/// ```no_run
/// use claudeflare_tower::{Account, AccountPool, Balancer};
/// let pool = AccountPool::new(vec![Account::api_key("work", "sk-ant-api03-…")]);
/// let service = Balancer::new(pool).build();
/// ```
#[must_use]
pub struct Balancer<P = Providers> {
    provider: P,
    pool: AccountPool,
    strategy: StrategyHandle,
    recorder: Arc<dyn Recorder>,
    refresher: Option<Arc<dyn TokenRefresher>>,
    retry: Setting<RetryConfig>,
    body_limit: Setting<usize>,
    body_read_timeout: Setting<Duration>,
    body_budget: BodyBudget,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    shutdown: Option<CancellationToken>,
}

impl Balancer {
    /// A balancer over `pool` with the defaults: the built-in [`Providers`] (each account's
    /// own: Anthropic's API, or an Anthropic-compatible backend), session strategy, no
    /// recording, 3 retries from 1 s doubling, 32 MiB bodies.
    pub fn new(pool: AccountPool) -> Self {
        Self::with_provider(Providers::new(), pool)
    }

    /// Where Anthropic's API is (a mock in tests).
    pub fn upstream_url(mut self, url: impl Into<Setting<Uri>>) -> Self {
        self.provider = self.provider.upstream_url(url);
        self
    }
}

impl<P: Provider> Balancer<P> {
    /// A balancer in front of `provider`, over `pool`, with the defaults of [`Balancer::new`].
    pub fn with_provider(provider: P, pool: AccountPool) -> Self {
        Self {
            provider,
            pool,
            strategy: StrategyHandle::new(Box::new(Session::default())),
            recorder: Arc::new(NoopRecorder),
            refresher: None,
            retry: Setting::default(),
            body_limit: Setting::new(DEFAULT_BODY_LIMIT),
            body_read_timeout: Setting::new(crate::intake::DEFAULT_READ_TIMEOUT),
            body_budget: BodyBudget::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            shutdown: None,
        }
    }

    /// The strategy (switchable later through the handle).
    pub fn strategy(mut self, strategy: StrategyHandle) -> Self {
        self.strategy = strategy;
        self
    }

    /// Where request records go.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// How subscription tokens are refreshed (by default: the provider's refresh grant, the new
    /// tokens kept in memory only).
    pub fn refresher(mut self, refresher: Arc<dyn TokenRefresher>) -> Self {
        self.refresher = Some(refresher);
        self
    }

    /// Retries per account.
    pub fn retry(mut self, retry: impl Into<Setting<RetryConfig>>) -> Self {
        self.retry = retry.into();
        self
    }

    /// Largest request body accepted.
    pub fn body_limit(mut self, limit: impl Into<Setting<usize>>) -> Self {
        self.body_limit = limit.into();
        self
    }

    /// How long a whole request body may take to arrive (408 past it).
    pub fn body_read_timeout(mut self, timeout: impl Into<Setting<Duration>>) -> Self {
        self.body_read_timeout = timeout.into();
        self
    }

    /// The bytes request bodies may take at once (503 past it): give the same budget to every
    /// balancer of a server, or each has its own [`DEFAULT_BUFFERED_LIMIT`](crate::intake::DEFAULT_BUFFERED_LIMIT).
    pub fn body_budget(mut self, budget: BodyBudget) -> Self {
        self.body_budget = budget;
        self
    }

    /// Upstream connect and first-byte timeouts.
    pub fn timeouts(mut self, connect: Duration, first_byte: Duration) -> Self {
        self.connect_timeout = connect;
        self.first_byte_timeout = first_byte;
        self
    }

    /// Cancel `shutdown` when your server's grace period is over: streams still running end
    /// with an SSE `event: error`, and are recorded as cut by the shutdown.
    pub fn shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The service.
    pub fn build(self) -> BalancerService<P> {
        let mut auth = AuthLayer::with_provider(self.provider.clone(), self.pool.clone());
        if let Some(refresher) = self.refresher {
            auth = auth.with_refresher(refresher);
        }
        let mut record = RecordLayer::with_provider(self.provider.clone(), self.recorder)
            .pool(self.pool.clone());
        if let Some(shutdown) = self.shutdown {
            record = record.with_shutdown(shutdown);
        }
        ServiceBuilder::new()
            .layer(record)
            .layer(
                IntakeLayer::new(self.body_limit)
                    .read_timeout(self.body_read_timeout)
                    .budget(self.body_budget),
            )
            .layer(SelectLayer::new(self.pool.clone(), self.strategy))
            .layer(FailoverLayer::new(self.retry))
            .layer(auth)
            .layer(ClassifyLayer::with_provider(self.provider, self.pool))
            .service(Upstream::with_timeouts(
                self.connect_timeout,
                self.first_byte_timeout,
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_layer_hands_out_the_service_it_wraps() {
        let mut service = Balancer::new(AccountPool::default()).build();
        let layers = service.get_ref().get_ref().get_ref().get_ref().get_ref();
        let _upstream: &Upstream = layers.get_ref();
        let _auth: &mut Auth<Classify<Upstream, Providers>, Providers> =
            service.get_mut().get_mut().get_mut().get_mut();
        let classify = service
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner()
            .into_inner();
        let _upstream: Upstream = classify.into_inner();
    }
}

//! The `RateLimit` layer: reads each upstream response's status and rate-limit headers, marks
//! the account, and tells `Failover` what the response means with an [`Outcome`] in the
//! response extensions.
//!
//! ```
//! use claudeflare_tower::{AccountPool, ratelimit::RateLimitLayer};
//! use tower::ServiceBuilder;
//! # fn wrap<S>(upstream: S) -> claudeflare_tower::ratelimit::RateLimit<S> {
//! let pool = AccountPool::default();
//! ServiceBuilder::new().layer(RateLimitLayer::new(pool)).service(upstream)
//! # }
//! ```
//!
//! The account comes from the [`SelectedAccount`] request extension; without one the response
//! still gets its `Outcome`, and nothing is marked.

mod headers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use headers::{DEFAULT_COOLDOWN, MAX_RESET, RateLimitInfo};

use crate::account::{AccountEntry, LiveState};
use crate::ext::SelectedAccount;
use crate::pool::AccountPool;

/// What an upstream response means for the request and the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx–3xx: hand it to the client.
    Success,
    /// A 4xx that another account would answer the same way: hand it to the client.
    ClientError,
    /// 429: the account rests until then; try the next account now.
    RateLimited {
        /// When the account may be used again.
        until: DateTime<Utc>,
    },
    /// 429 for a model-scoped credit problem: try the next account, keep this one in rotation.
    OutOfCredits,
    /// 401: the credential was refused.
    AuthFailed,
    /// 529: Anthropic is overloaded; retry with backoff, then the next account.
    Overloaded,
    /// 5xx: retry with backoff, then the next account.
    ServerError,
}

impl Outcome {
    /// Classify a response from its status and headers, received at `now`.
    pub fn classify(status: StatusCode, info: &RateLimitInfo, now: DateTime<Utc>) -> Self {
        match status.as_u16() {
            429 if info.overage_disabled_reason.as_deref() == Some("out_of_credits") => {
                Outcome::OutOfCredits
            }
            429 => Outcome::RateLimited {
                until: info.limited_until(now),
            },
            401 => Outcome::AuthFailed,
            529 => Outcome::Overloaded,
            500..=599 => Outcome::ServerError,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Success,
        }
    }

    /// Classify from the status alone (a response that did not pass through `RateLimit`).
    pub fn from_status(status: StatusCode) -> Self {
        Self::classify(status, &RateLimitInfo::default(), Utc::now())
    }
}

/// Marks accounts from upstream responses. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    pool: AccountPool,
}

impl RateLimitLayer {
    /// Marks go to accounts of `pool`, whose store persists them.
    pub fn new(pool: AccountPool) -> Self {
        Self { pool }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    pool: AccountPool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let account = req
            .extensions()
            .get::<SelectedAccount>()
            .map(|a| Arc::clone(&a.0));
        ResponseFuture {
            inner: self.inner.call(req),
            account,
            pool: self.pool.clone(),
        }
    }
}

pin_project! {
    /// Future of [`RateLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        account: Option<Arc<AccountEntry>>,
        pool: AccountPool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let now = Utc::now();
        let info = RateLimitInfo::from_headers(response.headers(), now);
        let outcome = Outcome::classify(response.status(), &info, now);
        if let Some(account) = this.account.take() {
            let (limited_until, live) = apply(&account, response.status(), &info, outcome, now);
            if let Some(until) = limited_until {
                this.pool.rate_limited(&account, until);
            }
            this.pool.save(&account, &live);
        }
        response.extensions_mut().insert(outcome);
        Poll::Ready(Ok(response))
    }
}

/// Record on the account what one response said; returns the new rate limit, if any, and the
/// account's live state after it (taken under the same lock).
fn apply(
    account: &AccountEntry,
    status: StatusCode,
    info: &RateLimitInfo,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, LiveState) {
    let limited_until = match outcome {
        Outcome::RateLimited { until } => Some(until),
        // A limited unified status on another response still means the next request will fail.
        _ if info.status_is_limited() => Some(info.limited_until(now)),
        _ => None,
    };
    let mut state = account.lock();
    let live = &mut state.live;
    live.request_count += 1;
    live.total_requests += 1;
    live.last_used = Some(now);
    if live.session_start.is_some() {
        live.session_request_count += 1;
    }
    if let Some(status) = &info.unified_status {
        live.rate_limit_status = Some(status.clone());
    }
    if info.unified_reset.is_some() {
        live.rate_limit_reset = info.unified_reset;
    }
    if info.utilization_5h.is_some() {
        live.utilization_5h = info.utilization_5h;
    }
    if info.utilization_7d.is_some() {
        live.utilization_7d = info.utilization_7d;
    }
    if let Some(until) = limited_until {
        live.rate_limited_until = Some(until);
    }
    let live = live.clone();
    drop(state);
    if let Some(until) = limited_until {
        tracing::warn!(account = account.name(), %status, until = %until, "account rate-limited");
    }
    (limited_until, live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use chrono::TimeDelta;
    use tower::ServiceExt;

    fn reply(status: u16, headers: &[(&'static str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    async fn through(pool: &AccountPool, response: Response<()>) -> Outcome {
        let account = pool.get("a").unwrap();
        let service =
            RateLimitLayer::new(pool.clone()).layer(tower::service_fn(move |_req: Request<()>| {
                let response = Response::from_parts(response.clone_parts(), ());
                async move { Ok::<_, std::convert::Infallible>(response) }
            }));
        let mut req = Request::new(());
        req.extensions_mut().insert(SelectedAccount(account));
        let response = service.oneshot(req).await.unwrap();
        *response.extensions().get::<Outcome>().unwrap()
    }

    trait CloneParts {
        fn clone_parts(&self) -> http::response::Parts;
    }
    impl CloneParts for Response<()> {
        fn clone_parts(&self) -> http::response::Parts {
            let mut builder = Response::builder().status(self.status());
            for (k, v) in self.headers() {
                builder = builder.header(k, v);
            }
            builder.body(()).unwrap().into_parts().0
        }
    }

    #[tokio::test]
    async fn a_429_benches_the_account_until_the_reset() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let before = Utc::now();
        let outcome = through(&pool, reply(429, &[("retry-after", "120")])).await;
        let Outcome::RateLimited { until } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            until >= before + TimeDelta::seconds(120)
                && until <= Utc::now() + TimeDelta::seconds(120)
        );
        let account = pool.get("a").unwrap();
        assert_eq!(account.limited_until(Utc::now()), Some(until));
        assert_eq!(account.live().request_count, 1);
    }

    #[tokio::test]
    async fn the_store_gets_the_state_after_each_response() {
        let store = Arc::new(crate::pool::MemoryStore::default());
        let pool = AccountPool::with_store(vec![Account::api_key("a", "k")], store.clone());
        let id = pool.get("a").unwrap().id().to_owned();
        through(&pool, reply(200, &[])).await;
        let saved = store.get(&id).unwrap();
        assert_eq!(saved.request_count, 1);
        assert!(saved.last_used.is_some() && saved.rate_limited_until.is_none());
        let outcome = through(&pool, reply(429, &[("retry-after", "60")])).await;
        let Outcome::RateLimited { until } = outcome else {
            panic!("{outcome:?}")
        };
        let saved = store.get(&id).unwrap();
        assert_eq!(saved.request_count, 2);
        assert_eq!(saved.rate_limited_until, Some(until));
    }

    #[tokio::test]
    async fn out_of_credits_fails_over_without_benching() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let outcome = through(
            &pool,
            reply(
                429,
                &[(
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "out_of_credits",
                )],
            ),
        )
        .await;
        assert_eq!(outcome, Outcome::OutOfCredits);
        assert!(pool.get("a").unwrap().is_available(Utc::now()));
    }

    #[tokio::test]
    async fn keeps_last_status_and_utilization() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let outcome = through(
            &pool,
            reply(
                200,
                &[
                    ("anthropic-ratelimit-unified-status", "allowed_warning"),
                    ("anthropic-ratelimit-unified-5h-utilization", "0.8"),
                ],
            ),
        )
        .await;
        assert_eq!(outcome, Outcome::Success);
        let live = pool.get("a").unwrap().live();
        assert_eq!(live.rate_limit_status.as_deref(), Some("allowed_warning"));
        assert_eq!(live.utilization_5h, Some(0.8));
        assert!(live.rate_limited_until.is_none());
    }

    #[test]
    fn statuses_classify() {
        let now = Utc::now();
        let info = RateLimitInfo::default();
        let c = |s: u16| Outcome::classify(StatusCode::from_u16(s).unwrap(), &info, now);
        assert_eq!(c(200), Outcome::Success);
        assert_eq!(c(400), Outcome::ClientError);
        assert_eq!(c(401), Outcome::AuthFailed);
        assert_eq!(c(500), Outcome::ServerError);
        assert_eq!(c(503), Outcome::ServerError);
        assert_eq!(c(529), Outcome::Overloaded);
        assert_eq!(
            c(429),
            Outcome::RateLimited {
                until: now + DEFAULT_COOLDOWN
            }
        );
    }
}

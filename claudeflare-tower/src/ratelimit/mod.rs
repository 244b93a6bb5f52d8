//! The `RateLimit` layer: reads each upstream response's status, rate-limit headers and (for
//! the statuses whose meaning depends on it) error body, marks the account, and tells `Failover`
//! what the response means with an [`Outcome`] in the response extensions.
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
//!
//! The error bodies of 400, 403 and 429 answers are read before the response is handed on (they
//! are small JSON envelopes; at most [`ERROR_BODY_LIMIT`] bytes), because their message decides
//! between a ban, a scoped refusal and a rate limit. Every other body streams through untouched.

mod classify;
mod headers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use classify::{ErrorBody, Outcome};
pub use headers::{DEFAULT_COOLDOWN, MAX_RESET, RateLimitInfo};

use crate::BoxError;
use crate::account::{AccountEntry, LiveState};
use crate::ext::SelectedAccount;
use crate::pool::AccountPool;

/// The largest error body read to classify a response. Anthropic's envelopes are a few hundred
/// bytes; a bigger one is not an envelope worth the memory.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

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
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + From<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let account = req
            .extensions()
            .get::<SelectedAccount>()
            .map(|a| Arc::clone(&a.0));
        ResponseFuture {
            state: State::Waiting {
                future: self.inner.call(req),
            },
            account,
            pool: self.pool.clone(),
        }
    }
}

pin_project! {
    /// Future of [`RateLimit`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        account: Option<Arc<AccountEntry>>,
        pool: AccountPool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        /// Waiting for the response headers.
        Waiting { #[pin] future: F },
        /// Reading an error body whose message decides what the response means.
        Reading {
            parts: Option<http::response::Parts>,
            #[pin]
            body: B,
            read: BytesMut,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Waiting { future } => {
                    let response = std::task::ready!(future.poll(cx)).map_err(Into::into)?;
                    if !classify::needs_body(response.status()) || !is_json(&response) {
                        return Poll::Ready(Ok(judge(this.account, this.pool, response, None)));
                    }
                    let (parts, body) = response.into_parts();
                    State::Reading {
                        parts: Some(parts),
                        body,
                        read: BytesMut::new(),
                    }
                }
                StateProj::Reading {
                    parts,
                    mut body,
                    read,
                } => {
                    while let Some(frame) = std::task::ready!(body.as_mut().poll_frame(cx)) {
                        let frame = frame.map_err(Into::into)?;
                        if let Some(data) = frame.data_ref() {
                            if read.len() + data.len() > ERROR_BODY_LIMIT {
                                return Poll::Ready(Err(format!(
                                    "the upstream's error body is larger than {ERROR_BODY_LIMIT} bytes"
                                )
                                .into()));
                            }
                            read.extend_from_slice(data);
                        }
                    }
                    let Some(parts) = parts.take() else {
                        return Poll::Ready(Err("ratelimit polled after completion".into()));
                    };
                    let bytes = std::mem::take(read).freeze();
                    let error = ErrorBody::parse(&bytes);
                    let response = Response::from_parts(parts, B::from(bytes));
                    return Poll::Ready(Ok(judge(
                        this.account,
                        this.pool,
                        response,
                        error.as_ref(),
                    )));
                }
            };
            this.state.set(next);
        }
    }
}

fn is_json<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Classify `response`, mark the account, and put the [`Outcome`] in the response extensions.
fn judge<B>(
    account: &mut Option<Arc<AccountEntry>>,
    pool: &AccountPool,
    mut response: Response<B>,
    error: Option<&ErrorBody>,
) -> Response<B> {
    let now = Utc::now();
    let info = RateLimitInfo::from_headers(response.headers(), now);
    let outcome = Outcome::classify(response.status(), &info, error, now);
    if let Some(account) = account.take() {
        let (limited_until, live) = apply(&account, response.status(), &info, outcome, now);
        if let Some(until) = limited_until {
            pool.rate_limited(&account, until);
        }
        pool.save(&account, &live);
        let message = error.map_or("", |e| e.message.as_str());
        match outcome {
            Outcome::Forbidden => {
                tracing::error!(
                    account = account.name(),
                    reason = message,
                    "the upstream refused this account (disabled or banned?); it is out of rotation until you resume or re-authenticate it"
                );
                let reason = if message.is_empty() {
                    "the upstream answered 403 permission_error"
                } else {
                    message
                };
                pool.forbidden(&account, reason);
            }
            Outcome::ScopedRefusal => tracing::warn!(
                account = account.name(),
                reason = message,
                "refused for this request's model or beta only; trying the next account, this one stays in rotation"
            ),
            Outcome::ExtraUsageRequired => tracing::warn!(
                account = account.name(),
                reason = message,
                "a billing-policy refusal (extra usage), not a rate limit; the account stays in rotation"
            ),
            _ => {}
        }
    }
    response.extensions_mut().insert(outcome);
    response
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
        // A refusal scoped to one model or beta says nothing about the account's other requests.
        Outcome::ScopedRefusal => None,
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
        live.utilization_5h_reset = info.reset_5h;
    }
    if info.utilization_7d.is_some() {
        live.utilization_7d = info.utilization_7d;
        live.utilization_7d_reset = info.reset_7d;
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
    use crate::body::ProxyBody;
    use chrono::TimeDelta;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A scripted upstream answer: status, headers and body.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    }

    fn reply(status: u16, headers: &[(&'static str, &str)]) -> Reply {
        Reply {
            status,
            headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            body: "",
        }
    }

    /// An error envelope answer, as Anthropic sends it.
    fn envelope(status: u16, kind: &str, message: &str) -> Reply {
        let body =
            format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}}}}"#);
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Box::leak(body.into_boxed_str()),
        }
    }

    async fn respond(pool: &AccountPool, reply: Reply) -> Response<ProxyBody> {
        let account = pool.get("a").unwrap();
        let service =
            RateLimitLayer::new(pool.clone()).layer(tower::service_fn(move |_req: Request<()>| {
                let mut builder = Response::builder().status(reply.status);
                for (k, v) in &reply.headers {
                    builder = builder.header(*k, v.as_str());
                }
                let response = builder.body(ProxyBody::full(reply.body)).unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            }));
        let mut req = Request::new(());
        req.extensions_mut().insert(SelectedAccount(account));
        service.oneshot(req).await.unwrap()
    }

    async fn through(pool: &AccountPool, reply: Reply) -> Outcome {
        *respond(pool, reply)
            .await
            .extensions()
            .get::<Outcome>()
            .unwrap()
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
    async fn a_429_without_reset_information_benches_for_the_default_cooldown_only() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let before = Utc::now();
        let mut only_should_retry = envelope(429, "rate_limit_error", "Rate limited");
        only_should_retry
            .headers
            .push(("x-should-retry", "true".into()));
        let Outcome::RateLimited { until } = through(&pool, only_should_retry).await else {
            panic!("not a rate limit")
        };
        assert!(until >= before + DEFAULT_COOLDOWN && until <= Utc::now() + DEFAULT_COOLDOWN);
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
    async fn scoped_refusals_fail_over_without_benching() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let out_of_credits = reply(
            429,
            &[
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "out_of_credits",
                ),
                ("anthropic-ratelimit-unified-status", "rejected"),
            ],
        );
        assert_eq!(through(&pool, out_of_credits).await, Outcome::ScopedRefusal);
        let long_context = envelope(
            429,
            "rate_limit_error",
            "Extra usage is required for long context requests.",
        );
        let response = respond(&pool, long_context).await;
        assert_eq!(
            response.extensions().get::<Outcome>(),
            Some(&Outcome::ScopedRefusal)
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("Extra usage is required"),
            "the body read to classify it is handed on whole"
        );
        assert!(pool.get("a").unwrap().is_available(Utc::now()));
    }

    #[tokio::test]
    async fn a_403_permission_error_takes_the_account_out_until_a_person_acts() {
        let store = Arc::new(crate::pool::MemoryStore::default());
        let pool = AccountPool::with_store(vec![Account::api_key("a", "k")], store.clone());
        let message = "OAuth authentication is currently not allowed for this organization.";
        let outcome = through(&pool, envelope(403, "permission_error", message)).await;
        assert_eq!(outcome, Outcome::Forbidden);
        let account = pool.get("a").unwrap();
        let later = Utc::now() + TimeDelta::days(7);
        assert!(!account.is_available(later), "waiting does not heal a ban");
        assert_eq!(account.status(later), crate::AccountStatus::Forbidden);
        let saved = store.get(account.id()).unwrap();
        assert!(saved.forbidden, "stored at once");
        assert_eq!(saved.status_reason.as_deref(), Some(message));
    }

    #[tokio::test]
    async fn a_400_about_extra_usage_benches_nothing() {
        let pool = AccountPool::new(vec![Account::api_key("a", "k")]);
        let outcome = through(
            &pool,
            envelope(
                400,
                "invalid_request_error",
                "This request would draw from your extra usage, which is turned off.",
            ),
        )
        .await;
        assert_eq!(outcome, Outcome::ExtraUsageRequired);
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
}

//! Classifies upstream responses and marks accounts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::BoxError;
use crate::account::AccountEntry;
use crate::auth::AuthError;
use crate::context::RequestContext;
use crate::pool::AccountPool;
use crate::provider::{InvalidUpstream, Outcome, Provider, Providers};
use crate::upstream::UpstreamError;

/// The largest error body read to classify a response. Anthropic's envelopes are a few hundred
/// bytes; a bigger one is not an envelope worth the memory.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Classifies upstream responses and marks accounts.
///
/// The `Classify` layer: asks the [`Provider`] what each upstream response means (from its
/// status, headers and, for the statuses whose meaning depends on it, its error body), applies
/// that to the account through the [`AccountPool`], and puts the [`Outcome`] in the request's
/// [`RequestContext`] for `Failover`.
///
/// ```
/// use claudeflare_tower::{AccountPool, ClassifyLayer};
/// use tower::ServiceBuilder;
/// # fn wrap<S>(upstream: S) -> claudeflare_tower::Classify<S> {
/// let pool = AccountPool::default();
/// ServiceBuilder::new().layer(ClassifyLayer::new(pool)).service(upstream)
/// # }
/// ```
///
/// An error instead of a response (the upstream unreachable, a timeout) is the provider's to
/// read too ([`Provider::classify_error`]): its outcome goes in the context the same way, so
/// `Failover` decides from outcomes alone.
///
/// The account is the context's; without one the outcome is what the status implies, and
/// nothing is marked.
///
/// Error bodies the provider needs (Anthropic's: 400, 403 and 429 envelopes) are read before the
/// response is handed on (at most [`ERROR_BODY_LIMIT`] bytes), because their message decides
/// between a ban, a scoped refusal and a rate limit. Every other body streams through untouched.
#[derive(Debug, Clone)]
pub struct ClassifyLayer<P = Providers> {
    pool: AccountPool,
    provider: P,
}

impl ClassifyLayer {
    /// Responses read by each account's provider among the built-in [`Providers`]; marks go to
    /// accounts of `pool`, whose store persists them.
    pub fn new(pool: AccountPool) -> Self {
        Self::with_provider(Providers::new(), pool)
    }
}

impl<P> ClassifyLayer<P> {
    /// Responses of `provider`; marks go to accounts of `pool`.
    pub fn with_provider(provider: P, pool: AccountPool) -> Self {
        Self { pool, provider }
    }
}

impl<S, P: Clone> Layer<S> for ClassifyLayer<P> {
    type Service = Classify<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            pool: self.pool.clone(),
            provider: self.provider.clone(),
        }
    }
}

/// The service of [`ClassifyLayer`].
#[derive(Debug, Clone)]
pub struct Classify<S, P = Providers> {
    inner: S,
    pool: AccountPool,
    provider: P,
}

inner_accessors!(Classify<S, P>);

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Classify<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    P: Provider,
    ResBody: Body<Data = Bytes> + From<Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ClassifyFuture<S::Future, ResBody, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let context = RequestContext::get_or_insert(&mut req);
        ClassifyFuture {
            state: State::Waiting {
                future: self.inner.call(req),
            },
            judge: Judge {
                account: context.account(),
                context,
                pool: self.pool.clone(),
                provider: self.provider.clone(),
            },
        }
    }
}

/// What a response is judged with.
struct Judge<P> {
    context: RequestContext,
    account: Option<Arc<AccountEntry>>,
    pool: AccountPool,
    provider: P,
}

impl<P: Provider> Judge<P> {
    /// Classify the response, mark the account, and note the outcome in the context.
    fn judge<B>(&mut self, response: &Response<B>, body: Option<&[u8]>) {
        let now = Utc::now();
        let Some(account) = self.account.take() else {
            self.context
                .set_outcome(Outcome::from_status(response.status()));
            return;
        };
        let seen =
            self.provider
                .classify(&account, response.status(), response.headers(), body, now);
        self.pool.observe(&account, &seen, now);
        self.context.set_outcome(seen.outcome);
    }

    /// What the client gets in place of an error body the provider read.
    fn error_body<B>(&self, response: &Response<B>, body: &[u8]) -> Option<Bytes> {
        let account = self.context.account()?;
        self.provider
            .error_body(&account, response.status(), response.headers(), body)
    }

    /// Whether the response's meaning needs its body read first.
    fn needs_body<B>(&self, response: &Response<B>) -> bool {
        self.account.as_ref().is_some_and(|account| {
            self.provider
                .needs_body(account, response.status(), response.headers())
        })
    }

    /// Note what an error instead of a response means.
    fn judge_error(&self, error: &BoxError) {
        let outcome = match &self.account {
            Some(account) => self.provider.classify_error(account, &**error),
            None => Outcome::from_error(&**error),
        };
        self.context.set_outcome(outcome);
    }
}

impl Outcome {
    /// What an error instead of a response means, by the rules that hold for any upstream
    /// (the default of [`Provider::classify_error`]): a connection that failed or broke is
    /// [`Outcome::Unreachable`], a timeout [`Outcome::TimedOut`], a credential that cannot be
    /// had or a request the account cannot make [`Outcome::Unusable`]; anything else is
    /// retried as a server error.
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Outcome {
        if let Some(error) = error.downcast_ref::<UpstreamError>() {
            return match error {
                UpstreamError::Timeout(_) => Outcome::TimedOut,
                UpstreamError::InvalidUri(_) => Outcome::Unusable,
                _ => Outcome::Unreachable,
            };
        }
        if error.is::<InvalidUpstream>() {
            return Outcome::Unusable;
        }
        match error.downcast_ref::<AuthError>() {
            Some(AuthError::NeedsReauth { .. } | AuthError::Prepare(_)) => Outcome::Unusable,
            _ => Outcome::ServerError,
        }
    }
}

pin_project! {
    /// Future of [`Classify`].
    pub struct ClassifyFuture<F, B, P> {
        #[pin]
        state: State<F, B>,
        judge: Judge<P>,
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

impl<F, B, E, P> Future for ClassifyFuture<F, B, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + From<Bytes>,
    B::Error: Into<BoxError>,
    P: Provider,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Waiting { future } => {
                    let response = match std::task::ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(error) => {
                            let error = error.into();
                            this.judge.judge_error(&error);
                            return Poll::Ready(Err(error));
                        }
                    };
                    if !this.judge.needs_body(&response) {
                        this.judge.judge(&response, None);
                        return Poll::Ready(Ok(response));
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
                        return Poll::Ready(Err("classify polled after completion".into()));
                    };
                    let bytes = std::mem::take(read).freeze();
                    let mut response = Response::from_parts(parts, B::from(bytes.clone()));
                    this.judge.judge(&response, Some(&bytes));
                    if let Some(replaced) = this.judge.error_body(&response, &bytes) {
                        let headers = response.headers_mut();
                        headers.insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        headers.insert(
                            http::header::CONTENT_LENGTH,
                            http::HeaderValue::from(replaced.len()),
                        );
                        headers.remove(http::header::CONTENT_ENCODING);
                        *response.body_mut() = B::from(replaced);
                    }
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}

/// The outcome `Classify` noted for the attempt in `context`, or what the status implies.
pub(crate) fn outcome_of<B>(context: &RequestContext, response: &Response<B>) -> Outcome {
    context
        .outcome()
        .unwrap_or_else(|| Outcome::from_status(response.status()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use crate::body::ProxyBody;
    use crate::provider::DEFAULT_COOLDOWN;
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

    async fn respond(pool: &AccountPool, reply: Reply) -> (Response<ProxyBody>, Outcome) {
        let account = pool.get("a").unwrap();
        let service =
            ClassifyLayer::new(pool.clone()).layer(tower::service_fn(move |_req: Request<()>| {
                let mut builder = Response::builder().status(reply.status);
                for (k, v) in &reply.headers {
                    builder = builder.header(*k, v.as_str());
                }
                let response = builder.body(ProxyBody::full(reply.body)).unwrap();
                async move { Ok::<_, std::convert::Infallible>(response) }
            }));
        let mut req = Request::new(());
        let context = RequestContext::get_or_insert(&mut req);
        context.set_account(account);
        let response = service.oneshot(req).await.unwrap();
        (response, context.outcome().unwrap())
    }

    async fn through(pool: &AccountPool, reply: Reply) -> Outcome {
        respond(pool, reply).await.1
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
        let (response, outcome) = respond(&pool, long_context).await;
        assert_eq!(outcome, Outcome::ScopedRefusal);
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

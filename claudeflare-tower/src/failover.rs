//! Retries and fails over.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::retry::{Policy, Retry};
use tower::{Layer, Service};

use crate::BoxError;
use crate::account::AccountEntry;
#[cfg(test)]
use crate::body::ProxyBody;
use crate::classify::outcome_of;
use crate::context::RequestContext;
use crate::error::error_response;
use crate::provider::Outcome;
use crate::setting::Setting;
use crate::upstream::UpstreamError;

/// Retries per account.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Retries on the same account after the first try (`retry_attempts`).
    pub attempts: u32,
    /// Delay before the first retry (`retry_delay_ms`).
    pub delay: Duration,
    /// Factor applied to the delay for each further retry (`retry_backoff`).
    pub backoff: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            delay: Duration::from_secs(1),
            backoff: 2.0,
        }
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (0-based), capped at 10 minutes.
    pub fn delay_before(&self, retry: u32) -> Duration {
        let factor = self
            .backoff
            .max(1.0)
            .powi(i32::try_from(retry).unwrap_or(i32::MAX));
        let seconds = (self.delay.as_secs_f64() * factor).min(600.0);
        Duration::from_secs_f64(seconds)
    }
}

/// Retries and fails over.
///
/// The `Failover` layer: tries the request on each candidate account in turn.
///
/// Per account, a 5xx or a 529 is retried `attempts` times with a delay that starts at `delay`
/// and is multiplied by `backoff` each time (1 s, 2 s, 4 s by default); then the next candidate
/// gets it. A connection error is the upstream's, not an account's: it is retried the same way,
/// then answered with 502, without trying the other accounts (they would reach the same host).
/// A rate limit, a refusal scoped to the request's model or beta, a refused (banned) account or
/// a definitive authentication failure moves to the next candidate at once. A 401 on an OAuth
/// account is retried once on the same account (the `Auth` layer refreshes the token in
/// between).
///
/// Nothing is retried once the response has been handed on: a response is only replaced while
/// none of its bytes has gone to the client. When every candidate failed, the client gets the
/// last upstream response, or 502 (unreachable) / 504 (timeout) in Anthropic's envelope.
///
/// ```
/// use std::time::Duration;
/// use claudeflare_tower::{FailoverLayer, RetryConfig};
/// let layer = FailoverLayer::new(RetryConfig {
///     attempts: 3,
///     delay: Duration::from_secs(1),
///     backoff: 2.0,
/// });
/// ```
///
/// Requests need candidates in their [`RequestContext`] (from `Select`) and a `Clone` body
/// (from `Intake`).
///
/// # Design
///
/// The loop is tower's own [`Retry`] middleware, driven by a `FailoverPolicy`: the policy
/// holds the candidate cursor, the retry count on the current account and whether a token
/// refresh was already tried, and decides from the attempt's [`Outcome`] (which `Classify`
/// notes in the context) or from the error's type. Moving to the next account is the policy
/// pointing the context at it before the next attempt. The future is named
/// ([`FailoverFuture`]), so the request path allocates nothing for it; the backoff is a
/// [`tokio::time::Sleep`] held inside it.
#[derive(Debug, Clone, Default)]
pub struct FailoverLayer {
    retry: Setting<RetryConfig>,
}

impl FailoverLayer {
    /// With `retry`; a [`Setting`] lets it change while serving.
    pub fn new(retry: impl Into<Setting<RetryConfig>>) -> Self {
        Self {
            retry: retry.into(),
        }
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Failover {
            retry: Retry::new(FailoverPolicy::new(self.retry.clone()), inner),
            not_ready: None,
        }
    }
}

/// The service of [`FailoverLayer`].
#[derive(Debug, Clone)]
pub struct Failover<S> {
    retry: Retry<FailoverPolicy, S>,
    /// Why the inner service could not get ready: the next call answers with it.
    not_ready: Option<String>,
}

impl<S> Failover<S> {
    /// The service it wraps.
    pub fn get_ref(&self) -> &S {
        self.retry.get_ref()
    }

    /// The service it wraps, to change.
    pub fn get_mut(&mut self) -> &mut S {
        self.retry.get_mut()
    }

    /// The service it wraps, this layer taken off.
    pub fn into_inner(self) -> S {
        self.retry.into_inner()
    }
}

/// What [`Failover`] does after each attempt: a [`Policy`] for tower's [`Retry`]. See the
/// [module docs](self#design).
///
/// Cloned for every request (by [`Retry`]), fresh: the cursor starts at the first candidate.
#[derive(Debug, Clone)]
pub(crate) struct FailoverPolicy {
    retry: Setting<RetryConfig>,
    /// Index of the current candidate.
    index: usize,
    /// Retries so far on the current candidate.
    retries: u32,
    /// Whether a 401 already had its retry (with a refreshed token) on the current candidate.
    refreshed: bool,
}

impl FailoverPolicy {
    /// A policy with these retries per account.
    pub(crate) fn new(retry: impl Into<Setting<RetryConfig>>) -> Self {
        Self {
            retry: retry.into(),
            index: 0,
            retries: 0,
            refreshed: false,
        }
    }
}

/// What to do after one attempt.
enum Verdict<ResBody> {
    /// Give this result to the client.
    Deliver,
    /// Give this answer to the client instead of the result.
    Answer(Response<ResBody>),
    /// Try the same account again, after this delay.
    Retry(Duration),
    /// Move on to the next account, if there is one.
    NextAccount,
    /// Move on to the next account that reaches its upstream another way, if there is one.
    OtherUpstream,
}

impl FailoverPolicy {
    fn verdict<ResBody: From<Bytes>>(
        &mut self,
        context: &RequestContext,
        result: &Result<Response<ResBody>, BoxError>,
    ) -> Verdict<ResBody> {
        let retry = self.retry.current();
        let (retries, attempts) = (self.retries, retry.attempts);
        let backoff = |then: Verdict<ResBody>| {
            if retries < attempts {
                Verdict::Retry(retry.delay_before(retries))
            } else {
                then
            }
        };
        // What the attempt meant, as the provider read it (`Classify` and `Auth` note it).
        let outcome = match result {
            Ok(response) => outcome_of(context, response),
            Err(error) => context
                .outcome()
                .unwrap_or_else(|| Outcome::from_error(&**error)),
        };
        match outcome {
            Outcome::Success | Outcome::ClientError | Outcome::ExtraUsageRequired => match result {
                Ok(_) => Verdict::Deliver,
                Err(error) => Verdict::Answer(final_answer(error)),
            },
            // The account (or this request on it) is refused: another account may serve it,
            // and if none does the client gets the upstream's own answer.
            Outcome::RateLimited { .. }
            | Outcome::ScopedRefusal
            | Outcome::Forbidden
            | Outcome::Unusable => Verdict::NextAccount,
            Outcome::AuthFailed if !self.refreshed => {
                self.refreshed = true;
                Verdict::Retry(Duration::ZERO)
            }
            Outcome::AuthFailed => Verdict::NextAccount,
            Outcome::TimedOut => Verdict::Answer(error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &result
                    .as_ref()
                    .err()
                    .map_or_else(|| "the upstream timed out".to_owned(), ToString::to_string),
            )),
            // The upstream is unreachable whichever account of it asks: retry the request, then
            // try an account of another upstream, rather than multiply the wait by the number
            // of accounts that share this one.
            Outcome::Unreachable => backoff(Verdict::OtherUpstream),
            _ => backoff(Verdict::NextAccount),
        }
    }
}

/// Whether two accounts reach the upstream the same way (one provider, one base URL, one
/// egress proxy): when one cannot reach it, neither can the other.
fn same_upstream(a: &AccountEntry, b: &AccountEntry) -> bool {
    let (a, b) = (a.route(), b.route());
    a.backend == b.backend && a.proxy == b.proxy
}

impl<B: Clone, ResBody: From<Bytes>> Policy<Request<B>, Response<ResBody>, BoxError>
    for FailoverPolicy
{
    type Future = Pause;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<ResBody>, BoxError>,
    ) -> Option<Pause> {
        let context = RequestContext::of(req)?.clone();
        match self.verdict(&context, result) {
            Verdict::Deliver => None,
            Verdict::Answer(response) => {
                *result = Ok(response);
                None
            }
            Verdict::Retry(delay) => {
                let account = context.account();
                tracing::debug!(
                    account = account.as_ref().map(|a| a.name()),
                    retry = self.retries + 1,
                    ?delay,
                    "retrying"
                );
                self.retries += 1;
                context.add_backoff(delay);
                context.clear_outcome();
                Some(Pause::after(delay))
            }
            verdict @ (Verdict::NextAccount | Verdict::OtherUpstream) => {
                let candidates = context.candidates();
                let current = &candidates[self.index];
                let other_upstream = matches!(verdict, Verdict::OtherUpstream);
                let Some(next) = (self.index + 1..candidates.len())
                    .find(|&i| !other_upstream || !same_upstream(current, &candidates[i]))
                else {
                    // Every candidate failed: the last answer is the client's.
                    if let Err(error) = result {
                        *result = Ok(final_answer(error));
                    }
                    return None;
                };
                let reason = match result {
                    Ok(response) => format!("upstream answered {}", response.status()),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(
                    from = current.name(),
                    to = candidates[next].name(),
                    reason,
                    "failing over to the next account"
                );
                context.switch_to(std::sync::Arc::clone(&candidates[next]));
                self.index = next;
                self.retries = 0;
                self.refreshed = false;
                context.clear_outcome();
                Some(Pause::NOW)
            }
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// The answer when the last attempt ended in an error.
fn final_answer<ResBody: From<Bytes>>(error: &BoxError) -> Response<ResBody> {
    if error.is::<UpstreamError>() {
        let message = format!("the upstream could not be reached: {error}");
        error_response(StatusCode::BAD_GATEWAY, &message)
    } else {
        // An account that needs re-authentication, or a token refresh that failed for now.
        let message = format!("no account could serve the request: {error}");
        error_response(StatusCode::SERVICE_UNAVAILABLE, &message)
    }
}

pin_project! {
    /// The wait before the next attempt: none when moving to another account, the backoff
    /// before a retry on the same one.
    pub(crate) struct Pause {
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl Pause {
    const NOW: Pause = Pause { sleep: None };

    fn after(delay: Duration) -> Self {
        Pause {
            sleep: (!delay.is_zero()).then(|| tokio::time::sleep(delay)),
        }
    }
}

impl Future for Pause {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Failover<S>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = BoxError> + Clone,
    B: Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = FailoverFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_none() {
            if let Err(error) = std::task::ready!(self.retry.poll_ready(cx)) {
                self.not_ready = Some(error.to_string());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(error) = self.not_ready.take() {
            let message = format!("no account could serve the request: {error}");
            return FailoverFuture::answer(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &message,
            ));
        }
        let context = RequestContext::get_or_insert(&mut req);
        let Some(first) = context.candidates().first().cloned() else {
            let message = "no account was selected for this request";
            return FailoverFuture::answer(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                message,
            ));
        };
        context.set_account(first);
        context.clear_outcome();
        FailoverFuture {
            kind: Kind::Trying {
                future: self.retry.call(req),
            },
        }
    }
}

pin_project! {
    /// Future of [`Failover`].
    pub struct FailoverFuture<S, B>
    where
        S: Service<Request<B>, Error = BoxError>,
        FailoverPolicy: Policy<Request<B>, S::Response, BoxError>,
    {
        #[pin]
        kind: Kind<S, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B>
    where
        S: Service<Request<B>, Error = BoxError>,
        FailoverPolicy: Policy<Request<B>, S::Response, BoxError>,
    {
        Trying { #[pin] future: tower::retry::future::ResponseFuture<FailoverPolicy, S, Request<B>> },
        Answer { response: Option<S::Response> },
    }
}

impl<S, B, ResBody> FailoverFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = BoxError>,
    B: Clone,
    ResBody: From<Bytes>,
{
    fn answer(response: S::Response) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(response),
            },
        }
    }
}

impl<S, B, ResBody> Future for FailoverFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = BoxError> + Clone,
    B: Clone,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Trying { future } => {
                // The policy turned the errors it saw into answers; what is left is an inner
                // service that failed to get ready for a retry.
                let result = std::task::ready!(future.poll(cx));
                Poll::Ready(Ok(result.unwrap_or_else(|error| final_answer(&error))))
            }
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("failover::FailoverFuture polled after completion"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use crate::account::{Account, AccountEntry};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;
    use tower::ServiceExt;

    type Log = Arc<Mutex<Vec<(String, Instant)>>>;

    /// A service answering from a script of statuses, logging which account each attempt used.
    fn scripted(
        statuses: Vec<u16>,
        log: Log,
    ) -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = BoxError,
        Future = BoxFuture<'static, Result<Response<ProxyBody>, BoxError>>,
    > + Clone
    + Send {
        let script = Arc::new(Mutex::new(statuses.into_iter()));
        tower::service_fn(move |req: Request<()>| {
            let context = RequestContext::of(&req).unwrap();
            let account = context.account().unwrap().name().to_owned();
            log.lock().unwrap().push((account, Instant::now()));
            let status = script.lock().unwrap().next().unwrap_or(200);
            Box::pin(async move {
                if status == 0 {
                    return Err(BoxError::from(UpstreamError::Connect("refused".into())));
                }
                let mut response = Response::new(ProxyBody::empty());
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(response)
            }) as BoxFuture<'static, _>
        })
    }

    fn request(names: &[&str]) -> (Request<()>, RequestContext) {
        let accounts = names
            .iter()
            .map(|n| Arc::new(AccountEntry::new(Account::api_key(*n, "k"))))
            .collect();
        let mut req = Request::new(());
        let context = RequestContext::get_or_insert(&mut req);
        context.set_candidates(accounts);
        (req, context)
    }

    async fn drive(
        statuses: Vec<u16>,
        names: &[&str],
    ) -> (Response<ProxyBody>, Vec<(String, Duration)>) {
        drive_with_context(statuses, names).await.0
    }

    async fn drive_with_context(
        statuses: Vec<u16>,
        names: &[&str],
    ) -> (
        (Response<ProxyBody>, Vec<(String, Duration)>),
        RequestContext,
    ) {
        let log: Log = Arc::default();
        let start = Instant::now();
        let service = FailoverLayer::default().layer(scripted(statuses, log.clone()));
        let (req, context) = request(names);
        let response = service.oneshot(req).await.unwrap();
        let log = log
            .lock()
            .unwrap()
            .iter()
            .map(|(a, t)| (a.clone(), *t - start))
            .collect();
        ((response, log), context)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_back_off_1_2_4_seconds_then_fail_over() {
        let ((response, log), context) =
            drive_with_context(vec![500, 529, 500, 503, 200], &["a", "b"]).await;
        assert_eq!(response.status(), 200);
        let expected = [("a", 0), ("a", 1), ("a", 3), ("a", 7), ("b", 7)];
        let got: Vec<_> = log.iter().map(|(a, t)| (a.as_str(), t.as_secs())).collect();
        assert_eq!(got, expected);
        let seen = context.snapshot();
        assert_eq!(seen.account.unwrap().name(), "b");
        assert_eq!(seen.switches, 1);
        assert_eq!(seen.backoff, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_fail_over_at_once() {
        let (response, log) = drive(vec![429, 429, 200], &["a", "b", "c"]).await;
        assert_eq!(response.status(), 200);
        let got: Vec<_> = log.iter().map(|(a, t)| (a.as_str(), *t)).collect();
        assert_eq!(got, [("a", secs(0)), ("b", secs(0)), ("c", secs(0))]);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_delivered_without_retry() {
        let (response, log) = drive(vec![400], &["a", "b"]).await;
        assert_eq!(response.status(), 400);
        assert_eq!(log.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_is_retried_once_on_the_same_account() {
        let (response, log) = drive(vec![401, 401, 200], &["a", "b"]).await;
        assert_eq!(response.status(), 200);
        let got: Vec<_> = log.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(got, ["a", "a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_upstream_is_a_502_after_the_retries_of_the_request() {
        let (response, log) = drive(vec![0; 12], &["a", "b", "c"]).await;
        assert_eq!(response.status(), 502);
        let got: Vec<_> = log.iter().map(|(a, t)| (a.as_str(), t.as_secs())).collect();
        assert_eq!(
            got,
            [("a", 0), ("a", 1), ("a", 3), ("a", 7)],
            "1 s, 2 s, 4 s, then 502: not once more per account"
        );
        // Reachable again during the retries: the request is served.
        let (response, log) = drive(vec![0, 0, 200], &["a", "b"]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(log.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_response_wins_when_every_account_refuses() {
        let (response, _) = drive(vec![429, 429], &["a", "b"]).await;
        assert_eq!(
            response.status(),
            429,
            "the client sees the upstream's own answer"
        );
    }

    #[test]
    fn delays_grow_by_the_backoff_factor() {
        let retry = RetryConfig {
            attempts: 5,
            delay: Duration::from_millis(250),
            backoff: 3.0,
        };
        let delays: Vec<_> = (0..4).map(|r| retry.delay_before(r).as_millis()).collect();
        assert_eq!(delays, [250, 750, 2250, 6750]);
        let huge = RetryConfig {
            attempts: 100,
            delay: Duration::from_secs(1),
            backoff: 10.0,
        };
        assert_eq!(huge.delay_before(90), Duration::from_secs(600));
    }
}

//! The `Failover` layer: tries the request on each candidate account in turn.
//!
//! Per account, a 5xx or a 529 is retried `attempts` times with a delay that starts at `delay`
//! and is multiplied by `backoff` each time (1 s, 2 s, 4 s by default); then the next candidate
//! gets it. A connection error is the upstream's, not an account's: it is retried the same way,
//! then answered with 502, without trying the other accounts (they would reach the same host). A rate limit, a refusal scoped to the request's model or beta, a
//! refused (banned) account or a definitive authentication failure moves to the next candidate
//! at once. A 401 on an OAuth account is retried once on the
//! same account (the `Auth` layer refreshes the token in between).
//!
//! Nothing is retried once the response has been handed on: a response is only replaced while
//! none of its bytes has gone to the client. When every candidate failed, the client gets the
//! last upstream response, or 502 (unreachable) / 504 (timeout) in Anthropic's envelope.
//!
//! ```
//! use std::time::Duration;
//! use claudeflare_tower::failover::{FailoverLayer, RetryConfig};
//! let layer = FailoverLayer::new(RetryConfig {
//!     attempts: 3,
//!     delay: Duration::from_secs(1),
//!     backoff: 2.0,
//! });
//! ```
//!
//! Requests need the [`Candidates`] extension (from `Select`) and a `Clone` body (from `Buffer`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use crate::account::AccountEntry;
use crate::auth::AuthError;
use crate::body::ProxyBody;
use crate::error::error_response;
use crate::ext::{Candidates, FailoverAttempts, SelectedAccount, Timing, UpstreamTime};
use crate::ratelimit::Outcome;
use crate::setting::Setting;
use crate::upstream::UpstreamError;
use crate::{BoxError, BoxFuture};

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

/// Retries and fails over. See the [module docs](self).
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
            inner,
            retry: self.retry.clone(),
        }
    }
}

/// The service of [`FailoverLayer`].
#[derive(Debug, Clone)]
pub struct Failover<S> {
    inner: S,
    retry: Setting<RetryConfig>,
}

impl<S, B> Service<Request<B>> for Failover<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Clone + Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    // A retry loop with backoff sleeps is a many-state machine; one allocation per request buys
    // a readable `async` body. The benchmark shows it does not matter next to the network hop.
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each attempt waits for readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let retry = RetryConfig::clone(&self.retry.current());
        Box::pin(async move { Ok(run(inner, &retry, req).await) })
    }
}

/// What to do after one attempt.
enum Verdict {
    /// Give this response to the client.
    Deliver(Response<ProxyBody>),
    /// Try the same account again, after this delay.
    Retry(Duration),
    /// Move on to the next account; keep this as the answer if there is none.
    NextAccount(Failure),
}

/// Why the last attempt failed.
enum Failure {
    Response(Response<ProxyBody>),
    Unreachable(BoxError),
    NeedsReauth(BoxError),
}

async fn run<S, B>(mut inner: S, retry: &RetryConfig, mut req: Request<B>) -> Response<ProxyBody>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
    S::Error: Into<BoxError>,
    B: Clone,
{
    // Taken out, so the attempts below do not copy the list along with the other extensions.
    let candidates = match req.extensions_mut().remove::<Candidates>() {
        Some(candidates) if !candidates.0.is_empty() => candidates.0,
        _ => {
            let message = "no account was selected for this request";
            return error_response(StatusCode::SERVICE_UNAVAILABLE, message);
        }
    };
    let (parts, body) = req.into_parts();
    let mut last = None;
    let mut timing = Timing::default();
    for (index, account) in candidates.iter().enumerate() {
        if index > 0 {
            tracing::warn!(
                from = candidates[index - 1].name(),
                to = account.name(),
                reason = last
                    .as_ref()
                    .map(Failure::describe)
                    .as_deref()
                    .unwrap_or(""),
                "failing over to the next account"
            );
        }
        let mut retries = 0;
        let mut refreshed = false;
        loop {
            let attempt = attempt_request(&parts, &body, account);
            let started = std::time::Instant::now();
            // The same service for every attempt, made ready before each call.
            let ready: Result<&mut S, BoxError> = inner.ready().await.map_err(Into::into);
            let result = match ready {
                Ok(service) => service.call(attempt).await.map_err(Into::into),
                Err(error) => Err(error),
            };
            timing.upstream += match &result {
                Ok(response) => response
                    .extensions()
                    .get::<UpstreamTime>()
                    .map_or_else(|| started.elapsed(), |t| t.0),
                Err(_) => started.elapsed(),
            };
            let next = judge(result, retry, retries, &mut refreshed);
            match next {
                Verdict::Deliver(response) => return finish(response, account, index, timing),
                Verdict::Retry(delay) => {
                    tracing::debug!(
                        account = account.name(),
                        retry = retries + 1,
                        ?delay,
                        "retrying"
                    );
                    tokio::time::sleep(delay).await;
                    timing.backoff += delay;
                    retries += 1;
                }
                Verdict::NextAccount(failure) => {
                    last = Some(failure);
                    break;
                }
            }
        }
    }
    let last_account = candidates.last().map(Arc::clone);
    let switches = candidates.len().saturating_sub(1);
    let response = match last {
        Some(Failure::Response(response)) => response,
        Some(Failure::NeedsReauth(error)) => {
            let message = format!("no account could serve the request: {error}");
            error_response(StatusCode::SERVICE_UNAVAILABLE, &message)
        }
        Some(Failure::Unreachable(error)) if error.is::<UpstreamError>() => {
            let message = format!("the upstream could not be reached: {error}");
            error_response(StatusCode::BAD_GATEWAY, &message)
        }
        // A token refresh that failed for now on every account, say.
        Some(Failure::Unreachable(error)) => {
            let message = format!("no account could serve the request: {error}");
            error_response(StatusCode::SERVICE_UNAVAILABLE, &message)
        }
        None => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no account could serve the request",
        ),
    };
    match last_account {
        Some(account) => finish(response, &account, switches, timing),
        None => response,
    }
}

/// Decide what one attempt's result means.
fn judge(
    result: Result<Response<ProxyBody>, BoxError>,
    retry: &RetryConfig,
    retries: u32,
    refreshed: &mut bool,
) -> Verdict {
    let backoff = |failure: Failure| {
        if retries < retry.attempts {
            Verdict::Retry(retry.delay_before(retries))
        } else {
            Verdict::NextAccount(failure)
        }
    };
    match result {
        Ok(response) => {
            let outcome = response
                .extensions()
                .get::<Outcome>()
                .copied()
                .unwrap_or_else(|| Outcome::from_status(response.status()));
            match outcome {
                Outcome::Success | Outcome::ClientError | Outcome::ExtraUsageRequired => {
                    Verdict::Deliver(response)
                }
                // The account (or this request on it) is refused: another account may serve it,
                // and if none does the client gets the upstream's own answer.
                Outcome::RateLimited { .. } | Outcome::ScopedRefusal | Outcome::Forbidden => {
                    Verdict::NextAccount(Failure::Response(response))
                }
                Outcome::AuthFailed if !*refreshed => {
                    *refreshed = true;
                    Verdict::Retry(Duration::ZERO)
                }
                Outcome::AuthFailed => Verdict::NextAccount(Failure::Response(response)),
                Outcome::Overloaded | Outcome::ServerError => backoff(Failure::Response(response)),
            }
        }
        Err(error) => match error.downcast_ref::<UpstreamError>() {
            Some(UpstreamError::Timeout(_)) => {
                let message = error.to_string();
                Verdict::Deliver(error_response(StatusCode::GATEWAY_TIMEOUT, &message))
            }
            // The one upstream host is unreachable whichever account asks: retry the request,
            // then answer 502, rather than multiply the wait by the number of accounts.
            Some(UpstreamError::Connect(_) | UpstreamError::Request(_)) => {
                if retries < retry.attempts {
                    Verdict::Retry(retry.delay_before(retries))
                } else {
                    let message = format!("the upstream could not be reached: {error}");
                    Verdict::Deliver(error_response(StatusCode::BAD_GATEWAY, &message))
                }
            }
            _ => match error.downcast_ref::<AuthError>() {
                Some(AuthError::NeedsReauth { .. }) => {
                    Verdict::NextAccount(Failure::NeedsReauth(error))
                }
                _ => backoff(Failure::Unreachable(error)),
            },
        },
    }
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Response(response) => format!("upstream answered {}", response.status()),
            Failure::Unreachable(error) | Failure::NeedsReauth(error) => error.to_string(),
        }
    }
}

fn attempt_request<B: Clone>(
    parts: &http::request::Parts,
    body: &B,
    account: &Arc<AccountEntry>,
) -> Request<B> {
    let mut req = Request::new(body.clone());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.extensions_mut()
        .insert(SelectedAccount(Arc::clone(account)));
    req
}

fn finish(
    mut response: Response<ProxyBody>,
    account: &Arc<AccountEntry>,
    switches: usize,
    timing: Timing,
) -> Response<ProxyBody> {
    let extensions = response.extensions_mut();
    extensions.insert(timing);
    extensions.insert(SelectedAccount(Arc::clone(account)));
    extensions.insert(FailoverAttempts(
        u32::try_from(switches).unwrap_or(u32::MAX),
    ));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use std::sync::Mutex;
    use tokio::time::Instant;

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
            let account = req
                .extensions()
                .get::<SelectedAccount>()
                .unwrap()
                .0
                .name()
                .to_owned();
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

    fn request(names: &[&str]) -> Request<()> {
        let accounts = names
            .iter()
            .map(|n| Arc::new(AccountEntry::new(Account::api_key(*n, "k"))))
            .collect();
        let mut req = Request::new(());
        req.extensions_mut().insert(Candidates(accounts));
        req
    }

    async fn drive(
        statuses: Vec<u16>,
        names: &[&str],
    ) -> (Response<ProxyBody>, Vec<(String, Duration)>) {
        let log: Log = Arc::default();
        let start = Instant::now();
        let service = FailoverLayer::default().layer(scripted(statuses, log.clone()));
        let response = service.oneshot(request(names)).await.unwrap();
        let log = log
            .lock()
            .unwrap()
            .iter()
            .map(|(a, t)| (a.clone(), *t - start))
            .collect();
        (response, log)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_back_off_1_2_4_seconds_then_fail_over() {
        let (response, log) = drive(vec![500, 529, 500, 503, 200], &["a", "b"]).await;
        assert_eq!(response.status(), 200);
        let expected = [("a", 0), ("a", 1), ("a", 3), ("a", 7), ("b", 7)];
        let got: Vec<_> = log.iter().map(|(a, t)| (a.as_str(), t.as_secs())).collect();
        assert_eq!(got, expected);
        assert_eq!(
            response
                .extensions()
                .get::<SelectedAccount>()
                .unwrap()
                .0
                .name(),
            "b"
        );
        assert_eq!(
            response.extensions().get::<FailoverAttempts>(),
            Some(&FailoverAttempts(1))
        );
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

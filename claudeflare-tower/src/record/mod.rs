//! Records requests.

mod body;
mod recorder;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

pub use body::RecordBody;
pub use recorder::{MemoryRecorder, NoopRecorder, Recorder};

use crate::BoxError;
use crate::account::AccountEntry;
use crate::context::RequestContext;
use crate::pool::AccountPool;
use crate::provider::{Billing, Usage};
use crate::provider::{Outcome, Provider, Providers};

/// Response header naming the account that served the request.
pub const ACCOUNT_HEADER: &str = "x-claudeflare-account";
/// The response header naming the provider of the account that served the request.
pub const PROVIDER_HEADER: &str = "x-claudeflare-provider";
/// Response header carrying claudeflare's id of the request.
pub const REQUEST_ID_HEADER: &str = "x-claudeflare-request-id";

// The same names parsed once: inserting by `&str` validates and lowercases the name on every
// response (about 600 instructions each, three per response; callgrind).
const ACCOUNT: HeaderName = HeaderName::from_static(ACCOUNT_HEADER);
const PROVIDER: HeaderName = HeaderName::from_static(PROVIDER_HEADER);
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// What happened to one client request. It serializes and reads back whole (the server keeps
/// records in a file while its database takes no writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestRecord {
    /// claudeflare's id (also in `x-claudeflare-request-id`).
    pub id: String,
    /// When the request arrived.
    pub timestamp: DateTime<Utc>,
    /// HTTP method.
    pub method: String,
    /// Path (and query).
    pub path: String,
    /// Id of the account that served it.
    pub account_id: Option<String>,
    /// Name of the account that served it.
    pub account: Option<String>,
    /// The provider of that account (`anthropic`, `anthropic-compatible`, …).
    #[serde(default)]
    pub provider: Option<String>,
    /// Status sent to the client; `None` when no response was produced.
    pub status: Option<u16>,
    /// 2xx/3xx and no error in the stream.
    pub success: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// From arrival to the end of the response body.
    pub response_time_ms: u64,
    /// From arrival to the first body byte sent.
    pub first_byte_ms: Option<u64>,
    /// Time the upstream took to send response headers, over all attempts.
    pub upstream_ms: Option<u64>,
    /// claudeflare's own share of the time to response headers (total minus upstream time and
    /// backoff waits), in microseconds.
    pub overhead_us: Option<u64>,
    /// Times the request moved to another account.
    pub failover_attempts: u32,
    /// The model that served the request, as the answer named it (for a server-side fallback,
    /// the fallback model); the one asked for when the answer named none.
    pub model: Option<String>,
    /// The model the client asked for.
    #[serde(default)]
    pub requested_model: Option<String>,
    /// Whether it was a streaming request.
    pub stream: bool,
    /// Who sent it, when the embedding service knows (the name of a client key, say; see
    /// [`RequestContext::set_client`]).
    pub client: Option<String>,
    /// Tokens.
    #[serde(flatten)]
    pub usage: Usage,
    /// Speed, region and attempts, as the answer reported them: what a cost needs beyond the
    /// tokens.
    #[serde(default)]
    pub billing: Billing,
}

impl RequestRecord {
    /// A record of a request with `id` that arrived at `timestamp`, before anything else is known
    /// about it.
    pub fn new(
        id: impl Into<String>,
        timestamp: DateTime<Utc>,
        method: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            timestamp,
            method: method.into(),
            path: path.into(),
            account_id: None,
            account: None,
            provider: None,
            status: None,
            success: false,
            error: None,
            response_time_ms: 0,
            first_byte_ms: None,
            upstream_ms: None,
            overhead_us: None,
            failover_attempts: 0,
            model: None,
            requested_model: None,
            stream: false,
            client: None,
            usage: Usage::default(),
            billing: Billing::default(),
        }
    }
}

/// Records requests.
///
/// The `Record` layer: one [`RequestRecord`] per client request, handed to a [`Recorder`] when
/// the response body ends, fails, or the client goes away.
///
/// ```
/// use std::sync::Arc;
/// use claudeflare_tower::{MemoryRecorder, RecordLayer};
/// use tower::ServiceBuilder;
/// # fn wrap<S>(inner: S) -> claudeflare_tower::Record<S> {
/// let recorder = Arc::new(MemoryRecorder::default());
/// ServiceBuilder::new().layer(RecordLayer::new(recorder)).service(inner)
/// # }
/// ```
///
/// Record is the outermost layer: it puts the [`RequestContext`] in the request, and reads it
/// back when the response headers arrive (the model asked for, account, attempts, timings,
/// outcome). Usage is read from the body as it passes, holding no byte back, by the provider's
/// [`UsageTap`](crate::provider::UsageTap), with the model that served (which a server-side
/// fallback makes another than the one asked for) and what a cost needs beyond the tokens
/// ([`Billing`]: speed, region, each attempt). The layer also gives every response
/// `x-claudeflare-request-id` and, when an account served it, `x-claudeflare-account`. If the
/// upstream breaks in the middle of a stream, the client gets a final error event instead of a
/// silent clean end.
///
/// An error announced inside a successful stream (a rate limit, say) is classified by the
/// provider like a status code, and applied to the account through the pool given with
/// [`RecordLayer::pool`], which persists it and counts it.
#[derive(Clone)]
pub struct RecordLayer<P = Providers> {
    recorder: Arc<dyn Recorder>,
    provider: P,
    pool: Option<AccountPool>,
    shutdown: Option<CancellationToken>,
}

impl<P> std::fmt::Debug for RecordLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer").finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Records of Anthropic answers go to `recorder`.
    pub fn new(recorder: Arc<dyn Recorder>) -> Self {
        Self::with_provider(Providers::new(), recorder)
    }
}

impl<P: Provider> RecordLayer<P> {
    /// Records go to `recorder`; `provider` reads the usage of its answers.
    pub fn with_provider(provider: P, recorder: Arc<dyn Recorder>) -> Self {
        Self {
            recorder,
            provider,
            pool: None,
            shutdown: None,
        }
    }

    /// Errors announced inside a stream (a rate limit, say) are applied to the account through
    /// `pool`, as a status code would be.
    pub fn pool(mut self, pool: AccountPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// When `shutdown` is cancelled (a server's grace period is over), streams still running
    /// end with an SSE `event: error` saying so, and their records say they were cut by the
    /// shutdown, with the tokens seen so far.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

impl<S, P: Clone> Layer<S> for RecordLayer<P> {
    type Service = Record<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            shared: Arc::new(Shared {
                recorder: Arc::clone(&self.recorder),
                provider: self.provider.clone(),
                pool: self.pool.clone(),
                shutdown: self.shutdown.clone(),
            }),
        }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone)]
pub struct Record<S, P = Providers> {
    inner: S,
    // One reference count per request for all of it: the body keeps it to its end.
    shared: Arc<Shared<P>>,
}

inner_accessors!(Record<S, P>);

pub(crate) struct Shared<P> {
    recorder: Arc<dyn Recorder>,
    provider: P,
    pool: Option<AccountPool>,
    shutdown: Option<CancellationToken>,
}

impl<S: std::fmt::Debug, P> std::fmt::Debug for Record<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Record<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
    P: Provider,
    ResBody: http_body::Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<RecordBody<ResBody, P>>;
    type Error = S::Error;
    type Future = RecordFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // Time-ordered (v7): the history's primary key grows at its end instead of at random.
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |pq| pq.as_str())
            .to_owned();
        let record = RequestRecord::new(id, Utc::now(), req.method().as_str(), path);
        let context = RequestContext::get_or_insert(&mut req);
        RecordFuture {
            inner: self.inner.call(req),
            guard: Some(Guard {
                record: Some(record),
                started: Instant::now(),
                shared: Arc::clone(&self.shared),
                context,
                account: None,
                request_id: HeaderValue::from_str(id).ok(),
                label: None,
            }),
        }
    }
}

pin_project! {
    /// Future of [`Record`].
    pub struct RecordFuture<F, P> {
        #[pin]
        inner: F,
        guard: Option<Guard<P>>,
    }
}

impl<F, B, E, P> Future for RecordFuture<F, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
    E: std::fmt::Display,
    P: Provider,
{
    type Output = Result<Response<RecordBody<B, P>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        // The guard is only taken here, when the future completes; futures are not polled again
        // after that.
        let Some(mut guard) = this.guard.take() else {
            panic!("record::RecordFuture polled after completion");
        };
        match result {
            Ok(mut response) => {
                guard.on_response(&mut response);
                let tap = guard
                    .shared
                    .provider
                    .tap(guard.account.as_deref(), response.headers());
                Poll::Ready(Ok(response.map(|body| RecordBody::new(body, guard, tap))))
            }
            Err(error) => {
                guard.finish(Some(error.to_string()));
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Owns the unfinished record; whoever drops it unfinished (the client went away) records that.
pub(crate) struct Guard<P> {
    record: Option<RequestRecord>,
    started: Instant,
    shared: Arc<Shared<P>>,
    context: RequestContext,
    account: Option<Arc<AccountEntry>>,
    /// For the response's request-id header.
    request_id: Option<HeaderValue>,
    /// What the upstream's answer was, when it is one of those that look alike (a ban, a scoped
    /// refusal, a billing refusal): put before the error, so the history tells them apart.
    label: Option<&'static str>,
}

impl<P> Guard<P> {
    fn on_response<B>(&mut self, response: &mut Response<B>) {
        let context = self.context.take();
        self.label = context.outcome.and_then(|o| o.label());
        let status = response.status();
        let to_headers = self.started.elapsed();
        if let Some(record) = &mut self.record {
            if context.account.is_some() {
                record.upstream_ms =
                    Some(u64::try_from(context.upstream.as_millis()).unwrap_or(u64::MAX));
                let own = to_headers.saturating_sub(context.upstream + context.backoff);
                record.overhead_us = Some(u64::try_from(own.as_micros()).unwrap_or(u64::MAX));
            }
            record.status = Some(status.as_u16());
            // What the answer meant is the provider's word; an answer claudeflare made itself
            // has none, and its status says.
            record.success = match context.outcome {
                Some(outcome) => outcome == Outcome::Success,
                None => !status.is_client_error() && !status.is_server_error(),
            };
            record.failover_attempts = context.switches;
            record.requested_model = context.model;
            record.stream = context.stream;
            record.client = context.client.as_deref().map(str::to_owned);
            if let Some(account) = &context.account {
                record.account_id = Some(account.id().to_owned());
                record.account = Some(account.name().to_owned());
                record.provider = Some(account.provider_name());
            }
        }
        let headers = response.headers_mut();
        if let Some(id) = self.request_id.take() {
            headers.insert(REQUEST_ID, id);
        }
        if let Some(account) = &context.account {
            if let Some(name) = account.name_header() {
                headers.insert(ACCOUNT, name.clone());
            }
            if let Some(provider) = account.route().backend.header_value() {
                headers.insert(PROVIDER, provider);
            }
        }
        self.account = context.account;
    }

    fn first_byte(&mut self) {
        if let Some(record) = &mut self.record {
            if record.first_byte_ms.is_none() {
                record.first_byte_ms = Some(elapsed_ms(self.started));
            }
        }
    }

    fn record_mut(&mut self) -> Option<&mut RequestRecord> {
        self.record.as_mut()
    }

    /// Hand the record over, with `error` if the request failed.
    fn finish(&mut self, error: Option<String>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        record.response_time_ms = elapsed_ms(self.started);
        if record.model.is_none() {
            record.model.clone_from(&record.requested_model);
        }
        let error = match (self.label, error) {
            (Some(label), Some(error)) => Some(format!("{label}: {error}")),
            (Some(label), None) => Some(label.to_owned()),
            (None, error) => error,
        };
        if let Some(error) = error {
            record.success = false;
            record.error = Some(error);
        }
        self.shared.recorder.record(record);
    }
}

impl<P> Drop for Guard<P> {
    fn drop(&mut self) {
        if self.record.is_some() {
            let stage = if self.record.as_ref().is_some_and(|r| r.status.is_some()) {
                "client disconnected before the response ended"
            } else {
                "client disconnected before the response started"
            };
            self.finish(Some(stage.to_owned()));
        }
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

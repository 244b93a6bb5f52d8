//! The `Record` layer: one [`RequestRecord`] per client request, handed to a [`Recorder`] when
//! the response body ends, fails, or the client goes away.
//!
//! ```
//! use std::sync::Arc;
//! use claudeflare_tower::record::{MemoryRecorder, RecordLayer};
//! use tower::ServiceBuilder;
//! # fn wrap<S>(inner: S) -> claudeflare_tower::record::Record<S> {
//! let recorder = Arc::new(MemoryRecorder::default());
//! ServiceBuilder::new().layer(RecordLayer::new(recorder)).service(inner)
//! # }
//! ```
//!
//! Usage is read from the SSE stream or JSON body as it passes, holding no byte back. The
//! layer also gives every response `x-claudeflare-request-id` and, when an account served it,
//! `x-claudeflare-account`. If the upstream breaks in the middle of an SSE stream, the client
//! gets a final `event: error` frame instead of a silent clean end.

mod body;
mod recorder;
pub mod usage;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::{HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

pub use body::RecordBody;
pub use recorder::{MemoryRecorder, NoopRecorder, Recorder};
pub use usage::Usage;

use crate::BoxError;
use crate::account::AccountEntry;
use crate::ext::{FailoverAttempts, RequestMeta, SelectedAccount, Timing};
use crate::ratelimit::Outcome;

/// Response header naming the account that served the request.
pub const ACCOUNT_HEADER: &str = "x-claudeflare-account";
/// Response header carrying claudeflare's id of the request.
pub const REQUEST_ID_HEADER: &str = "x-claudeflare-request-id";

/// What happened to one client request.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Model requested (or reported by the upstream).
    pub model: Option<String>,
    /// Whether it was a streaming request.
    pub stream: bool,
    /// Tokens.
    #[serde(flatten)]
    pub usage: Usage,
}

/// Records requests. See the [module docs](self).
#[derive(Clone)]
pub struct RecordLayer {
    recorder: Arc<dyn Recorder>,
    shutdown: Option<CancellationToken>,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer").finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Records go to `recorder`.
    pub fn new(recorder: Arc<dyn Recorder>) -> Self {
        Self {
            recorder,
            shutdown: None,
        }
    }

    /// When `shutdown` is cancelled (a server's grace period is over), streams still running
    /// end with an SSE `event: error` saying so, and their records say they were cut by the
    /// shutdown, with the tokens seen so far.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            recorder: Arc::clone(&self.recorder),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    recorder: Arc<dyn Recorder>,
    shutdown: Option<CancellationToken>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Record<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Record<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
    ResBody: http_body::Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<RecordBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Time-ordered (v7): the history's primary key grows at its end instead of at random.
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = &*uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
        let record = RequestRecord {
            id: id.to_owned(),
            timestamp: Utc::now(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned()),
            account_id: None,
            account: None,
            status: None,
            success: false,
            error: None,
            response_time_ms: 0,
            first_byte_ms: None,
            upstream_ms: None,
            overhead_us: None,
            failover_attempts: 0,
            model: None,
            stream: false,
            usage: Usage::default(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(Guard {
                record: Some(record),
                started: Instant::now(),
                recorder: Arc::clone(&self.recorder),
                account: None,
                request_id: HeaderValue::from_str(id).ok(),
                label: None,
            }),
            shutdown: self.shutdown.clone(),
        }
    }
}

pin_project! {
    /// Future of [`Record`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
        shutdown: Option<CancellationToken>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
    E: std::fmt::Display,
{
    type Output = Result<Response<RecordBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        // The guard is only taken here, when the future completes; futures are not polled again
        // after that.
        let Some(mut guard) = this.guard.take() else {
            panic!("record::ResponseFuture polled after completion");
        };
        match result {
            Ok(mut response) => {
                guard.on_response(&mut response);
                let (is_sse, is_json) = Guard::content_kind(&response);
                Poll::Ready(Ok(response.map(|body| {
                    RecordBody::new(body, guard, is_sse, is_json, this.shutdown.take())
                })))
            }
            Err(error) => {
                guard.finish(Some(error.to_string()));
                Poll::Ready(Err(error))
            }
        }
    }
}

/// Owns the unfinished record; whoever drops it unfinished (the client went away) records that.
pub(crate) struct Guard {
    record: Option<RequestRecord>,
    started: Instant,
    recorder: Arc<dyn Recorder>,
    account: Option<Arc<AccountEntry>>,
    /// For the response's request-id header.
    request_id: Option<HeaderValue>,
    /// What the upstream's answer was, when it is one of those that look alike (a ban, a scoped
    /// refusal, a billing refusal): put before the error, so the history tells them apart.
    label: Option<&'static str>,
}

impl Guard {
    fn on_response<B>(&mut self, response: &mut Response<B>) {
        let extensions = response.extensions_mut();
        // Taken, not copied: it was there for this layer only.
        let meta = extensions.remove::<RequestMeta>().unwrap_or_default();
        let account = extensions
            .get::<SelectedAccount>()
            .map(|a| Arc::clone(&a.0));
        let attempts = extensions
            .get::<FailoverAttempts>()
            .copied()
            .unwrap_or_default();
        let timing = extensions.get::<Timing>().copied();
        self.label = extensions.get::<Outcome>().and_then(|o| o.label());
        let status = response.status();
        let to_headers = self.started.elapsed();
        if let Some(record) = &mut self.record {
            if let Some(timing) = timing {
                record.upstream_ms =
                    Some(u64::try_from(timing.upstream.as_millis()).unwrap_or(u64::MAX));
                let own = to_headers.saturating_sub(timing.upstream + timing.backoff);
                record.overhead_us = Some(u64::try_from(own.as_micros()).unwrap_or(u64::MAX));
            }
            record.status = Some(status.as_u16());
            record.success = !status.is_client_error() && !status.is_server_error();
            record.failover_attempts = attempts.0;
            record.model = meta.model;
            record.stream = meta.stream;
            if let Some(account) = &account {
                record.account_id = Some(account.id().to_owned());
                record.account = Some(account.name().to_owned());
            }
        }
        let headers = response.headers_mut();
        if let Some(id) = self.request_id.take() {
            headers.insert(REQUEST_ID_HEADER, id);
        }
        if let Some(name) = account.as_ref().and_then(|a| a.name_header()) {
            headers.insert(ACCOUNT_HEADER, name.clone());
        }
        self.account = account;
    }

    /// Whether the body is an SSE stream, and whether it is JSON.
    fn content_kind<B>(response: &Response<B>) -> (bool, bool) {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        (
            content_type.starts_with("text/event-stream"),
            content_type.starts_with("application/json"),
        )
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
        let error = match (self.label, error) {
            (Some(label), Some(error)) => Some(format!("{label}: {error}")),
            (Some(label), None) => Some(label.to_owned()),
            (None, error) => error,
        };
        if let Some(error) = error {
            record.success = false;
            record.error = Some(error);
        }
        self.recorder.record(record);
    }
}

impl Drop for Guard {
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

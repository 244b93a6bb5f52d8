//! The `Intake` layer: reads the request body once into memory, so `Failover` can send it again,
//! and notes its model and stream flag in the [`RequestContext`] for `Record`.
//!
//! A body not read whole within the read timeout (60 s by default) is refused with 408, so a
//! client that sends part of a body and stalls holds no memory past it.
//!
//! A body over the limit is refused with 413 in Anthropic's envelope before anything is sent
//! upstream (at once when `content-length` says so), and so is, with 400, a path that could
//! leave `/v1/` (a dot-segment, raw or percent-encoded).
//!
//! ```
//! use claudeflare_tower::intake::IntakeLayer;
//! let layer = IntakeLayer::new(32 * 1024 * 1024);
//! ```

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::util::Oneshot;
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::ProxyBody;
use crate::context::RequestContext;
use crate::error::error_response;
use crate::setting::Setting;

/// Anthropic's own request size limit, the default.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// How long a whole request body may take to arrive, by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Buffers request bodies up to a limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct IntakeLayer {
    limit: Setting<usize>,
    read_timeout: Setting<Duration>,
}

impl IntakeLayer {
    /// Bodies up to `limit` bytes; a [`Setting`] lets it change while serving.
    pub fn new(limit: impl Into<Setting<usize>>) -> Self {
        Self {
            limit: limit.into(),
            read_timeout: Setting::new(DEFAULT_READ_TIMEOUT),
        }
    }

    /// How long a whole body may take to arrive ([`DEFAULT_READ_TIMEOUT`] unless set).
    pub fn read_timeout(mut self, timeout: impl Into<Setting<Duration>>) -> Self {
        self.read_timeout = timeout.into();
        self
    }
}

impl Default for IntakeLayer {
    fn default() -> Self {
        Self::new(DEFAULT_BODY_LIMIT)
    }
}

impl<S> Layer<S> for IntakeLayer {
    type Service = Intake<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Intake {
            inner,
            limit: self.limit.clone(),
            read_timeout: self.read_timeout.clone(),
        }
    }
}

/// The service of [`IntakeLayer`].
#[derive(Debug, Clone)]
pub struct Intake<S> {
    inner: S,
    limit: Setting<usize>,
    read_timeout: Setting<Duration>,
}

/// The request's top-level `model` and `stream`, everything else (the conversation) skipped by
/// serde_json without being kept. A borrowed struct read this way was measured faster than the
/// hand-written skimmer it replaced: 174 µs against 215 µs for a 500 KB request, 3.1 against
/// 3.4 µs for a 5 KB one (Criterion, `request_json` bench; BENCHMARKS.md).
fn read_meta(body: &[u8]) -> (Option<String>, bool) {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
        stream: Option<bool>,
    }
    match serde_json::from_slice::<Wire<'_>>(body) {
        Ok(wire) => (
            wire.model.map(Cow::into_owned),
            wire.stream.unwrap_or(false),
        ),
        Err(_) => (None, false),
    }
}

impl<S, B> Service<Request<B>> for Intake<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ProxyBody>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is checked on the inner service once the body is in.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Err(refused) = crate::path::check(req.uri().path()) {
            let response = error_response(StatusCode::BAD_REQUEST, refused.message());
            return ResponseFuture::answer(response);
        }
        let limit = *self.limit.current();
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return ResponseFuture::answer(too_large(limit));
        }
        let context = RequestContext::get_or_insert(&mut req);
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Reading {
                collect: Limited::new(body, limit).collect(),
                deadline: tokio::time::sleep(*self.read_timeout.current()),
                parts: Some(parts),
                inner: Some(self.inner.clone()),
                context,
                limit,
            },
        }
    }
}

pin_project! {
    /// Future of [`Intake`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        /// Reading the body.
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            #[pin]
            deadline: tokio::time::Sleep,
            parts: Option<http::request::Parts>,
            inner: Option<S>,
            context: RequestContext,
            limit: usize,
        },
        /// Handed on.
        Calling { #[pin] future: Oneshot<S, Request<Full<Bytes>>> },
        /// Answered here.
        Answer { response: Option<Response<ProxyBody>> },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn answer(response: Response<ProxyBody>) -> Self {
        Self {
            state: State::Answer {
                response: Some(response),
            },
        }
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ProxyBody>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Answer { response } => match response.take() {
                    Some(response) => return Poll::Ready(Ok(response)),
                    None => panic!("intake::ResponseFuture polled after completion"),
                },
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Reading {
                    collect,
                    deadline,
                    parts,
                    inner,
                    context,
                    limit,
                } => {
                    let collected = match collect.poll(cx) {
                        Poll::Ready(collected) => collected,
                        Poll::Pending => {
                            std::task::ready!(deadline.poll(cx));
                            return Poll::Ready(Ok(error_response(
                                StatusCode::REQUEST_TIMEOUT,
                                "the request body did not arrive in time",
                            )));
                        }
                    };
                    let bytes = match collected {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                            return Poll::Ready(Ok(too_large(*limit)));
                        }
                        Err(error) => {
                            let message = format!("could not read the request body: {error}");
                            return Poll::Ready(Ok(error_response(
                                StatusCode::BAD_REQUEST,
                                &message,
                            )));
                        }
                    };
                    // Taken once: the state moves on to `Calling` right below.
                    let (Some(parts), Some(inner)) = (parts.take(), inner.take()) else {
                        panic!("intake::ResponseFuture polled after completion");
                    };
                    let (model, stream) = read_meta(&bytes);
                    context.set_request(model, stream);
                    let req = Request::from_parts(parts, Full::new(bytes));
                    State::Calling {
                        future: Oneshot::new(inner, req),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

fn too_large(limit: usize) -> Response<ProxyBody> {
    let message = format!("request body is larger than the limit of {limit} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn meta_is_read_from_json() {
        let meta =
            read_meta(br#"{"model":"claude-opus-4-1","max_tokens":5,"stream":true,"messages":[]}"#);
        assert_eq!(meta, (Some("claude-opus-4-1".into()), true));
        assert_eq!(read_meta(b""), (None, false));
        assert_eq!(read_meta(b"not json"), (None, false));
    }

    fn post(body: &'static str) -> Request<Full<Bytes>> {
        Request::post("/v1/messages")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    #[tokio::test]
    async fn oversized_bodies_get_413() {
        let echo = tower::service_fn(|req: Request<Full<Bytes>>| async move {
            let bytes = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Response::new(ProxyBody::full(bytes)))
        });
        let service = IntakeLayer::new(10).layer(echo);
        let response = service.clone().oneshot(post("0123456789")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "0123456789"
        );
        let response = service.clone().oneshot(post("0123456789a")).await.unwrap();
        assert_eq!(response.status(), 413);
        let declared = Request::post("/v1/messages")
            .header("content-length", "999")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            service.clone().oneshot(declared).await.unwrap().status(),
            413
        );
        // A path that could leave /v1/ is refused before anything is read.
        let escaping = Request::get("/v1/%2e%2e/api/oauth/usage")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(service.oneshot(escaping).await.unwrap().status(), 400);
    }
}

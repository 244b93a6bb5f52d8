//! Buffers request bodies up to a limit.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::util::Oneshot;
use tower::{Layer, Service};

use crate::BoxError;
#[cfg(test)]
use crate::body::ProxyBody;
use crate::context::RequestContext;
use crate::error::{error_response, final_for_client};
use crate::setting::Setting;

/// Anthropic's own request size limit, the default.
pub const DEFAULT_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// How long a whole request body may take to arrive, by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The bytes of request bodies buffered at once, across connections, by default.
pub const DEFAULT_BUFFERED_LIMIT: usize = 256 * 1024 * 1024;

/// The bytes all request bodies being read or sent upstream may take at once, shared by every
/// clone (give one to each [`IntakeLayer`] or `Balancer` that should share it).
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    used: AtomicUsize,
    limit: Setting<usize>,
}

impl BodyBudget {
    /// A budget of `limit` bytes; a [`Setting`] lets it change while serving.
    pub fn new(limit: impl Into<Setting<usize>>) -> Self {
        Self(Arc::new(BudgetInner {
            used: AtomicUsize::new(0),
            limit: limit.into(),
        }))
    }

    /// The bytes taken now.
    pub fn in_use(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Take `bytes` for `reservation`, if they fit.
    fn take(&self, reservation: &mut usize, bytes: usize) -> bool {
        let limit = *self.0.limit.current();
        let fits = self
            .0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok();
        if fits {
            *reservation += bytes;
        }
        fits
    }
}

impl Default for BodyBudget {
    fn default() -> Self {
        Self::new(DEFAULT_BUFFERED_LIMIT)
    }
}

/// Bytes taken from a [`BodyBudget`] for one request, given back when its future is dropped.
struct Reservation {
    budget: BodyBudget,
    bytes: usize,
}

impl Reservation {
    fn take(&mut self, bytes: usize) -> bool {
        self.budget.take(&mut self.bytes, bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.0.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// Buffers request bodies up to a limit.
///
/// The `Intake` layer: reads the request body once into memory, so `Failover` can send it again,
/// and notes its model and stream flag in the [`RequestContext`] for `Record`.
///
/// A body not read whole within the read timeout (60 s by default) is refused with 408, so a
/// client that sends part of a body and stalls holds no memory past it. The bytes buffered for
/// bodies at once, across every connection sharing a [`BodyBudget`], are capped too (256 MiB by
/// default): a body whose next bytes would go over it is refused with 503 at once (with
/// `retry-after`), and its bytes are given back.
///
/// A body over the limit is refused with 413 in Anthropic's envelope before anything is sent
/// upstream (at once when `content-length` says so), and so is, with 400, a path that could
/// leave `/v1/` (a dot-segment, raw or percent-encoded).
///
/// ```
/// use claudeflare_tower::IntakeLayer;
/// let layer = IntakeLayer::new(32 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct IntakeLayer {
    limit: Setting<usize>,
    read_timeout: Setting<Duration>,
    budget: BodyBudget,
}

impl IntakeLayer {
    /// Bodies up to `limit` bytes; a [`Setting`] lets it change while serving.
    pub fn new(limit: impl Into<Setting<usize>>) -> Self {
        Self {
            limit: limit.into(),
            read_timeout: Setting::new(DEFAULT_READ_TIMEOUT),
            budget: BodyBudget::default(),
        }
    }

    /// How long a whole body may take to arrive ([`DEFAULT_READ_TIMEOUT`] unless set).
    pub fn read_timeout(mut self, timeout: impl Into<Setting<Duration>>) -> Self {
        self.read_timeout = timeout.into();
        self
    }

    /// The budget of buffered bytes this layer takes from (one of
    /// [`DEFAULT_BUFFERED_LIMIT`] of its own, shared by its clones, unless set).
    pub fn budget(mut self, budget: BodyBudget) -> Self {
        self.budget = budget;
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
            budget: self.budget.clone(),
        }
    }
}

/// The service of [`IntakeLayer`].
#[derive(Debug, Clone)]
pub struct Intake<S> {
    inner: S,
    limit: Setting<usize>,
    read_timeout: Setting<Duration>,
    budget: BodyBudget,
}

inner_accessors!(Intake<S>);

/// The request's top-level `model` and `stream`, everything else (the conversation) skipped by
/// serde_json without being kept. A borrowed struct read this way was measured faster than the
/// hand-written skimmer it replaced: 174 µs against 215 µs for a 500 KB request, 3.1 against
/// 3.4 µs for a 5 KB one (Criterion, `request_json` bench; docs/benchmarks-history.md).
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

impl<S, B, ResBody> Service<Request<B>> for Intake<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = IntakeFuture<S, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is checked on the inner service once the body is in.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Err(refused) = crate::path::check(req.uri().path()) {
            let response = error_response(StatusCode::BAD_REQUEST, refused.message());
            return IntakeFuture::answer(response);
        }
        let limit = *self.limit.current();
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return IntakeFuture::answer(too_large(limit));
        }
        let context = RequestContext::get_or_insert(&mut req);
        let (parts, body) = req.into_parts();
        IntakeFuture {
            reservation: Some(Reservation {
                budget: self.budget.clone(),
                bytes: 0,
            }),
            state: State::Reading {
                body,
                buffer: Buffer {
                    first: None,
                    rest: BytesMut::new(),
                    // At most `limit`, checked above.
                    declared: declared.map_or(0, |len| len as usize),
                },
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
    pub struct IntakeFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        // Dropped with the future: the bytes taken for the body are given back once the
        // response has been handed on.
        reservation: Option<Reservation>,
        #[pin]
        state: State<S, B>,
    }
}

/// A body as it arrives: a body in one frame (the usual case) is kept as it came, without a
/// copy or an allocation; more frames are gathered in `rest`, allocated once for the declared
/// length.
struct Buffer {
    first: Option<Bytes>,
    rest: BytesMut,
    declared: usize,
}

impl Buffer {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.len()
    }

    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(data);
            return;
        }
        if let Some(first) = self.first.take() {
            self.rest
                .reserve(self.declared.max(first.len() + data.len()));
            self.rest.extend_from_slice(&first);
        }
        self.rest.extend_from_slice(&data);
    }

    fn into_bytes(self) -> Bytes {
        match self.first {
            Some(first) => first,
            None => self.rest.freeze(),
        }
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
            body: B,
            buffer: Buffer,
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
        Answer { response: Option<S::Response> },
    }
}

impl<S, B> IntakeFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn answer(response: S::Response) -> Self {
        Self {
            reservation: None,
            state: State::Answer {
                response: Some(response),
            },
        }
    }
}

impl<S, B, ResBody> Future for IntakeFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Answer { response } => match response.take() {
                    Some(response) => return Poll::Ready(Ok(response)),
                    None => panic!("intake::IntakeFuture polled after completion"),
                },
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Reading {
                    mut body,
                    buffer,
                    deadline,
                    parts,
                    inner,
                    context,
                    limit,
                } => {
                    loop {
                        let frame = match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => frame,
                            Poll::Ready(None) => break,
                            Poll::Ready(Some(Err(error))) => {
                                let error: BoxError = error.into();
                                let message = format!("could not read the request body: {error}");
                                return Poll::Ready(Ok(error_response(
                                    StatusCode::BAD_REQUEST,
                                    &message,
                                )));
                            }
                            Poll::Pending => {
                                std::task::ready!(deadline.poll(cx));
                                return Poll::Ready(Ok(error_response(
                                    StatusCode::REQUEST_TIMEOUT,
                                    "the request body did not arrive in time",
                                )));
                            }
                        };
                        let Ok(data) = frame.into_data() else {
                            // Trailers: nothing to keep.
                            continue;
                        };
                        let len = buffer.len() + data.len();
                        if len > *limit {
                            return Poll::Ready(Ok(too_large(*limit)));
                        }
                        // Set in `call` for every future that reads a body.
                        let reservation = this
                            .reservation
                            .as_mut()
                            .expect("a reading intake holds a reservation");
                        if !reservation.take(data.len()) {
                            return Poll::Ready(Ok(too_busy()));
                        }
                        buffer.push(data);
                    }
                    let bytes = std::mem::replace(
                        buffer,
                        Buffer {
                            first: None,
                            rest: BytesMut::new(),
                            declared: 0,
                        },
                    )
                    .into_bytes();
                    // Taken once: the state moves on to `Calling` right below.
                    let (Some(parts), Some(inner)) = (parts.take(), inner.take()) else {
                        panic!("intake::IntakeFuture polled after completion");
                    };
                    let (model, stream) = read_meta(&bytes);
                    if let Some(refusal) = context.refuse_model(model.as_deref()) {
                        return Poll::Ready(Ok(final_for_client(error_response(
                            StatusCode::BAD_REQUEST,
                            &refusal,
                        ))));
                    }
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

/// The budget of buffered bytes is spent: try again in a moment.
fn too_busy<ResBody: From<Bytes>>() -> Response<ResBody> {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many request bodies are being received at once (max_buffered_body_bytes); try again shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

fn too_large<ResBody: From<Bytes>>(limit: usize) -> Response<ResBody> {
    let message = format!("request body is larger than the limit of {limit} bytes");
    error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body of `frames` chunks of ten bytes, length unknown.
    struct Chunks {
        frames: usize,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            if self.frames == 0 {
                return Poll::Ready(None);
            }
            self.frames -= 1;
            let data = Bytes::from_static(&[b'y'; 10]);
            Poll::Ready(Some(Ok(http_body::Frame::data(data))))
        }
    }
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

    #[tokio::test]
    async fn bodies_over_the_shared_budget_get_503_at_once_and_the_bytes_come_back() {
        // The inner service holds each request until told: its body stays buffered meanwhile.
        let (release, released) = tokio::sync::watch::channel(false);
        let hold = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let mut released = released.clone();
            async move {
                released.wait_for(|go| *go).await.unwrap();
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::new(ProxyBody::full(bytes)))
            }
        });
        let budget = BodyBudget::new(100);
        let layer = IntakeLayer::new(1000).budget(budget.clone());
        // Two services (two HTTP threads, say) share the budget.
        let (one, two) = (layer.layer(hold.clone()), layer.layer(hold));

        let declared = |len: usize| {
            Request::post("/v1/messages")
                .header("content-length", len.to_string())
                .body(Full::new(Bytes::from(vec![b'x'; len])))
                .unwrap()
        };
        let first = tokio::spawn(one.clone().oneshot(declared(60)));
        tokio::task::yield_now().await;
        while budget.in_use() < 60 {
            tokio::task::yield_now().await;
        }
        let refused = two.clone().oneshot(declared(50)).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(budget.in_use(), 60, "a refused body takes nothing");

        // A body of unknown length is counted as it arrives, and refused once it would not fit.
        let chunked = Request::post("/v1/messages")
            .body(Chunks { frames: 5 })
            .unwrap();
        let service = IntakeLayer::new(1000)
            .budget(budget.clone())
            .layer(tower::service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(ProxyBody::full(Bytes::new())))
            }));
        assert_eq!(service.oneshot(chunked).await.unwrap().status(), 503);
        assert_eq!(budget.in_use(), 60);

        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        assert_eq!(budget.in_use(), 0, "the bytes come back with the answer");
        assert_eq!(two.oneshot(declared(50)).await.unwrap().status(), 200);
        assert_eq!(budget.in_use(), 0);
    }
}

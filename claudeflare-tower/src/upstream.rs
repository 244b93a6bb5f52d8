//! The `Upstream` service: sends the request where the [`Provider`] says, over a pooled
//! hyper-util client, and streams the response back untouched.
//!
//! Connect and first-byte (response header) timeouts apply; there is deliberately no total
//! timeout, which would cut long streams. Hop-by-hop headers are dropped both ways, and so is
//! `accept-encoding`, so the response arrives uncompressed for `Record` to read its usage.
//!
//! ```no_run
//! use claudeflare_tower::provider::Anthropic;
//! use claudeflare_tower::upstream::Upstream;
//! let upstream = Upstream::new(Anthropic::new());
//! ```
//!
//! HTTPS comes from the `rustls-ring` feature (on by default: rustls with ring and the webpki
//! roots). Without it, or to use another TLS stack, proxy settings or connector, build a
//! hyper-util client yourself and pass it to [`Upstream::from_client`]:
//!
//! ```
//! use claudeflare_tower::provider::Anthropic;
//! use claudeflare_tower::upstream::Upstream;
//! use hyper_util::client::legacy::{Client, connect::HttpConnector};
//! use hyper_util::rt::TokioExecutor;
//! let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
//! let upstream = Upstream::from_client(Anthropic::new(), client);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::ProxyBody;
use crate::context::RequestContext;
use crate::provider::{Anthropic, InvalidUpstream, Provider};

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the response headers; Anthropic's own SDKs wait 10 minutes for a
/// non-streaming answer.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an upstream connection may stay idle in the pool before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connector of [`Upstream::new`]: HTTPS through rustls (feature `rustls-ring`) or plain
/// HTTP.
#[cfg(feature = "rustls-ring")]
pub type DefaultConnector = hyper_rustls::HttpsConnector<HttpConnector>;
/// The connector of [`Upstream::new`]: HTTPS through rustls (feature `rustls-ring`) or plain
/// HTTP.
#[cfg(not(feature = "rustls-ring"))]
pub type DefaultConnector = HttpConnector;

/// A pooled keep-alive client with `connect_timeout`.
fn pooled_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Client<DefaultConnector, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    #[cfg(feature = "rustls-ring")]
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        // ring supports the default protocol versions (TLS 1.2 and 1.3), so this cannot fail.
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    #[cfg(not(feature = "rustls-ring"))]
    let connector = http;
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        // Without a timer the pool never looks at idle connections: they would stay open past
        // the idle timeout until the upstream closed them.
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("could not connect to the upstream: {0}")]
    Connect(crate::BoxError),
    /// The connection failed before a response arrived.
    #[error("the upstream request failed: {0}")]
    Request(crate::BoxError),
    /// No response headers within the first-byte timeout.
    #[error("the upstream did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The request's path does not make a valid upstream URL.
    #[error(transparent)]
    InvalidUri(#[from] InvalidUpstream),
}

/// Sends requests to the upstream. Cheap to clone; clones share the connection pool.
#[derive(Debug)]
pub struct Upstream<P = Anthropic, C = DefaultConnector> {
    // One reference count for a clone, not one per part of the client: the stack is cloned for
    // every request, from every thread.
    shared: Arc<Shared<P, C>>,
    first_byte_timeout: Duration,
}

impl<P, C> Clone for Upstream<P, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            first_byte_timeout: self.first_byte_timeout,
        }
    }
}

#[derive(Debug)]
struct Shared<P, C> {
    client: Client<C, Full<Bytes>>,
    provider: P,
}

impl<P: Provider> Upstream<P> {
    /// Requests go where `provider` says, with the default timeouts.
    pub fn new(provider: P) -> Self {
        Self::with_timeouts(
            provider,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_FIRST_BYTE_TIMEOUT,
        )
    }

    /// Requests go where `provider` says, with these timeouts.
    pub fn with_timeouts(provider: P, connect: Duration, first_byte: Duration) -> Self {
        let client = pooled_client(connect, POOL_IDLE_TIMEOUT);
        Self::from_client(provider, client).first_byte_timeout(first_byte)
    }
}

impl<P: Provider, C> Upstream<P, C> {
    /// Requests go where `provider` says, over `client`: any hyper-util client (your TLS stack,
    /// proxy or connector), waiting [`DEFAULT_FIRST_BYTE_TIMEOUT`] for response headers. The
    /// connect timeout is the connector's.
    pub fn from_client(provider: P, client: Client<C, Full<Bytes>>) -> Self {
        Self {
            shared: Arc::new(Shared { client, provider }),
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }

    /// Wait this long for the response headers.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout;
        self
    }
}

/// Headers that belong to one connection, not to the request. A `static`: a `const` array would
/// be built (and dropped) at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Whether `name` is one of claudeflare's own headers (`x-claudeflare-account`, …), which a client
/// must not be able to send upstream in claudeflare's name.
fn is_own(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-claudeflare-")
}

/// Remove claudeflare's own headers a client sent.
fn strip_own(headers: &mut HeaderMap) {
    // Most requests carry none: look once before collecting anything.
    if !headers.keys().any(is_own) {
        return;
    }
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_own(name))
        .cloned()
        .collect();
    for name in own {
        headers.remove(name);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of them: look once before removing anything.
    let any = headers
        .keys()
        .any(|name| *name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(name));
    if !any {
        return;
    }
    // Headers the `connection` header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

impl<P, C> Service<Request<Full<Bytes>>> for Upstream<P, C>
where
    P: Provider,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = UpstreamError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready; it queues on its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let shared = &*self.shared;
        let uri = match shared.provider.upstream_uri(req.uri()) {
            Ok(uri) => uri,
            Err(error) => {
                return ResponseFuture {
                    kind: Kind::Failed {
                        error: Some(error.into()),
                    },
                };
            }
        };
        let context = RequestContext::of(&req).cloned();
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_own(headers);
        headers.remove(header::HOST);
        headers.remove(header::ACCEPT_ENCODING);
        ResponseFuture {
            kind: Kind::Pending {
                future: tokio::time::timeout(self.first_byte_timeout, shared.client.request(req)),
                timeout: self.first_byte_timeout,
                started: std::time::Instant::now(),
                context,
            },
        }
    }
}

pin_project! {
    /// Future of [`Upstream`].
    pub struct ResponseFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Pending {
            #[pin]
            future: tokio::time::Timeout<hyper_util::client::legacy::ResponseFuture>,
            timeout: Duration,
            started: std::time::Instant,
            context: Option<RequestContext>,
        },
        Failed { error: Option<UpstreamError> },
    }
}

/// The causes of a client error ("client error (Connect)" alone says little).
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = String::new();
    let mut next = error.source();
    while let Some(source) = next {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&source.to_string());
        next = source.source();
    }
    if message.is_empty() {
        error.to_string()
    } else {
        message
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| InvalidUpstream("polled after completion".into()).into()))),
            KindProj::Pending {
                future,
                timeout,
                started,
                context,
            } => {
                let polled = std::task::ready!(future.poll(cx));
                if let Some(context) = context {
                    context.add_upstream_time(started.elapsed());
                }
                let result = match polled {
                    Err(_elapsed) => Err(UpstreamError::Timeout(*timeout)),
                    Ok(Err(error)) if error.is_connect() => {
                        Err(UpstreamError::Connect(cause(&error).into()))
                    }
                    Ok(Err(error)) => Err(UpstreamError::Request(cause(&error).into())),
                    Ok(Ok(response)) => {
                        let mut response = response.map(ProxyBody::from);
                        strip_hop_by_hop(response.headers_mut());
                        Ok(response)
                    }
                };
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("anthropic-version", "2023-06-01"),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["anthropic-version"]);
    }

    /// An upstream that answers one request on a keep-alive connection, then reports whether the
    /// client closed the connection within `within`.
    #[tokio::test]
    async fn idle_upstream_connections_are_closed_after_the_pool_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/models", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..read]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // The client keeps the connection for the next request; after the idle timeout it
            // must close it (read returns 0).
            tokio::time::timeout(Duration::from_secs(3), socket.read(&mut buffer)).await
        });
        let client = pooled_client(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis(200));
        let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        let closed = server.await.unwrap();
        assert!(
            matches!(closed, Ok(Ok(0))),
            "the idle connection was not closed: {closed:?}"
        );
    }

    #[test]
    fn claudeflares_own_headers_from_a_client_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("x-claudeflare-account", "someone-else"),
            ("x-claudeflare-request-id", "forged"),
            ("x-claudeflare-anything", "1"),
            ("anthropic-beta", "oauth-2025-04-20"),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_own(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["anthropic-beta"]);
    }
}

//! The `Upstream` service: sends the request to `upstream_url` over a pooled hyper client and
//! streams the response back untouched.
//!
//! Connect and first-byte (response header) timeouts apply; there is deliberately no total
//! timeout, which would cut long streams. Hop-by-hop headers are dropped both ways, and so is
//! `accept-encoding`, so the response arrives uncompressed for `Record` to read its usage.
//!
//! ```no_run
//! use claudeflare_tower::upstream::Upstream;
//! let upstream = Upstream::new(http::Uri::from_static("https://api.anthropic.com"));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pin_project_lite::pin_project;
use tower::Service;

use crate::BoxError;
use crate::body::ProxyBody;
use crate::ext::UpstreamTime;
use crate::setting::Setting;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the response headers; Anthropic's own SDKs wait 10 minutes for a
/// non-streaming answer.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an upstream connection may stay idle in the pool before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client type claudeflare uses (HTTPS through rustls, or plain HTTP).
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled keep-alive client for HTTP and HTTPS, with `connect_timeout`.
pub(crate) fn http_client(connect_timeout: Duration) -> HttpClient {
    pooled_client(connect_timeout, POOL_IDLE_TIMEOUT)
}

fn pooled_client(connect_timeout: Duration, idle_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        // ring supports the default protocol versions (TLS 1.2 and 1.3), so this cannot fail.
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        // Without a timer the pool never looks at idle connections: they would stay open past
        // the idle timeout until the upstream closed them.
        .pool_timer(TokioTimer::new())
        .build(https)
}

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("could not connect to the upstream: {0}")]
    Connect(BoxError),
    /// The connection failed before a response arrived.
    #[error("the upstream request failed: {0}")]
    Request(BoxError),
    /// No response headers within the first-byte timeout.
    #[error("the upstream did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// The request's path does not make a valid URL with `upstream_url`.
    #[error("invalid upstream URL: {0}")]
    InvalidUri(String),
}

/// Sends requests to the upstream. Cheap to clone; clones share the connection pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    // One reference count for a clone, not one per part of the client: the stack is cloned for
    // every request, from every thread.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: HttpClient,
    base: Setting<Uri>,
    first_byte_timeout: Duration,
}

impl Upstream {
    /// Requests go to `base` (e.g. `https://api.anthropic.com`), with the default timeouts.
    pub fn new(base: impl Into<Setting<Uri>>) -> Self {
        Self::with_timeouts(base, DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT)
    }

    /// Requests go to `base`, with these timeouts.
    pub fn with_timeouts(
        base: impl Into<Setting<Uri>>,
        connect: Duration,
        first_byte: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client: http_client(connect),
                base: base.into(),
                first_byte_timeout: first_byte,
            }),
        }
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

/// `base` joined with the path and query of `uri`.
fn join(base: &Uri, uri: &Uri) -> Result<Uri, UpstreamError> {
    let (Some(scheme), Some(authority)) = (base.scheme(), base.authority()) else {
        return Err(UpstreamError::InvalidUri(base.to_string()));
    };
    let prefix = base.path().trim_end_matches('/');
    if prefix.is_empty() {
        // The usual case (`https://api.anthropic.com`): reuse the parsed parts, no new parsing.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        return Uri::from_parts(parts)
            .map_err(|e: http::uri::InvalidUriParts| UpstreamError::InvalidUri(e.to_string()));
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{scheme}://{authority}{prefix}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| UpstreamError::InvalidUri(e.to_string()))
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<ProxyBody>;
    type Error = UpstreamError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready; it queues on its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let shared = &*self.shared;
        let uri = match join(&shared.base.current(), req.uri()) {
            Ok(uri) => uri,
            Err(error) => {
                return ResponseFuture {
                    kind: Kind::Failed { error: Some(error) },
                };
            }
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_own(headers);
        headers.remove(header::HOST);
        headers.remove(header::ACCEPT_ENCODING);
        ResponseFuture {
            kind: Kind::Pending {
                future: tokio::time::timeout(shared.first_byte_timeout, shared.client.request(req)),
                timeout: shared.first_byte_timeout,
                started: std::time::Instant::now(),
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
                .unwrap_or_else(|| UpstreamError::InvalidUri("polled after completion".into())))),
            KindProj::Pending {
                future,
                timeout,
                started,
            } => {
                let result = match std::task::ready!(future.poll(cx)) {
                    Err(_elapsed) => Err(UpstreamError::Timeout(*timeout)),
                    Ok(Err(error)) if error.is_connect() => {
                        Err(UpstreamError::Connect(cause(&error).into()))
                    }
                    Ok(Err(error)) => Err(UpstreamError::Request(cause(&error).into())),
                    Ok(Ok(response)) => {
                        let mut response = response.map(ProxyBody::from);
                        strip_hop_by_hop(response.headers_mut());
                        response
                            .extensions_mut()
                            .insert(UpstreamTime(started.elapsed()));
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
    fn join_keeps_path_query_and_base_prefix() {
        let base: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let uri: Uri = "/v1/messages?beta=true".parse().unwrap();
        assert_eq!(
            join(&base, &uri).unwrap(),
            "http://127.0.0.1:9/v1/messages?beta=true"
        );
        let base: Uri = "https://gw.example/anthropic/".parse().unwrap();
        assert_eq!(
            join(&base, &uri).unwrap(),
            "https://gw.example/anthropic/v1/messages?beta=true"
        );
        assert!(join(&"/relative".parse().unwrap(), &uri).is_err());
    }

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

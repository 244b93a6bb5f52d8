//! Sends requests to the upstream. Cheap to clone; clones share the connection pools.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
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
use crate::egress::EgressProxy;
use crate::provider::InvalidUpstream;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for the response headers; Anthropic's own SDKs wait 10 minutes for a
/// non-streaming answer.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an upstream connection may stay idle in the pool before it is closed.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connector of [`Upstream::new`]: HTTPS through rustls (feature `rustls-ring`) or plain
/// HTTP.
#[cfg(feature = "rustls-ring")]
pub type DefaultConnector = hyper_rustls::HttpsConnector<HttpConnector>;
/// The connector of [`Upstream::new`]: HTTPS through rustls (feature `rustls-ring`) or plain
/// HTTP.
#[cfg(not(feature = "rustls-ring"))]
pub type DefaultConnector = HttpConnector;

/// The plain TCP connector every client starts from.
fn tcp(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http
}

/// TLS (feature `rustls-ring`) over `connector`, plain HTTP allowed.
#[cfg(feature = "rustls-ring")]
fn tls<C>(connector: C) -> hyper_rustls::HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        // ring supports the default protocol versions (TLS 1.2 and 1.3), so this cannot fail.
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector)
}

/// A keep-alive pool over `connector`, closing connections idle for `idle_timeout`.
fn pool<C>(connector: C, idle_timeout: Duration) -> Client<C, Full<Bytes>>
where
    C: Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        // Without a timer the pool never looks at idle connections: they would stay open past
        // the idle timeout until the upstream closed them.
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// A pooled keep-alive client with `connect_timeout`.
fn pooled_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Client<DefaultConnector, Full<Bytes>> {
    #[cfg(feature = "rustls-ring")]
    let connector = tls(tcp(connect_timeout));
    #[cfg(not(feature = "rustls-ring"))]
    let connector = tcp(connect_timeout);
    pool(connector, idle_timeout)
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
    /// The account's egress proxy cannot be used.
    #[error("the egress proxy {proxy} cannot be used: {reason}")]
    Proxy {
        /// The proxy, password hidden.
        proxy: String,
        /// Why.
        reason: String,
    },
}

/// Sends requests to the upstream. Cheap to clone; clones share the connection pools.
///
/// The `Upstream` service: sends the request to the absolute URL the provider gave it
/// ([`Provider::prepare`](crate::Provider::prepare), in `Auth`), over a pooled hyper-util
/// client, and streams the response back untouched. An account with an
/// [egress proxy](crate::EgressProxy) is sent through a client of its own that connects through
/// it (an HTTP `CONNECT` tunnel or SOCKS5, hyper-util's connectors), one pool per proxy.
///
/// Connect and first-byte (response header) timeouts apply; there is deliberately no total
/// timeout, which would cut long streams. Hop-by-hop headers are dropped both ways, and so is
/// `accept-encoding`, so the response arrives uncompressed for `Record` to read its usage.
///
/// ```no_run
/// use claudeflare_tower::Upstream;
/// let upstream = Upstream::new();
/// ```
///
/// HTTPS comes from the `rustls-ring` feature (on by default: rustls with ring and the webpki
/// roots). Without it, or to use another TLS stack, proxy settings or connector, build a
/// hyper-util client yourself and pass it to [`Upstream::from_client`]:
///
/// ```
/// use claudeflare_tower::Upstream;
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use hyper_util::rt::TokioExecutor;
/// let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
/// let upstream = Upstream::from_client(client);
/// ```
#[derive(Debug)]
pub struct Upstream<C = DefaultConnector> {
    // One reference count for a clone, not one per part of the client: the stack is cloned for
    // every request, from every thread.
    shared: Arc<Shared<C>>,
    first_byte_timeout: Duration,
}

impl<C> Clone for Upstream<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            first_byte_timeout: self.first_byte_timeout,
        }
    }
}

#[derive(Debug)]
struct Shared<C> {
    client: Client<C, Full<Bytes>>,
    /// One client per egress proxy, made on first use.
    proxied: Mutex<HashMap<EgressProxy, egress::ProxiedClient>>,
    connect_timeout: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    /// Requests go to their absolute URLs, with the default timeouts.
    pub fn new() -> Self {
        Self::with_timeouts(DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT)
    }

    /// Requests go to their absolute URLs, with these timeouts.
    pub fn with_timeouts(connect: Duration, first_byte: Duration) -> Self {
        let client = pooled_client(connect, POOL_IDLE_TIMEOUT);
        let mut upstream = Self::from_client(client).first_byte_timeout(first_byte);
        if let Some(shared) = Arc::get_mut(&mut upstream.shared) {
            shared.connect_timeout = connect;
        }
        upstream
    }
}

impl<C> Upstream<C> {
    /// Requests go over `client`: any hyper-util client (your TLS stack or connector), waiting
    /// [`DEFAULT_FIRST_BYTE_TIMEOUT`] for response headers. The connect timeout is the
    /// connector's. Accounts with an egress proxy still go through clients of their own.
    pub fn from_client(client: Client<C, Full<Bytes>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                proxied: Mutex::new(HashMap::new()),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            }),
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }

    /// Wait this long for the response headers.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout;
        self
    }

    /// The client for requests through `proxy`, made on first use.
    fn proxied(&self, proxy: &EgressProxy) -> Result<egress::ProxiedClient, UpstreamError> {
        let mut clients = self
            .shared
            .proxied
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(proxy) {
            return Ok(client.clone());
        }
        let client = egress::client(proxy, self.shared.connect_timeout).map_err(|reason| {
            UpstreamError::Proxy {
                proxy: proxy.to_string(),
                reason,
            }
        })?;
        clients.insert(proxy.clone(), client.clone());
        Ok(client)
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

impl<C> Service<Request<Full<Bytes>>> for Upstream<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The legacy client is always ready; it queues on its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let failed = |error: UpstreamError| UpstreamFuture {
            kind: Kind::Failed { error: Some(error) },
        };
        if req.uri().scheme().is_none() || req.uri().authority().is_none() {
            let error = InvalidUpstream(format!(
                "`{}` is not an absolute URL: no provider prepared the request",
                req.uri()
            ));
            return failed(error.into());
        }
        let context = RequestContext::of(&req).cloned();
        let proxy = context
            .as_ref()
            .and_then(RequestContext::account)
            .and_then(|account| account.route().proxy.clone());
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_own(headers);
        headers.remove(header::HOST);
        headers.remove(header::ACCEPT_ENCODING);
        let future = match proxy {
            None => self.shared.client.request(req),
            Some(proxy) => match self.proxied(&proxy) {
                Ok(client) => client.request(req),
                Err(error) => return failed(error),
            },
        };
        UpstreamFuture {
            kind: Kind::Pending {
                future: tokio::time::timeout(self.first_byte_timeout, future),
                timeout: self.first_byte_timeout,
                started: std::time::Instant::now(),
                context,
            },
        }
    }
}

/// The clients of egress proxies.
mod egress {
    use super::*;

    /// A client connecting through one proxy.
    #[cfg(feature = "rustls-ring")]
    pub(super) type ProxiedClient =
        Client<hyper_rustls::HttpsConnector<connector::Egress>, Full<Bytes>>;
    /// Without TLS there are no proxy clients (see [`client`]).
    #[cfg(not(feature = "rustls-ring"))]
    pub(super) type ProxiedClient = Client<HttpConnector, Full<Bytes>>;

    /// A pool whose connections go through `proxy`.
    #[cfg(feature = "rustls-ring")]
    pub(super) fn client(
        proxy: &EgressProxy,
        connect_timeout: Duration,
    ) -> Result<ProxiedClient, String> {
        Ok(pool(
            tls(connector::Egress::new(proxy, connect_timeout)?),
            POOL_IDLE_TIMEOUT,
        ))
    }

    /// Egress proxies need the `rustls-ring` feature.
    #[cfg(not(feature = "rustls-ring"))]
    pub(super) fn client(
        _proxy: &EgressProxy,
        _connect_timeout: Duration,
    ) -> Result<ProxiedClient, String> {
        Err("egress proxies need the rustls-ring feature".to_owned())
    }

    #[cfg(feature = "rustls-ring")]
    mod connector {
        use std::task::{Context, Poll};
        use std::time::Duration;

        use http::{HeaderValue, Uri};
        use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
        use hyper_util::client::legacy::connect::HttpConnector;
        use hyper_util::client::legacy::connect::proxy::{SocksV5, Tunnel};
        use hyper_util::rt::TokioIo;
        use tokio::net::TcpStream;
        use tower::Service;

        use crate::egress::{EgressProxy, ProxyKind};
        use crate::{BoxError, BoxFuture};

        /// Connects through a proxy: a `CONNECT` tunnel (to an HTTP proxy, or over TLS to an
        /// HTTPS one), or SOCKS5. Either way the stream it gives is a TCP connection (TLS to
        /// the proxy included), which TLS to the upstream then wraps.
        #[derive(Clone)]
        pub(crate) enum Egress {
            Tunnel(Tunnel<HttpsConnector<HttpConnector>>),
            Socks(SocksV5<HttpConnector>),
        }

        impl Egress {
            pub(crate) fn new(
                proxy: &EgressProxy,
                connect_timeout: Duration,
            ) -> Result<Self, String> {
                let address = proxy.address();
                let credentials = proxy.credentials();
                Ok(match proxy.kind() {
                    ProxyKind::Socks5 => {
                        let mut socks = SocksV5::new(address, super::super::tcp(connect_timeout));
                        if let Some((user, password)) = credentials {
                            socks = socks.with_auth(user, password);
                        }
                        Egress::Socks(socks)
                    }
                    _ => {
                        let mut tunnel = Tunnel::new(
                            address,
                            super::super::tls(super::super::tcp(connect_timeout)),
                        );
                        if let Some((user, password)) = credentials {
                            use base64::Engine as _;
                            let token = base64::engine::general_purpose::STANDARD
                                .encode(format!("{user}:{password}"));
                            let mut value = HeaderValue::try_from(format!("Basic {token}"))
                                .map_err(|_| "the proxy's credentials make no header".to_owned())?;
                            value.set_sensitive(true);
                            tunnel = tunnel.with_auth(value);
                        }
                        Egress::Tunnel(tunnel)
                    }
                })
            }
        }

        impl Service<Uri> for Egress {
            type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
            type Error = BoxError;
            type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                match self {
                    Egress::Tunnel(tunnel) => tunnel.poll_ready(cx).map_err(Into::into),
                    Egress::Socks(socks) => socks.poll_ready(cx).map_err(Into::into),
                }
            }

            fn call(&mut self, target: Uri) -> Self::Future {
                match self {
                    Egress::Tunnel(tunnel) => {
                        let connecting = tunnel.call(target);
                        Box::pin(async move { connecting.await.map_err(Into::into) })
                    }
                    Egress::Socks(socks) => {
                        let connecting = socks.call(target);
                        Box::pin(async move {
                            connecting
                                .await
                                .map(MaybeHttpsStream::Http)
                                .map_err(Into::into)
                        })
                    }
                }
            }
        }
    }
}

pin_project! {
    /// Future of [`Upstream`].
    pub struct UpstreamFuture {
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

impl Future for UpstreamFuture {
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

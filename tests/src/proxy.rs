//! Local egress proxies, HTTP and SOCKS5, that log every connection: tests check with them that
//! each request of an account goes out through the proxy configured for it.
//!
//! Both listen on 127.0.0.1 with an ephemeral port and stop, open tunnels included, when the
//! [`TestProxy`] is dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head the HTTP proxy reads; a longer one closes the connection.
const MAX_HEAD: usize = 64 * 1024;

/// The answer of the HTTP proxy to missing or wrong credentials.
const PROXY_AUTH_REQUIRED: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n";

/// One connection a proxy received, in order of arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Where the client asked to go, `host:port` as it asked (`[::1]:443` for IPv6); empty when
    /// the proxy refused the client before it named a target (SOCKS5 authentication).
    pub target: String,
    /// `"connect"` (an HTTP `CONNECT` tunnel), `"forward"` (an HTTP request in absolute form,
    /// `GET http://host/path`) or `"socks5"`.
    pub kind: &'static str,
    /// Whether the proxy let it through: its credentials were right, or none were required.
    pub authorized: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Socks5,
}

/// What every connection task shares: the credentials to require and the log.
struct Shared {
    credentials: Option<(String, String)>,
    log: Mutex<Vec<Connection>>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, target: String, kind: &'static str, authorized: bool) {
        self.log().push(Connection {
            target,
            kind,
            authorized,
        });
    }

    /// Whether `user` and `password` are the required ones (anything goes when none are).
    fn accepts(&self, user: &[u8], password: &[u8]) -> bool {
        self.credentials
            .as_ref()
            .is_none_or(|(u, p)| u.as_bytes() == user && p.as_bytes() == password)
    }
}

/// An HTTP or SOCKS5 proxy on 127.0.0.1 with an ephemeral port, optionally requiring a user and
/// password. It tunnels to any target and logs each connection ([`TestProxy::connections`]).
/// It stops when dropped: the listener closes and every open connection is cut.
pub struct TestProxy {
    addr: SocketAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
    /// The accept loop. It owns the connection tasks (a [`JoinSet`]), so aborting it aborts
    /// them too.
    task: JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for TestProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestProxy")
            .field("url", &self.url())
            .field("connections", &self.count())
            .finish_non_exhaustive()
    }
}

impl TestProxy {
    /// An HTTP proxy (`CONNECT` tunnels and absolute-form requests) open to anyone.
    pub async fn http() -> Self {
        Self::start(Protocol::Http, None).await
    }

    /// A SOCKS5 proxy open to anyone.
    pub async fn socks5() -> Self {
        Self::start(Protocol::Socks5, None).await
    }

    /// An HTTP proxy that requires `Proxy-Authorization: Basic` with this user and password;
    /// others get a 407.
    pub async fn http_with_auth(user: &str, password: &str) -> Self {
        Self::start(Protocol::Http, Some((user.to_owned(), password.to_owned()))).await
    }

    /// A SOCKS5 proxy that requires username/password authentication (RFC 1929) with these.
    pub async fn socks5_with_auth(user: &str, password: &str) -> Self {
        Self::start(
            Protocol::Socks5,
            Some((user.to_owned(), password.to_owned())),
        )
        .await
    }

    async fn start(protocol: Protocol, credentials: Option<(String, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test proxy to an ephemeral port");
        let addr = listener.local_addr().expect("the test proxy's address");
        let shared = Arc::new(Shared {
            credentials,
            log: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, protocol, Arc::clone(&shared)));
        Self {
            addr,
            protocol,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` or `socks5://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.addr)
    }

    /// [`TestProxy::url`] with `user:password@` in it (percent-encoded where a URL needs it).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "{}://{}:{}@{}",
            self.scheme(),
            percent_encode(user),
            percent_encode(password),
            self.addr
        )
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every connection received so far, oldest first.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.log().clone()
    }

    /// How many connections it received.
    pub fn count(&self) -> usize {
        self.shared.log().len()
    }

    fn scheme(&self) -> &'static str {
        match self.protocol {
            Protocol::Http => "http",
            Protocol::Socks5 => "socks5",
        }
    }
}

/// Userinfo of a URL: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn accept_loop(listener: TcpListener, protocol: Protocol, shared: Arc<Shared>) {
    // Dropped, and with it every connection task aborted, when this task is aborted.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Reap the finished ones so the set does not grow with every connection.
        while connections.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            // Any error ends the connection quietly, as a dropped socket.
            let _ = match protocol {
                Protocol::Http => serve_http(stream, &shared).await,
                Protocol::Socks5 => serve_socks5(stream, &shared).await,
            };
        });
    }
}

/// Copy both ways until either side closes.
async fn splice(mut client: TcpStream, mut upstream: TcpStream) -> std::io::Result<()> {
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A request head: its bytes up to and including the blank line, and what was read after it.
struct Head {
    head: Vec<u8>,
    rest: Vec<u8>,
}

/// Read up to the blank line ending the head; `None` at EOF or past [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let searched = buf.len().saturating_sub(3);
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = searched + at + 4;
            let rest = buf.split_off(end);
            return Ok(Some(Head { head: buf, rest }));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn serve_http(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some(Head { head, rest }) = read_head(&mut client).await? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, uri) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (kind, target) = if method.eq_ignore_ascii_case("CONNECT") {
        ("connect", Some(uri.to_owned()))
    } else {
        ("forward", absolute_form_target(uri))
    };
    let Some(target) = target.filter(|t| !t.is_empty()) else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let authorized = shared.credentials.is_none()
        || lines
            .clone()
            .filter_map(|line| header_value(line, "proxy-authorization"))
            .any(|value| basic_credentials_match(shared, value));
    shared.record(target.clone(), kind, authorized);
    if !authorized {
        client.write_all(PROXY_AUTH_REQUIRED).await?;
        return Ok(());
    }
    let Ok(mut upstream) = TcpStream::connect(target.as_str()).await else {
        client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    if kind == "connect" {
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
    } else {
        // The head as received, less the proxy's credentials.
        let mut forwarded = Vec::with_capacity(head.len());
        for line in head.split_inclusive(|&b| b == b'\n') {
            let is_auth = std::str::from_utf8(line)
                .ok()
                .and_then(|l| header_value(l, "proxy-authorization"))
                .is_some();
            if !is_auth {
                forwarded.extend_from_slice(line);
            }
        }
        upstream.write_all(&forwarded).await?;
    }
    upstream.write_all(&rest).await?;
    splice(client, upstream).await
}

/// `host:port` of an absolute-form request target (`http://host[:port]/path`, port 80 by
/// default).
fn absolute_form_target(uri: &str) -> Option<String> {
    let after_scheme = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("HTTP://"))?;
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    // Userinfo is not for the target.
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let has_port = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket..].contains(':'),
        None => host_port.contains(':'),
    };
    Some(if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:80")
    })
}

/// The value of header `name` (lowercase) if `line` is that header.
fn header_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (key, value) = line.split_once(':')?;
    key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
}

/// Whether `Basic base64(user:password)` carries the required credentials.
fn basic_credentials_match(shared: &Shared, value: &str) -> bool {
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    shared.accepts(&decoded[..colon], &decoded[colon + 1..])
}

// ---------------------------------------------------------------------------------------------
// SOCKS5 (RFC 1928, with RFC 1929 username/password authentication)

const SOCKS_VERSION: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const USER_PASSWORD: u8 = 0x02;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;

/// A SOCKS5 reply with this code and the bound address (zeros when there is none).
fn socks_reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut reply = vec![SOCKS_VERSION, code, 0x00];
    match bound.unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)) {
        SocketAddr::V4(addr) => {
            reply.push(0x01);
            reply.extend_from_slice(&addr.ip().octets());
        }
        SocketAddr::V6(addr) => {
            reply.push(0x04);
            reply.extend_from_slice(&addr.ip().octets());
        }
    }
    let port = bound.map_or(0, |addr| addr.port());
    reply.extend_from_slice(&port.to_be_bytes());
    reply
}

/// Read a length byte and that many bytes.
async fn read_short_bytes(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u8().await?;
    let mut bytes = vec![0u8; usize::from(len)];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

async fn serve_socks5(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // Greeting: VER, NMETHODS, METHODS.
    if client.read_u8().await? != SOCKS_VERSION {
        return Ok(());
    }
    let methods = read_short_bytes(&mut client).await?;
    let method = if shared.credentials.is_some() {
        methods.contains(&USER_PASSWORD).then_some(USER_PASSWORD)
    } else if methods.contains(&NO_AUTH) {
        Some(NO_AUTH)
    } else {
        // Open to anyone, but the client only offers a password: any will do.
        methods.contains(&USER_PASSWORD).then_some(USER_PASSWORD)
    };
    let Some(method) = method else {
        shared.record(String::new(), "socks5", false);
        client
            .write_all(&[SOCKS_VERSION, NO_ACCEPTABLE_METHOD])
            .await?;
        return Ok(());
    };
    client.write_all(&[SOCKS_VERSION, method]).await?;
    if method == USER_PASSWORD {
        // Sub-negotiation: VER (1), ULEN, UNAME, PLEN, PASSWD.
        if client.read_u8().await? != 0x01 {
            return Ok(());
        }
        let user = read_short_bytes(&mut client).await?;
        let password = read_short_bytes(&mut client).await?;
        if !shared.accepts(&user, &password) {
            shared.record(String::new(), "socks5", false);
            client.write_all(&[0x01, 0x01]).await?;
            return Ok(());
        }
        client.write_all(&[0x01, 0x00]).await?;
    }
    // Request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
    let mut header = [0u8; 4];
    client.read_exact(&mut header).await?;
    let [version, command, _, address_type] = header;
    if version != SOCKS_VERSION {
        return Ok(());
    }
    let host = match address_type {
        0x01 => {
            let mut octets = [0u8; 4];
            client.read_exact(&mut octets).await?;
            IpAddr::from(Ipv4Addr::from(octets)).to_string()
        }
        0x03 => String::from_utf8_lossy(&read_short_bytes(&mut client).await?).into_owned(),
        0x04 => {
            let mut octets = [0u8; 16];
            client.read_exact(&mut octets).await?;
            format!("[{}]", Ipv6Addr::from(octets))
        }
        _ => {
            // Address type not supported.
            client.write_all(&socks_reply(0x08, None)).await?;
            return Ok(());
        }
    };
    let port = client.read_u16().await?;
    let target = format!("{host}:{port}");
    shared.record(target.clone(), "socks5", true);
    if command != CMD_CONNECT {
        // Command not supported.
        client.write_all(&socks_reply(0x07, None)).await?;
        return Ok(());
    }
    let upstream = match TcpStream::connect(target.as_str()).await {
        Ok(upstream) => upstream,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                0x05
            } else {
                0x01
            };
            client.write_all(&socks_reply(code, None)).await?;
            return Ok(());
        }
    };
    client
        .write_all(&socks_reply(0x00, upstream.local_addr().ok()))
        .await?;
    splice(client, upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets() {
        let target = |uri| absolute_form_target(uri);
        assert_eq!(
            target("http://127.0.0.1:8080/v1/models").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            target("http://example.com/").as_deref(),
            Some("example.com:80")
        );
        assert_eq!(
            target("http://example.com").as_deref(),
            Some("example.com:80")
        );
        assert_eq!(target("http://[::1]/x").as_deref(), Some("[::1]:80"));
        assert_eq!(target("http://[::1]:9/x").as_deref(), Some("[::1]:9"));
        assert_eq!(target("/v1/models"), None);
    }

    #[test]
    fn credentials_are_percent_encoded() {
        assert_eq!(percent_encode("a b@c:d"), "a%20b%40c%3Ad");
        assert_eq!(percent_encode("user-1_x.y~"), "user-1_x.y~");
    }
}

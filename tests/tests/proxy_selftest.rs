//! The test proxies tunnel, authenticate and log as their docs say.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use claudeflare_testkit::proxy::Connection;
use claudeflare_testkit::{MockUpstream, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every read gives up after this: a hung proxy fails the test instead of stalling it.
const PATIENCE: Duration = Duration::from_secs(5);

/// The mock's `host:port`.
fn authority(mock: &MockUpstream) -> String {
    mock.url().trim_start_matches("http://").to_owned()
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

async fn connect(proxy: &TestProxy) -> TcpStream {
    TcpStream::connect(proxy.addr()).await.unwrap()
}

/// Read up to and including the blank line after a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, stream.read_u8())
            .await
            .unwrap()
            .unwrap();
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

async fn read_exact<const N: usize>(stream: &mut TcpStream) -> [u8; N] {
    let mut buf = [0u8; N];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the peer closed the stream (EOF or a reset) rather than sending more.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await {
        Ok(Ok(n)) => n == 0,
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// Send a plain HTTP/1.1 GET of /v1/models to the mock over `stream` and return the response.
async fn get_models(stream: &mut TcpStream, host: &str) -> String {
    let request = format!(
        "GET /v1/models HTTP/1.1\r\nHost: {host}\r\nx-api-key: k\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_to_end(stream).await
}

fn connection(target: &str, kind: &'static str, authorized: bool) -> Connection {
    Connection {
        target: target.to_owned(),
        kind,
        authorized,
    }
}

#[tokio::test]
async fn an_http_connect_tunnel_reaches_the_target_and_is_logged() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::http().await;
    assert!(proxy.url().starts_with("http://127.0.0.1:"));
    let host = authority(&mock);

    let mut stream = connect(&proxy).await;
    let request = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        read_head(&mut stream).await,
        "HTTP/1.1 200 Connection Established\r\n\r\n"
    );
    let response = get_models(&mut stream, &host).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("/v1/models"), "{response}");

    assert_eq!(proxy.connections(), [connection(&host, "connect", true)]);
    assert_eq!(proxy.count(), 1);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn an_absolute_form_request_is_forwarded_without_the_proxy_credentials() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::http_with_auth("alice", "s3cret").await;
    let host = authority(&mock);
    assert_eq!(
        proxy.url_with_credentials("alice", "s3cret"),
        format!("http://alice:s3cret@{}", proxy.addr())
    );

    let mut stream = connect(&proxy).await;
    let request = format!(
        "GET http://{host}/v1/models HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {}\r\nx-api-key: k\r\nConnection: close\r\n\r\n",
        basic("alice", "s3cret")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_to_end(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    assert_eq!(proxy.connections(), [connection(&host, "forward", true)]);
    let received = mock.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/models");
    assert!(received[0].headers.get("proxy-authorization").is_none());
    assert_eq!(received[0].account.as_deref(), Some("k"));
}

#[tokio::test]
async fn missing_or_wrong_http_credentials_get_a_407() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::http_with_auth("alice", "s3cret").await;
    let host = authority(&mock);
    let expected = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n";

    let mut stream = connect(&proxy).await;
    let request = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, expected);

    let mut stream = connect(&proxy).await;
    let request = format!(
        "GET http://{host}/v1/models HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic {}\r\n\r\n",
        basic("alice", "wrong")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, expected);

    assert_eq!(
        proxy.connections(),
        [
            connection(&host, "connect", false),
            connection(&host, "forward", false)
        ]
    );
    assert!(mock.requests().is_empty());
}

/// The greeting, and the CONNECT request for `address` (an `ATYP` byte and its address) and
/// `port`.
async fn socks_connect(stream: &mut TcpStream, address: &[u8], port: u16) -> [u8; 10] {
    let mut request = vec![0x05, 0x01, 0x00];
    request.extend_from_slice(address);
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await.unwrap();
    read_exact::<10>(stream).await
}

#[tokio::test]
async fn a_socks5_tunnel_reaches_the_target_by_ip_and_by_name() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::socks5().await;
    assert!(proxy.url().starts_with("socks5://127.0.0.1:"));
    let host = authority(&mock);
    let port = host.parse::<SocketAddr>().unwrap().port();

    // By IPv4 address.
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0x00]);
    let reply = socks_connect(&mut stream, &[0x01, 127, 0, 0, 1], port).await;
    assert_eq!(reply[..4], [0x05, 0x00, 0x00, 0x01]);
    let response = get_models(&mut stream, &host).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    // By domain name.
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0x00]);
    let mut address = vec![0x03, 9];
    address.extend_from_slice(b"127.0.0.1");
    let reply = socks_connect(&mut stream, &address, port).await;
    assert_eq!(reply[..4], [0x05, 0x00, 0x00, 0x01]);
    let response = get_models(&mut stream, &host).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    assert_eq!(
        proxy.connections(),
        [
            connection(&host, "socks5", true),
            connection(&host, "socks5", true)
        ]
    );
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn socks5_credentials_are_checked() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::socks5_with_auth("bob", "hunter2").await;
    let host = authority(&mock);
    let port = host.parse::<SocketAddr>().unwrap().port();
    assert_eq!(
        proxy.url_with_credentials("bob", "hunter2"),
        format!("socks5://bob:hunter2@{}", proxy.addr())
    );
    let login = |user: &str, password: &str| {
        let mut bytes = vec![0x01, u8::try_from(user.len()).unwrap()];
        bytes.extend_from_slice(user.as_bytes());
        bytes.push(u8::try_from(password.len()).unwrap());
        bytes.extend_from_slice(password.as_bytes());
        bytes
    };

    // The right ones: the proxy picks username/password and tunnels.
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x02, 0x00, 0x02]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0x02]);
    stream.write_all(&login("bob", "hunter2")).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x01, 0x00]);
    let reply = socks_connect(&mut stream, &[0x01, 127, 0, 0, 1], port).await;
    assert_eq!(reply[..2], [0x05, 0x00]);
    let response = get_models(&mut stream, &host).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    // A wrong password: refused and closed.
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x01, 0x02]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0x02]);
    stream.write_all(&login("bob", "wrong")).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x01, 0x01]);
    assert!(closed(&mut stream).await);

    // No password offered: no acceptable method.
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0xFF]);
    assert!(closed(&mut stream).await);

    assert_eq!(
        proxy.connections(),
        [
            connection(&host, "socks5", true),
            connection("", "socks5", false),
            connection("", "socks5", false)
        ]
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn socks5_refuses_commands_other_than_connect() {
    let proxy = TestProxy::socks5().await;
    let mut stream = connect(&proxy).await;
    stream.write_all(&[0x05, 0x01, 0x00]).await.unwrap();
    assert_eq!(read_exact::<2>(&mut stream).await, [0x05, 0x00]);
    // BIND (0x02) to 127.0.0.1:9.
    stream
        .write_all(&[0x05, 0x02, 0x00, 0x01, 127, 0, 0, 1, 0, 9])
        .await
        .unwrap();
    let reply = read_exact::<10>(&mut stream).await;
    assert_eq!(reply[..2], [0x05, 0x07]);
    assert!(closed(&mut stream).await);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_listener_and_open_tunnels() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::http().await;
    let addr = proxy.addr();
    let host = authority(&mock);

    let mut tunnel = connect(&proxy).await;
    let request = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    tunnel.write_all(request.as_bytes()).await.unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200"));

    drop(proxy);
    // The open tunnel is cut (its task aborted, not left running)...
    assert!(closed(&mut tunnel).await);
    // ...and the listener is gone (aborting is not instant: retry briefly).
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        refused,
        "the proxy still accepts connections after it was dropped"
    );
}

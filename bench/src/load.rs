//! The load generator: hyper HTTP/1 connections of its own, one request at a time per
//! connection, timings into HDR histograms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const JSON: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"claude-sonnet-4-20250514","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// The client key requests carry (`--keys`); without one, a placeholder the server ignores.
pub static CLIENT_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A keep-alive connection to `address`.
pub async fn connect(address: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(address)
        .await
        .expect("connect to a benchmark target");
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1 handshake");
    tokio::spawn(connection);
    sender
}

fn request(address: SocketAddr, stream: bool) -> Request<Full<Bytes>> {
    let body = if stream { STREAM } else { JSON };
    Request::post("/v1/messages")
        .header(header::HOST, address.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", "2023-06-01")
        .header(
            "x-api-key",
            CLIENT_KEY.get().map_or("client-key", String::as_str),
        )
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid request")
}

/// Send one request and check that it succeeded.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    address: SocketAddr,
    stream: bool,
) -> http::Response<hyper::body::Incoming> {
    sender.ready().await.expect("the connection stays open");
    let response = sender
        .send_request(request(address, stream))
        .await
        .expect("an answer");
    assert!(
        response.status().is_success(),
        "{address} answered {}",
        response.status()
    );
    response
}

/// One non-streaming request, read to the end; its time.
pub async fn once(sender: &mut SendRequest<Full<Bytes>>, address: SocketAddr) -> Duration {
    let start = Instant::now();
    let response = send(sender, address, false).await;
    response
        .into_body()
        .collect()
        .await
        .expect("the whole body");
    start.elapsed()
}

/// `count` sequential requests on one connection, in microseconds, measured from a thread and a
/// current-thread runtime of their own.
///
/// On the benchmark's multi-threaded runtime, the connection's task and the task sending the
/// requests run on different workers, and every request crosses between them: that added some
/// 60 µs to each request (wrk measured the mock at 33–67 µs p50 where this client, so run,
/// measured 92–141 µs; docs/benchmarks-history.md), the same for every target, which flattered the ratio of
/// added latencies. On one thread the client costs what a plain event loop such as wrk's does.
pub async fn latency_on_own_thread(address: SocketAddr, count: usize, into: &mut Histogram<u64>) {
    let measured = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let mut histogram = Histogram::<u64>::new(3).expect("a histogram");
        runtime.block_on(latency(address, count, &mut histogram));
        histogram
    })
    .await
    .expect("the latency thread");
    into.add(&measured)
        .expect("histograms of the same precision");
}

/// `count` sequential requests on one connection, in microseconds.
pub async fn latency(address: SocketAddr, count: usize, into: &mut Histogram<u64>) {
    let mut sender = connect(address).await;
    for _ in 0..count {
        let time = once(&mut sender, address).await;
        into.record(u64::try_from(time.as_micros()).unwrap_or(u64::MAX))
            .expect("a recordable time");
    }
}

/// Requests completed by `connections` connections in `duration`.
pub async fn throughput(address: SocketAddr, connections: usize, duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        workers.spawn(async move {
            let mut sender = connect(address).await;
            let mut done = 0u64;
            while Instant::now() < deadline {
                once(&mut sender, address).await;
                done += 1;
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = workers.join_next().await {
        total += done.expect("a worker");
    }
    total
}

/// Timings of one streaming request.
pub struct Streamed {
    /// To the first byte.
    pub first_byte: Duration,
    /// To the end.
    pub total: Duration,
    /// When each complete event arrived, after the first.
    pub events: Vec<Duration>,
}

/// One streaming request, timing each complete SSE event as it arrives.
pub async fn stream(address: SocketAddr) -> Streamed {
    let mut sender = connect(address).await;
    let start = Instant::now();
    let response = send(&mut sender, address, true).await;
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut first_event = None;
    let mut events = Vec::new();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("the stream").into_data() else {
            continue;
        };
        let now = Instant::now();
        first_byte.get_or_insert(now - start);
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            pending.drain(..end + 2);
            let first = *first_event.get_or_insert(now);
            events.push(now - first);
        }
    }
    Streamed {
        first_byte: first_byte.unwrap_or_default(),
        total: start.elapsed(),
        events,
    }
}

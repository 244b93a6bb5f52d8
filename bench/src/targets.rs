//! What the benchmark measures: a zero-latency mock upstream, a bare hyper reverse proxy (the
//! floor of "one proxy hop"), and the real `claudeflare-server`, each in a process of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use claudeflare_testkit::sse::{ChunkedBody, StreamObserver};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// Chunks of the spaced stream, and the pause between them.
pub const STREAM_CHUNKS: usize = 20;
/// Pause between the chunks of the spaced stream.
pub const STREAM_GAP: Duration = Duration::from_millis(5);

type Body = BoxBody<Bytes, std::io::Error>;

/// A non-streaming answer with usage, like Anthropic's.
const MESSAGE: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":3,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}"#;

struct NoObserver;

impl StreamObserver for NoObserver {
    fn finished(&self, _completed: bool) {}
}

/// One complete SSE event per chunk: message_start, deltas, message_delta, message_stop.
fn stream_chunks() -> Vec<Bytes> {
    let mut chunks = vec![Bytes::from_static(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
    )];
    for i in 0..STREAM_CHUNKS - 3 {
        chunks.push(Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"chunk {i} \"}}}}\n\n"
        )));
    }
    chunks.push(Bytes::from_static(
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n",
    ));
    chunks.push(Bytes::from_static(
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    chunks
}

async fn mock(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
    let response = if streaming {
        let body = ChunkedBody::new(stream_chunks(), STREAM_GAP, None, Arc::new(NoObserver));
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(body.boxed())
    } else {
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header("request-id", "req_bench")
            .body(
                Full::new(Bytes::from_static(MESSAGE.as_bytes()))
                    .map_err(|never| match never {})
                    .boxed(),
            )
    };
    // The builder only fails on invalid header values, and these are constants.
    Ok(response.expect("a valid response"))
}

/// Accept connections forever, serving each with `service`.
async fn serve<S, F>(listener: TcpListener, service: S)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(service))
                .await;
        });
    }
}

async fn announce(listener: &TcpListener) {
    // The parent reads the address from the first line.
    if let Ok(address) = listener.local_addr() {
        println!("listening on http://{address}");
    }
}

/// Run the mock upstream (a child process).
pub async fn run_mock() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the mock");
    announce(&listener).await;
    serve(listener, mock).await;
}

/// Run the bare reverse proxy to `upstream` (a child process): what any proxy must do at least.
pub async fn run_bare(upstream: String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bare proxy");
    announce(&listener).await;
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
    serve(listener, move |mut request: Request<Incoming>| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = format!("{upstream}{path}")
                .parse()
                .expect("a valid upstream URI");
            request.headers_mut().remove(header::HOST);
            let response = match client.request(request).await {
                Ok(response) => response.map(|b| b.map_err(std::io::Error::other).boxed()),
                Err(_) => Response::builder()
                    .status(502)
                    .body(
                        Full::new(Bytes::new())
                            .map_err(|never| match never {})
                            .boxed(),
                    )
                    .expect("a valid response"),
            };
            Ok(response)
        }
    })
    .await;
}

/// A child process serving HTTP; killed when dropped.
pub struct Process {
    /// The child.
    pub child: Child,
    /// Its address.
    pub address: SocketAddr,
}

/// Start `command` and wait for its `listening on http://…` line (on stdout or stderr).
pub async fn start(mut command: Command) -> Process {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start a benchmark process");
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<SocketAddr>(8);
    for reader in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            // Keep draining, so a chatty child never blocks on a full pipe.
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = announced(&line) {
                    let _ = sender.send(address).await;
                }
            }
        });
    }
    let address = tokio::time::timeout(Duration::from_secs(30), receiver.recv())
        .await
        .ok()
        .flatten()
        .expect("the process announced its address");
    Process { child, address }
}

/// The `claudeflare-server` binary beside this one, built first through cargo when run by it.
pub fn server_binary(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let dir = exe.parent().unwrap_or(Path::new("."));
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "claudeflare-server"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building claudeflare-server failed");
    }
    let path = dir.join("claudeflare-server");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --release -p claudeflare-server`",
        path.display()
    );
    path
}

/// Start claudeflare-server with three API-key accounts, recording to SQLite (or to the
/// PostgreSQL database `database_url`), against `upstream`; with `keys`, an admin client key
/// exists (requests then need it, and the load sends it).
pub async fn start_claudeflare(
    binary: &Path,
    upstream: SocketAddr,
    folder: &Path,
    keys: bool,
    database_url: Option<&str>,
) -> Process {
    let env = |command: &mut Command| {
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CLAUDEFLARE_CONFIG_PATH", folder.join("claudeflare.json"))
            .env("CLAUDEFLARE_UPSTREAM_URL", format!("http://{upstream}"))
            .env("NO_COLOR", "1");
        if let Some(url) = database_url {
            command.env("DATABASE_URL", url);
        }
    };
    for (name, key) in [
        ("one", "sk-ant-api03-bench-1"),
        ("two", "sk-ant-api03-bench-2"),
        ("three", "sk-ant-api03-bench-3"),
    ] {
        let mut add = Command::new(binary);
        env(&mut add);
        let status = add
            .args(["add", name, "--api-key", key])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("run add");
        assert!(status.success(), "adding an account failed");
    }
    if keys {
        let mut add = Command::new(binary);
        env(&mut add);
        let output = add
            .args(["keys", "add", "bench", "--admin"])
            .stderr(Stdio::null())
            .output()
            .await
            .expect("run keys add");
        assert!(output.status.success(), "adding a client key failed");
        let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let _ = crate::load::CLIENT_KEY.set(key);
    }
    // The server's log (one line per request) goes to a file, as it would in a deployment: read
    // through a pipe, it would make this process, the load generator, busier during
    // claudeflare's rounds than during the others'.
    let log_path = folder.join("claudeflare.log");
    let log = std::fs::File::create(&log_path).expect("create the server's log file");
    let mut serve = Command::new(binary);
    env(&mut serve);
    serve
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    let child = serve.spawn().expect("start claudeflare-server");
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(address) = announced(&text) {
            return Process { child, address };
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "claudeflare-server did not start; its log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address in a `listening on http://…` line of `text`.
fn announced(text: &str) -> Option<SocketAddr> {
    let at = text.find("listening on http://")?;
    text[at + "listening on http://".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A PostgreSQL database made for one run (with `psql`, from the admin URL `--postgres` gave),
/// dropped when this is dropped.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl ScratchDatabase {
    /// Create `claudeflare_bench_<pid>` next to the database of `admin_url`.
    pub fn create(admin_url: &str) -> Self {
        let name = format!("claudeflare_bench_{}", std::process::id());
        psql(admin_url, &format!("DROP DATABASE IF EXISTS {name}"));
        psql(admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url
            .split('?')
            .next()
            .and_then(|url| url.rsplit_once('/'))
            .map_or(admin_url, |(base, _)| base);
        Self {
            url: format!("{base}/{name}"),
            admin_url: admin_url.to_owned(),
            name,
        }
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let output = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .expect("run psql (the PostgreSQL client, Debian's postgresql-client) for --postgres");
    assert!(
        output.status.success(),
        "psql failed on {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

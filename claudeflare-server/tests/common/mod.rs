//! Harness for end-to-end tests: the real `claudeflare-server` binary, a temporary config folder,
//! the mock upstream, and (when `CLAUDEFLARE_TEST_POSTGRES_URL` is set) a fresh PostgreSQL
//! database per test. Everything is removed when the test ends.

#![allow(dead_code, clippy::unwrap_used)] // helpers used by some test files only; a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claudeflare_testkit::{MockUpstream, TestClient, TestResponse};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_claudeflare-server");
pub const POSTGRES_ENV: &str = "CLAUDEFLARE_TEST_POSTGRES_URL";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A PostgreSQL database made for one test, dropped after it.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> Self {
        let name = format!("cf_test_{}", uuid::Uuid::new_v4().simple());
        run_sql(admin_url, &format!("CREATE DATABASE {name}"));
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Self {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        run_sql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Run one statement on a fresh runtime (usable from `Drop` and from async tests alike).
fn run_sql(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sea_orm::ConnectionTrait;
            let db = sea_orm::Database::connect(&url).await.unwrap();
            db.execute_unprepared(&sql).await.unwrap();
            db.close().await.unwrap();
        });
    })
    .join()
    .unwrap();
}

/// The PostgreSQL admin URL, or `None` to skip (a failure in CI, where it must be set).
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!("{POSTGRES_ENV} must be set in CI"),
        _ => {
            eprintln!("skipped: set {POSTGRES_ENV} to run the PostgreSQL variant");
            None
        }
    }
}

/// Whether Anthropic's Python SDK can be imported; `false` to skip (a failure in CI, where
/// `.ci/run` installs it).
pub fn python_sdk() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import anthropic"])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Anthropic's Python SDK is missing (pip install anthropic)"
    );
    eprintln!("skipped: Anthropic's Python SDK is not installed");
    false
}

/// A temporary installation: config folder, mock upstream, database.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub mock: MockUpstream,
    pub extra: Vec<(String, String)>,
    pg: Option<PgDatabase>,
}

impl Env {
    pub async fn new(backend: Backend) -> Option<Self> {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDatabase::create(&postgres_url()?)),
        };
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            mock: MockUpstream::start().await,
            extra: Vec::new(),
            pg,
        })
    }

    pub async fn sqlite() -> Self {
        Self::new(Backend::Sqlite).await.unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config").join("claudeflare.json")
    }

    /// The PostgreSQL database's URL, on that backend.
    pub fn postgres(&self) -> Option<&str> {
        self.pg.as_ref().map(|pg| pg.url.as_str())
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("config").join("claude-accounts.db")
    }

    /// Set an environment variable for every process started from now on.
    pub fn set(&mut self, key: &str, value: &str) {
        self.extra.push((key.to_owned(), value.to_owned()));
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        for (key, _) in std::env::vars() {
            let upper = key.to_ascii_uppercase();
            let seed = claudeflare_server::SEED_ENV.contains(&upper.as_str());
            if upper.starts_with("CLAUDEFLARE_") || seed || upper == "DATABASE_URL" {
                command.env_remove(key);
            }
        }
        command
            .env("CLAUDEFLARE_CONFIG_PATH", self.config_path())
            .env("CLAUDEFLARE_UPSTREAM_URL", self.mock.url())
            .env("CLAUDEFLARE_OAUTH_TOKEN_URL", self.mock.token_url())
            .env(
                "CLAUDEFLARE_CREATE_API_KEY_URL",
                format!("{}/api/oauth/claude_cli/create_api_key", self.mock.url()),
            )
            .env(
                "CLAUDEFLARE_OAUTH_USAGE_URL",
                format!("{}/api/oauth/usage", self.mock.url()),
            )
            .env("RETRY_DELAY_MS", "20")
            .env("PORT", "0")
            .env("NO_COLOR", "1");
        if let Some(pg) = &self.pg {
            command.env("DATABASE_URL", &pg.url);
        }
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        command
    }

    /// Run a CLI command to completion (no terminal on stdin); one still running after 30 s is
    /// killed and fails the test.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!(
                    "{args:?} did not finish: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }

    /// Run a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Create a client key (`keys add ARGS`) and return it.
    pub fn new_key(&self, args: &[&str]) -> String {
        let mut all = vec!["keys", "add"];
        all.extend_from_slice(args);
        self.ok(&all).trim().to_owned()
    }

    /// Add console accounts `name` with key `sk-ant-api03-SECRET-name`.
    pub fn add_keys(&self, names: &[&str]) {
        for name in names {
            self.ok(&["add", name, "--api-key", &key(name)]);
        }
    }

    /// Run an OAuth command (`add` or `reauth`) as a user would: read the authorize URL it
    /// prints, sign in at the mock as `label`, and paste `CODE#STATE` (with another state when
    /// `wrong_state`).
    pub fn oauth(&self, args: &[&str], label: &str, wrong_state: bool) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut printed = String::new();
        let url = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let output = child.wait_with_output().unwrap();
                panic!(
                    "no authorize URL in {printed:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            printed.push_str(&line);
            if line.starts_with("http") {
                break line.trim().to_owned();
            }
        };
        let query = |name: &str| {
            url.split(['?', '&'])
                .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                .map(|v| v.replace("%3A", ":").replace("%2F", "/"))
                .unwrap_or_else(|| panic!("{name} missing from {url}"))
        };
        assert_eq!(query("code_challenge_method"), "S256");
        let code = self.mock.authorize(label, &query("code_challenge"));
        let state = if wrong_state {
            "forged-state".to_owned()
        } else {
            query("state")
        };
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{code}#{state}").unwrap();
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let mut output = child.wait_with_output().unwrap();
        output.stdout = format!("{printed}{rest}").into_bytes();
        output
    }

    pub fn start(&self) -> Server {
        self.start_with(&[])
    }

    /// Start `serve` and wait until it listens.
    pub fn start_with(&self, args: &[&str]) -> Server {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line
                    .find("listening on http://")
                    .or_else(|| line.find("listening on https://"))
                {
                    let url = line[at + "listening on ".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(url);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            client: TestClient::new(url.clone()),
            url,
            log,
        }
    }
}

pub fn key(name: &str) -> String {
    format!("sk-ant-api03-SECRET-{name}")
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub client: TestClient,
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub async fn get(&self, path: &str) -> TestResponse {
        self.client.get(path).await
    }

    pub async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        response.json()
    }

    pub async fn post(&self, path: &str, body: &str) -> TestResponse {
        self.client
            .send(
                http::Method::POST,
                path,
                &[("content-type", "application/json")],
                body.to_owned(),
            )
            .await
    }

    pub async fn message(&self, stream: bool) -> TestResponse {
        let body = serde_json::json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        self.client
            .post_json("/v1/messages", &body, &[("x-api-key", "client-key")])
            .await
    }

    /// A message for `model`, streamed or not.
    pub async fn ask(&self, model: &str, stream: bool) -> TestResponse {
        let body = serde_json::json!({"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        self.client
            .post_json("/v1/messages", &body, &[("x-api-key", "client-key")])
            .await
    }

    /// The newest `count` requests of the history (newest first), once there are that many.
    pub async fn history(&self, count: usize) -> Vec<Value> {
        let found = eventually(Duration::from_secs(5), || async {
            self.json("/api/requests").await.as_array().unwrap().len() >= count
        })
        .await;
        let requests = self.json("/api/requests").await.as_array().unwrap().clone();
        assert!(found, "{requests:?}");
        requests
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it contains `needle` (lines reach it a few milliseconds after they are
    /// logged); fails the test with the log after 5 seconds.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM and wait for the exit (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.terminate_wait(timeout)
    }

    /// Wait for an exit already requested (at most `timeout`).
    pub fn terminate_wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The account named `name` in /api/accounts.
    pub async fn account(&self, name: &str) -> Value {
        let accounts = self.json("/api/accounts").await;
        accounts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests answered 200: their ids, and when each answer came.
pub type Answered = Arc<Mutex<Vec<(String, Instant)>>>;

/// `connections` clients send requests back to back until `until`; returns the ids of those
/// answered 200 with the time each answer came (every answer must be a 200).
pub async fn flood(
    client: &TestClient,
    connections: usize,
    until: Instant,
) -> Vec<(String, Instant)> {
    let answered = Answered::default();
    for result in clients(client, connections, until, &answered).await {
        result.unwrap();
    }
    Arc::into_inner(answered).unwrap().into_inner().unwrap()
}

/// The clients of [`flood`], each answer added to `answered` as it comes; each client's task
/// fails at its first request not answered 200 (or not answered at all).
pub async fn clients(
    client: &TestClient,
    connections: usize,
    until: Instant,
    answered: &Answered,
) -> Vec<Result<(), tokio::task::JoinError>> {
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            let answered = Arc::clone(answered);
            tokio::spawn(async move {
                let body = serde_json::json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}]});
                while Instant::now() < until {
                    let response = client
                        .post_json("/v1/messages", &body, &[("x-api-key", "client-key")])
                        .await;
                    assert_eq!(response.status, 200, "{}", response.text());
                    let id = response
                        .header("x-claudeflare-request-id")
                        .unwrap()
                        .to_owned();
                    answered.lock().unwrap().push((id, Instant::now()));
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await);
    }
    results
}

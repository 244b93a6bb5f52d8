//! Faults an unlucky operator or an attacker brings, through the real binary: a database that
//! takes no writes for a while, connections that send nothing or next to nothing, a shutdown in
//! the middle of a stream, paths that try to leave `/v1/`, a refusing upstream, bad API input,
//! and a configuration folder deleted under a running server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use claudeflare_testkit::Reply;
use common::{Env, eventually, key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn address(server: &common::Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Whether the server closes `stream` within `within` (a read returns end of file or an error).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Everything the server sends on `stream` until it closes it (at most 5 s).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut read)).await;
    String::from_utf8_lossy(&read).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_made_while_the_database_takes_no_writes_are_all_stored_after() {
    use sea_orm::ConnectionTrait;
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    for _ in 0..5 {
        assert_eq!(server.message(false).await.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 5
        })
        .await
    );

    // Another process takes the database's write lock and holds it past the server's busy
    // timeout (5 s): every write the server tries meanwhile fails with "database is locked".
    let url = format!("sqlite://{}", env.db_path().display());
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1).min_connections(1);
    let blocker = sea_orm::Database::connect(options).await.unwrap();
    blocker.execute_unprepared("BEGIN EXCLUSIVE").await.unwrap();
    let locked_at = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            server.message(false).await.status,
            200,
            "the proxy does not wait"
        );
    }
    // A change the API cannot store is an error, not a 200 that is lost later.
    let resume = server.post("/api/accounts/a/pause", "").await;
    assert_eq!(resume.status, 500, "{}", resume.text());
    assert!(resume.json()["error"].as_str().unwrap().contains("locked"));
    let left = Duration::from_secs(7).saturating_sub(locked_at.elapsed());
    tokio::time::sleep(left).await;
    blocker.execute_unprepared("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();

    // Writable again: everything recorded during the outage is stored, nothing dropped.
    assert!(
        eventually(Duration::from_secs(15), || async {
            server
                .json("/api/requests?limit=100")
                .await
                .as_array()
                .unwrap()
                .len()
                == 25
        })
        .await,
        "{}",
        server.log()
    );
    let stats = server.json("/api/stats").await;
    assert_eq!(stats["total_requests"], 25);
    assert_eq!(stats["dropped_records"], 0);
    let log = server.log();
    assert!(
        log.contains("could not store request records; keeping them"),
        "{log}"
    );
    assert!(log.contains("the database takes writes again"), "{log}");
    // And the account is still in rotation (the refused pause was not applied).
    assert_eq!(server.account("a").await["status"], "active");
    let output = env.cli(&["list"]);
    assert!(output.status.success(), "the CLI works again");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_connections_are_closed_and_the_limit_refuses_cleanly() {
    let mut env = Env::sqlite().await;
    env.set("CLAUDEFLARE_HEADER_READ_TIMEOUT_MS", "700");
    env.set("CLAUDEFLARE_MAX_CONNECTIONS", "6");
    env.add_keys(&["a"]);
    let server = env.start();
    let address = address(&server);

    // A slow client (a byte every 100 ms, never finishing its headers) is cut after the
    // header-read timeout; meanwhile others are served at once.
    let mut slow = TcpStream::connect(&address).await.unwrap();
    let dribble = tokio::spawn(async move {
        for byte in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " {
            if slow.write_all(&[*byte]).await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (slow, false)
    });
    let started = Instant::now();
    assert_eq!(server.get("/health").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    let (mut slow, cut_while_writing) = dribble.await.unwrap();
    assert!(
        cut_while_writing || closed_within(&mut slow, Duration::from_secs(2)).await,
        "the slow client was not cut"
    );

    // A keep-alive connection left idle after its request is closed too.
    let mut idle = TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle keep-alive kept"
    );

    // Connections that send nothing fill the limit; the next one is answered 503 and closed,
    // and once the silent ones time out, the server answers again.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(&address).await.unwrap();
    let answer = read_all(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains(r#""type":"error""#) && answer.contains("too many connections"));
    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(3)).await);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            server.get("/health").await.status == 200
        })
        .await
    );
    server.wait_log("the connection limit is reached").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_by_the_shutdown_ends_with_an_error_event_and_is_recorded_so() {
    let mut env = Env::sqlite().await;
    env.set("CLAUDEFLARE_SHUTDOWN_GRACE_SECONDS", "1");
    env.add_keys(&["a"]);
    env.mock.script(
        &key("a"),
        [Reply::Stream {
            delay: Duration::from_millis(250),
            fail_after: None,
            chunk_size: Some(48),
        }],
    );
    let mut server = env.start();
    let body = serde_json::json!({"model": "claude-opus-4-8", "stream": true, "messages": []});
    let response = server
        .client
        .open(
            http::Method::POST,
            "/v1/messages",
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    let mut body = response.into_body();
    let mut received = String::new();
    use http_body_util::BodyExt;
    while !received.contains("content_block_start") {
        let frame = body.frame().await.unwrap().unwrap();
        received.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    }
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap())),
            Err(error) => panic!("the stream broke instead of ending: {error}\n{received}"),
        }
    }
    let tail = &received[received.rfind("event: ").unwrap()..];
    assert!(tail.starts_with("event: error"), "{received}");
    assert!(tail.contains("shutting down"), "{tail}");
    let status = server.terminate_wait(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", server.log());

    let server = env.start();
    let requests = server.json("/api/requests").await;
    assert_eq!(
        requests[0]["error"], "cut by the server's shutdown",
        "{requests}"
    );
    assert_eq!(
        requests[0]["input_tokens"], 25,
        "the tokens seen before the cut count"
    );
    assert_eq!(requests[0]["cache_read_input_tokens"], 1000);
    assert!(requests[0]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_but_v1_paths_reaches_the_upstream() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    for (method, path) in [
        (http::Method::GET, "/v1/../api/oauth/usage"),
        (http::Method::GET, "/v1/%2e%2e/api/oauth/usage"),
        (
            http::Method::POST,
            "/v1/%2E%2E/api/oauth/claude_cli/create_api_key",
        ),
        (
            http::Method::POST,
            "/v1/messages/..%2f..%2fapi/oauth/claude_cli/create_api_key",
        ),
        (http::Method::GET, "/v1/./models"),
    ] {
        let response = server
            .client
            .send(method, path, &[("x-api-key", "client")], "")
            .await;
        assert_eq!(response.status, 400, "{path}");
        assert_eq!(
            response.json()["error"]["type"],
            "invalid_request_error",
            "{path}"
        );
    }
    assert!(env.mock.requests().is_empty(), "{:?}", env.mock.requests());
    assert!(env.mock.created_keys().is_empty());
    assert_eq!(env.mock.usage_calls(&key("a")), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_upstream_is_a_502_after_the_requests_retries_not_each_accounts() {
    let mut env = Env::sqlite().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    env.set("CLAUDEFLARE_UPSTREAM_URL", &refusing);
    env.set("RETRY_DELAY_MS", "100");
    env.add_keys(&["a", "b", "c"]);
    let server = env.start();
    let started = Instant::now();
    let response = server.message(false).await;
    let waited = started.elapsed();
    assert_eq!(response.status, 502, "{}", response.text());
    // 100 + 200 + 400 ms of backoff: once for the request. Once per account it was 2.1 s.
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    // And the log says so as an error (a 5xx of claudeflare's), not a warning.
    server.wait_log("ERROR").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_keeps_its_error_shape_and_client_errors_are_warnings() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.mock.script(&key("a"), [Reply::status(400)]);
    let server = env.start();
    let error_of = |response: &claudeflare_testkit::TestResponse| {
        response.json()["error"].as_str().map(str::to_owned)
    };
    let wrong_method = server.get("/api/accounts/a/pause").await;
    assert_eq!(wrong_method.status, 405);
    assert!(error_of(&wrong_method).unwrap().contains("GET"));
    let delete = server
        .client
        .send(http::Method::DELETE, "/api/stats", &[], "")
        .await;
    assert_eq!(delete.status, 405);
    assert!(error_of(&delete).is_some(), "{}", delete.text());
    let big = format!(r#"{{"strategy": "{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let too_large = server.post("/api/config/strategy", &big).await;
    assert_eq!(too_large.status, 413);
    assert!(error_of(&too_large).is_some(), "{}", too_large.text());
    let not_utf8 = server.post("/api/accounts/%FF%FE/pause", "").await;
    assert_eq!(not_utf8.status, 400);
    assert!(error_of(&not_utf8).is_some(), "{}", not_utf8.text());
    for body in [r#"["round-robin"]"#, r#""round-robin""#, "5"] {
        let response = server.post("/api/config/strategy", body).await;
        assert_eq!(response.status, 400, "{body}");
        assert!(error_of(&response).unwrap().contains("object"), "{body}");
    }
    let tier = server.post("/api/accounts/a/tier", "[5]").await;
    assert_eq!(tier.status, 400);
    assert_eq!(
        server.json("/api/config/strategy").await["strategy"],
        "session"
    );

    // An upstream 400 is the client's business: a warning in the log, not an error.
    assert_eq!(server.message(false).await.status, 400);
    let log = server.wait_log("request refused").await;
    let line = log.lines().find(|l| l.contains("request refused")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(!log.lines().any(|l| l.contains("ERROR")), "{log}");

    // No other site may frame the dashboard.
    for path in ["/", "/dashboard"] {
        let page = server.get(path).await;
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            page.header("content-security-policy"),
            Some("frame-ancestors 'none'")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_config_folder_degrades_health_and_the_cli_does_not_start_over() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let mut server = env.start();
    assert_eq!(server.json("/health").await["status"], "ok");
    // As `rm -rf` would: the server may write a file into it meanwhile (SQLite's WAL), so try
    // again until the folder is gone.
    let folder = env.config_path().parent().unwrap().to_owned();
    for attempt in 0.. {
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => break,
            Err(error) if attempt < 20 => {
                eprintln!("removing the folder again: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot remove {}: {error}", folder.display()),
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.json("/health").await["status"] == "degraded"
        })
        .await
    );
    let health = server.json("/health").await;
    let problem = health["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("claude-accounts.db") && problem.contains("deleted"),
        "{problem}"
    );
    server.wait_log("the server is degraded").await;
    assert_eq!(server.message(false).await.status, 200, "it still proxies");

    // The CLI does not quietly make a new, empty database while the server holds the old one.
    let output = env.cli(&["list"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("was deleted while a claudeflare server"),
        "{stderr}"
    );
    assert!(stderr.contains(&server.child.id().to_string()), "{stderr}");
    assert!(!env.db_path().exists(), "nothing was created");

    // With the server stopped, a new start is a new start.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let list = env.ok(&["list"]);
    assert!(list.contains("No accounts"), "{list}");
}

/// `chattr +i` on the database and its `-wal` for 3 s under traffic, as a backup tool or a full
/// disk would make them (not on `-shm`: ext4 answers a write to a mapped page of an immutable
/// file with SIGBUS, which ends any SQLite program; see `db/sqlite.rs`): every record made before, during and after is in the file
/// after a clean stop, counted by the `sqlite3` CLI, and every read agrees meanwhile. Needs root
/// and a file system with immutable files (ext4 here and in CI); skipped elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn records_made_while_the_database_files_are_immutable_are_all_stored() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let mut server = env.start();
    let db = env.db_path();
    let files: Vec<String> = ["", "-wal"]
        .iter()
        .map(|suffix| format!("{}{suffix}", db.display()))
        .collect();
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .args(&files)
            .status()
            .is_ok_and(|s| s.success())
    };
    for _ in 0..3 {
        assert_eq!(server.message(false).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !chattr("+i") {
        assert!(
            std::env::var_os("CI").is_none(),
            "chattr +i must work in CI (root on ext4)"
        );
        eprintln!("skipped: chattr +i does not work here");
        return;
    }
    for _ in 0..10 {
        assert_eq!(
            server.message(false).await.status,
            200,
            "the proxy does not wait"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let health = server.json("/health").await;
    assert!(chattr("-i"), "chattr -i");
    assert_eq!(health["status"], "degraded", "{health}");
    for _ in 0..2 {
        assert_eq!(server.message(false).await.status, 200);
    }
    // Every read agrees, whichever pooled connection serves it. (Storing again can take a
    // while: a pool connection asked for while the files were immutable waits out the pool's
    // 10 s acquire timeout, then the writer's backoff; seen at 14–17 s on a loaded machine.)
    assert!(
        eventually(Duration::from_secs(40), || async {
            server.json("/api/stats").await["total_requests"] == 15
        })
        .await,
        "{}",
        server.log()
    );
    for _ in 0..8 {
        assert_eq!(server.json("/api/stats").await["total_requests"], 15);
        let rows = server.json("/api/requests?limit=100").await;
        assert_eq!(rows.as_array().unwrap().len(), 15);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.json("/health").await["status"] == "ok"
        })
        .await
    );
    assert!(server.terminate(Duration::from_secs(20)).success());
    let count = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM requests; PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout), "15\nok\n");
    // And the CLI is not locked out.
    assert!(env.cli(&["pause", "a"]).status.success());
}

/// Stalled request bodies (20 clients that send 4 MB of a 30 MB body and stop) are answered
/// 408 once `body_read_timeout_ms` has passed, their connections closed and their memory
/// freed; nothing of them reaches an account.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_request_bodies_are_cut_at_the_read_timeout() {
    let mut env = Env::sqlite().await;
    env.set("CLAUDEFLARE_BODY_READ_TIMEOUT_MS", "1500");
    env.add_keys(&["a"]);
    let server = env.start();
    let address = address(&server);
    let head = "POST /v1/messages HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-api-key: x\r\ncontent-length: 30000000\r\n\r\n";
    let chunk = vec![b' '; 4_000_000];
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&chunk).await.unwrap();
        clients.push(stream);
    }
    for mut stream in clients {
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive in time"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(env.mock.requests().len(), 0, "nothing reached the upstream");
    // Served as usual meanwhile and after.
    assert_eq!(server.message(false).await.status, 200);
}

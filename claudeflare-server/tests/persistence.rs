//! State that must survive: records, rate limits, sticky sessions; CLI changes reaching a running
//! server; graceful shutdown. Each test runs on SQLite, and on PostgreSQL when
//! `CLAUDEFLARE_TEST_POSTGRES_URL` is set (CI sets it; there a skip is a failure).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{Reply, sse};
use common::{Backend, Env, eventually, key};
use http_body_util::BodyExt;

/// Equal to the microsecond (PostgreSQL stores microseconds).
fn assert_same_instant(a: &str, b: &str) {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let difference = (parse(a) - parse(b)).num_microseconds().unwrap().abs();
    assert!(difference < 1, "{a} vs {b}");
}

async fn records_and_state_survive_a_restart(backend: Backend) {
    let Some(env) = Env::new(backend).await else {
        return;
    };
    env.add_keys(&["a", "b", "c"]);
    env.mock.script(&key("a"), [Reply::rate_limited(3600)]);
    let mut server = env.start();
    let first = server.message(false).await;
    assert_eq!(
        first.header("x-claudeflare-account"),
        Some("b"),
        "a is limited: failover to b"
    );
    let streamed = server.message(true).await;
    assert_eq!(
        streamed.header("x-claudeflare-account"),
        Some("b"),
        "the session stays on b"
    );
    assert_eq!(
        streamed.body,
        sse::message_stream("claude-sonnet-4-20250514")
    );

    let a = server.account("a").await;
    assert_eq!(a["status"], "rate_limited");
    assert_eq!(a["rate_limit_status"], "rejected");
    let limited_until = a["rate_limited_until"].as_str().unwrap().to_owned();
    let b = server.account("b").await;
    let session_start = b["session_start"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 2
        })
        .await
    );
    let requests = server.json("/api/requests").await;
    assert_eq!(requests[0]["stream"], true, "newest first");
    assert_eq!(requests[1]["failover_attempts"], 1);
    assert_eq!(requests[0]["input_tokens"], 25);
    assert_eq!(requests[0]["output_tokens"], 42);
    assert_eq!(requests[0]["cache_read_input_tokens"], 1000);
    assert_eq!(requests[0]["cache_creation_input_tokens"], 7);
    // Sonnet 4: 3 five-minute cache writes at 3.75, 4 one-hour ones at 6 (2 × input).
    let cost = (25.0 * 3.0 + 42.0 * 15.0 + 3.0 * 3.75 + 4.0 * 6.0 + 1000.0 * 0.3) / 1e6;
    assert!((requests[0]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    let stats = server.json("/api/stats").await;
    assert_eq!(stats["total_requests"], 2);
    assert_eq!(stats["input_tokens"], 50);
    assert!((stats["total_cost_usd"].as_f64().unwrap() - 2.0 * cost).abs() < 1e-9);
    let log = server.wait_log("failing over").await;
    assert!(log.contains("WARN"), "failover is logged as a warning");
    assert!(!log.contains("SECRET"), "no key in the log");

    let status = server.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let first_log = server.log();
    let server = env.start();
    let a = server.account("a").await;
    assert_eq!(a["status"], "rate_limited", "the limit survives");
    assert_same_instant(a["rate_limited_until"].as_str().unwrap(), &limited_until);
    let b = server.account("b").await;
    let restarted = b["session_start"].as_str();
    let restarted = restarted
        .unwrap_or_else(|| panic!("{b} lost its state; the log before the restart:\n{first_log}"));
    assert_same_instant(restarted, &session_start);
    assert_eq!(b["request_count"], 2);
    assert_eq!(
        server.message(false).await.header("x-claudeflare-account"),
        Some("b"),
        "same sticky account"
    );
    let history = server.json("/api/requests").await;
    assert!(
        history.as_array().unwrap().len() >= 2,
        "the history survives: {history}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_resumes_state_sqlite() {
    records_and_state_survive_a_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_resumes_state_postgres() {
    records_and_state_survive_a_restart(Backend::Postgres).await;
}

async fn cli_changes_reach_the_running_server(backend: Backend) {
    let Some(env) = Env::new(backend).await else {
        return;
    };
    env.add_keys(&["a", "b"]);
    let server = env.start();
    let within = Duration::from_secs(2) + Duration::from_millis(500);

    env.ok(&["pause", "a"]);
    assert!(
        eventually(within, || async {
            server.account("a").await["status"] == "paused"
        })
        .await
    );
    assert_eq!(
        server.message(false).await.header("x-claudeflare-account"),
        Some("b")
    );
    env.ok(&["set-tier", "b", "5"]);
    assert!(eventually(within, || async { server.account("b").await["tier"] == 5 }).await);
    env.ok(&["add", "c", "--api-key", &key("c")]);
    assert!(
        eventually(within, || async {
            server.json("/health").await["accounts"] == 3
        })
        .await
    );
    env.ok(&["remove", "b", "--yes"]);
    assert!(eventually(within, || async { server.account("b").await.is_null() }).await);
    assert_eq!(
        server.message(false).await.header("x-claudeflare-account"),
        Some("c")
    );
    env.ok(&["resume", "a"]);
    assert!(
        eventually(within, || async {
            server.account("a").await["status"] == "active"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_changes_reach_the_running_server_sqlite() {
    cli_changes_reach_the_running_server(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_changes_reach_the_running_server_postgres() {
    cli_changes_reach_the_running_server(Backend::Postgres).await;
}

async fn shutdown_lets_a_stream_finish(backend: Backend) {
    let Some(env) = Env::new(backend).await else {
        return;
    };
    env.add_keys(&["a"]);
    env.mock.script(
        &key("a"),
        [Reply::Stream {
            delay: Duration::from_millis(20),
            fail_after: None,
            chunk_size: Some(32),
        }],
    );
    let mut server = env.start();
    let body =
        serde_json::json!({"model": "claude-sonnet-4-20250514", "stream": true, "messages": []});
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
    let mut received = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .to_vec();
    let pid = server.child.id();
    let terminate = std::thread::spawn(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    });
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(terminate.join().unwrap().success());
    assert_eq!(
        received,
        sse::message_stream("claude-sonnet-4-20250514"),
        "the stream finished intact"
    );
    let status = server.terminate_wait(Duration::from_secs(10));
    assert!(status.success(), "clean exit: {status}\n{}", server.log());
    assert!(server.log().contains("shutting down"));
    // The record was flushed before exit.
    let server = env.start();
    let requests = server.json("/api/requests").await;
    assert_eq!(requests.as_array().unwrap().len(), 1, "{requests}");
    assert_eq!(requests[0]["success"], true);
    assert_eq!(requests[0]["output_tokens"], 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_mid_stream_sqlite() {
    shutdown_lets_a_stream_finish(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_mid_stream_postgres() {
    shutdown_lets_a_stream_finish(Backend::Postgres).await;
}

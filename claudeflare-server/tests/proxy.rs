//! The proxy as a user drives it: strategies switched live, failover visible in the API and the
//! metrics, and no secret in the log even at DEBUG.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::Reply;
use common::{Env, eventually, key};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn strategies_switch_live_and_are_written_back() {
    let mut env = Env::sqlite().await;
    env.set("LB_STRATEGY", "session");
    env.add_keys(&["a", "b"]);
    let server = env.start();
    let served = |response: claudeflare_testkit::TestResponse| {
        response.header("x-claudeflare-account").unwrap().to_owned()
    };
    assert_eq!(served(server.message(false).await), "a");
    assert_eq!(served(server.message(false).await), "a", "session: sticky");

    let response = server
        .post("/api/config/strategy", r#"{"strategy": "round-robin"}"#)
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["strategy"], "round-robin");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(served(server.message(false).await));
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "round robin uses both: {seen:?}"
    );
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(env.config_path()).unwrap()).unwrap();
    assert_eq!(
        file["lb_strategy"], "round-robin",
        "written back to the file"
    );
    assert_eq!(file["retry_attempts"], 3, "the rest of the file is kept");
    assert_eq!(
        server.json("/api/config/strategy").await["strategy"],
        "round-robin"
    );
    // A person edits another setting in the file: the server reloads it, and the API's choice
    // still holds over LB_STRATEGY.
    assert!(!server.log().contains("configuration reloaded"));
    let mut edited = file.clone();
    edited["retry_attempts"] = 4.into();
    std::fs::write(env.config_path(), edited.to_string()).unwrap();
    server.wait_log("configuration reloaded").await;
    assert_eq!(server.json("/health").await["strategy"], "round-robin");
    drop(server);

    env.extra.clear();
    let server = env.start();
    assert_eq!(
        server.json("/health").await["strategy"],
        "round-robin",
        "and used at the next start"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_limits_show_in_the_api_and_metrics_and_no_secret_is_logged() {
    let mut env = Env::sqlite().await;
    env.set("LOG_LEVEL", "DEBUG");
    env.add_keys(&["a", "b"]);
    env.mock.script(&key("a"), [Reply::rate_limited(120)]);
    env.mock.script(&key("b"), [Reply::status(529)]);
    let server = env.start();
    let response = server.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("x-claudeflare-account"),
        Some("b"),
        "429 on a, 529 then 200 on b"
    );

    let a = server.account("a").await;
    assert_eq!(a["status"], "rate_limited");
    assert_eq!(a["rate_limit_status"], "rejected");
    let until =
        chrono::DateTime::parse_from_rfc3339(a["rate_limited_until"].as_str().unwrap()).unwrap();
    let seconds = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    assert!((100..=121).contains(&seconds), "{seconds}");
    assert_eq!(server.json("/api/stats").await["active_accounts"], 1);

    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"claudeflare_rate_limit_events_total{account="a"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("claudeflare_failovers_total 1"),
        "{metrics}"
    );

    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 1
        })
        .await
    );
    let log = server.wait_log("request method=POST").await;
    assert!(log.contains("DEBUG"), "the log is at DEBUG: {log}");
    assert!(log.contains("retrying"));
    assert!(!log.contains("SECRET"), "a key leaked into the log:\n{log}");
    assert!(
        !log.contains("client-key"),
        "the client's key leaked into the log"
    );
}

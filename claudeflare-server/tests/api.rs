//! Every HTTP API endpoint the README documents, with its errors, against the real binary.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{Env, key};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_in_its_documented_shapes() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    let server = env.start();
    assert_eq!(server.message(false).await.status, 200);

    assert_eq!(
        server.json("/health").await,
        json!({"status": "ok", "accounts": 2, "strategy": "session"})
    );

    let accounts = server.json("/api/accounts").await;
    let a = &accounts[0];
    for field in [
        "id",
        "name",
        "provider",
        "mode",
        "tier",
        "paused",
        "status",
        "rate_limited_until",
        "rate_limit_status",
        "session_start",
        "session_request_count",
        "request_count",
        "total_requests",
        "last_used",
        "token_expires_at",
        "created_at",
    ] {
        assert!(
            a.get(field).is_some(),
            "account object lacks `{field}`: {a}"
        );
    }
    assert_eq!(
        (
            a["name"].as_str(),
            a["provider"].as_str(),
            a["mode"].as_str()
        ),
        (Some("a"), Some("anthropic"), Some("console"))
    );
    assert_eq!(a["status"], "active");
    assert!(
        !accounts.to_string().contains("SECRET"),
        "no key in /api/accounts"
    );

    assert!(
        common::eventually(std::time::Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 1
        })
        .await,
        "the record is stored"
    );
    let requests = server.json("/api/requests").await;
    let r = &requests[0];
    for field in [
        "id",
        "timestamp",
        "method",
        "path",
        "account",
        "status",
        "success",
        "error",
        "response_time_ms",
        "failover_attempts",
        "model",
        "stream",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cost_usd",
        "requested_model",
        "price_known",
    ] {
        assert!(
            r.get(field).is_some(),
            "request object lacks `{field}`: {r}"
        );
    }
    assert_eq!(r["status"], 200);
    assert_eq!(r["account"], "a");

    let stats = server.json("/api/stats").await;
    for field in [
        "total_requests",
        "successful_requests",
        "success_rate",
        "active_accounts",
        "avg_response_time_ms",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "total_cost_usd",
        "dropped_records",
        "unpriced_models",
    ] {
        assert!(stats.get(field).is_some(), "stats lack `{field}`: {stats}");
    }
    assert_eq!(stats["success_rate"], 100.0);
    assert_eq!(stats["active_accounts"], 2);
    assert_eq!(stats["dropped_records"], 0);

    let config = server.json("/api/config").await;
    assert_eq!(config["lb_strategy"], "session");
    assert_eq!(config["retry_delay_ms"], 20);
    assert_eq!(
        server.json("/api/strategies").await,
        json!([
            "session",
            "least-requests",
            "round-robin",
            "weighted",
            "weighted-round-robin"
        ])
    );
    assert_eq!(
        server.json("/api/config/strategy").await,
        json!({"strategy": "session"})
    );

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for (name, kind) in [
        ("requests", "counter"),
        ("upstream_latency_seconds", "histogram"),
        ("overhead_seconds", "histogram"),
        ("failovers", "counter"),
        ("token_refreshes", "counter"),
        ("dropped_records", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE claudeflare_{name} {kind}")),
            "metrics lack {name}:\n{text}"
        );
    }
    assert!(
        text.contains("claudeflare_overhead_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"claudeflare_requests_total{account="a",status="200"} 1"#),
        "{text}"
    );
    let dashboard = server.get("/dashboard").await;
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.text().contains("<td>a</td>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_json_errors() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    let error = |response: &claudeflare_testkit::TestResponse| {
        response.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    for query in ["limit=abc", "limit=0", "limit=-5"] {
        let response = server.get(&format!("/api/requests?{query}")).await;
        assert_eq!(response.status, 400, "{query}");
        assert!(
            error(&response).contains("limit"),
            "{query}: {}",
            response.text()
        );
    }
    assert_eq!(
        server.get("/api/requests?limit=5000").await.status,
        200,
        "clamped to 1000"
    );
    let response = server.get("/api/requests?status=broken").await;
    assert_eq!(response.status, 400);
    assert!(error(&response).contains("status"), "{}", response.text());

    let response = server
        .post("/api/config/strategy", r#"{"strategy": "random"}"#)
        .await;
    assert_eq!(response.status, 400);
    assert!(
        error(&response).contains("least-requests"),
        "lists the valid names: {}",
        response.text()
    );
    let response = server.post("/api/config/strategy", "{not json").await;
    assert_eq!(response.status, 400);
    assert!(error(&response).starts_with("invalid JSON body"));

    let response = server.post("/api/accounts/a/tier", r#"{"tier": 3}"#).await;
    assert_eq!(response.status, 400);
    assert!(error(&response).contains("1, 5, 20"));
    assert_eq!(
        server
            .post("/api/accounts/a/tier", r#"{"tier": "five"}"#)
            .await
            .status,
        400
    );
    assert_eq!(server.post("/api/accounts/a/tier", "").await.status, 400);
    let response = server
        .post("/api/accounts/nobody/tier", r#"{"tier": 5}"#)
        .await;
    assert_eq!(response.status, 404);
    assert_eq!(error(&response), "no account named `nobody`");
    assert_eq!(
        server.post("/api/accounts/nobody/pause", "").await.status,
        404
    );
    assert_eq!(
        server.post("/api/accounts/nobody/resume", "").await.status,
        404
    );
    let response = server.get("/api/nothing").await;
    assert_eq!(response.status, 404);
    assert!(error(&response).contains("/api/nothing"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tier_pause_and_resume_through_the_api() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    let server = env.start();
    let response = server.post("/api/accounts/b/tier", r#"{"tier": 20}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.account("b").await["tier"], 20);
    let id = server.account("a").await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .post(&format!("/api/accounts/{id}/pause"), "")
            .await
            .status,
        200,
        "by id too"
    );
    assert_eq!(server.account("a").await["status"], "paused");
    let response = server.message(false).await;
    assert_eq!(
        response.header("x-claudeflare-account"),
        Some("b"),
        "a paused account gets no traffic"
    );
    assert_eq!(server.post("/api/accounts/a/resume", "").await.status, 200);
    assert_eq!(server.account("a").await["paused"], false);
    // The CLI sees the same database.
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(listed[1]["tier"], 20);
    // Once the requests above are logged, no key is in the log.
    let log = server.wait_log("request method=POST").await;
    assert!(!log.contains(&key("a")));
}

/// Connections are dealt out to one HTTP thread per core, while the API runs on the main
/// runtime: many at once, proxied and API requests alike, are all answered and recorded.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_connections_are_all_served_and_recorded() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let client = server.client.clone();
        let mut body = body.clone();
        body["stream"] = json!(i % 3 == 1);
        tasks.spawn(async move {
            if i % 3 == 2 {
                let response = client.get("/api/stats").await;
                (i, response.status, response.text())
            } else {
                let response = client
                    .post_json("/v1/messages", &body, &[("x-api-key", "client-key")])
                    .await;
                (i, response.status, response.text())
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, status, text) = joined.unwrap();
        assert_eq!(status, 200, "request {i}: {text}");
        match i % 3 {
            0 => assert!(text.contains("\"usage\""), "request {i}: {text}"),
            1 => assert!(text.contains("message_stop"), "request {i}: {text}"),
            _ => assert!(text.contains("total_requests"), "request {i}: {text}"),
        }
    }
    let recorded = common::eventually(std::time::Duration::from_secs(5), || async {
        server.json("/api/stats").await["total_requests"] == json!(16)
    })
    .await;
    assert!(recorded, "{}", server.json("/api/stats").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_compressed_for_browsers_that_ask() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    let plain = server.get("/dashboard").await;
    assert_eq!(plain.header("content-encoding"), None);
    let gzipped = server
        .client
        .send(
            http::Method::GET,
            "/dashboard",
            &[("accept-encoding", "gzip")],
            "",
        )
        .await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert!(
        gzipped.body.len() * 3 < plain.body.len(),
        "{} bytes gzipped, {} plain",
        gzipped.body.len(),
        plain.body.len()
    );
    // The JSON API is answered as before.
    let stats = server
        .client
        .send(
            http::Method::GET,
            "/api/stats",
            &[("accept-encoding", "gzip")],
            "",
        )
        .await;
    assert_eq!(stats.header("content-encoding"), None);
    assert_eq!(stats.json()["total_requests"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hourly_totals_and_the_failure_filter() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.mock
        .script(&key("a"), [claudeflare_testkit::Reply::status(400)]);
    let server = env.start();
    assert_eq!(server.message(false).await.status, 400);
    for _ in 0..2 {
        assert_eq!(server.message(false).await.status, 200);
    }
    let recorded = common::eventually(std::time::Duration::from_secs(3), || async {
        server.json("/api/stats").await["total_requests"] == 3
    })
    .await;
    assert!(recorded);
    let hourly = server.json("/api/stats/hourly").await;
    let hours = hourly.as_array().unwrap();
    assert_eq!(hours.len(), 1, "{hourly}");
    let this_hour = chrono::Utc::now().format("%Y-%m-%dT%H").to_string();
    assert_eq!(hours[0]["hour"], this_hour.as_str());
    assert_eq!(hours[0]["total_requests"], 3);
    assert_eq!(hours[0]["successful_requests"], 2);
    assert!(hours[0]["output_tokens"].as_u64().unwrap() > 0);

    let failed = server.json("/api/requests?status=error").await;
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["status"], 400);
    let ok = server.json("/api/requests?status=ok").await;
    assert_eq!(ok.as_array().unwrap().len(), 2);
}

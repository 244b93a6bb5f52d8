//! Today's Anthropic through the real binary: the answers that look alike (bans, scoped refusals,
//! billing refusals), current prices, rotation before the 429, and an upgrade from the previous
//! release with its configuration file and database.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{BANNED_MESSAGE, EXTRA_USAGE_MESSAGE, LONG_CONTEXT_MESSAGE, Reply};
use common::{Env, eventually, key};
use serde_json::{Value, json};

fn listed(env: &Env, name: &str) -> Value {
    let list: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_banned_account_leaves_rotation_with_the_upstreams_reason_until_resumed() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    env.mock.script(&key("a"), [Reply::banned()]);
    let mut server = env.start();
    let response = server.ask("claude-sonnet-4-5", true).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));

    let a = server.account("a").await;
    assert_eq!(a["status"], "forbidden");
    assert_eq!(a["status_reason"], BANNED_MESSAGE);
    for _ in 0..3 {
        let response = server.ask("claude-sonnet-4-5", false).await;
        assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    }
    assert_eq!(
        env.mock
            .requests()
            .iter()
            .filter(|r| r.account.as_deref() == Some(key("a").as_str()))
            .count(),
        1,
        "the banned account is not tried again"
    );
    // Stored at once: the CLI sees it, with the reason, and the dashboard shows it.
    assert!(
        eventually(Duration::from_secs(1), || async {
            listed(&env, "a")["status"] == "forbidden"
        })
        .await
    );
    let listed_a = listed(&env, "a");
    assert_eq!(listed_a["status"], "forbidden");
    assert_eq!(listed_a["status_reason"], BANNED_MESSAGE);
    let table = env.ok(&["list"]);
    assert!(
        table.contains("forbidden: OAuth authentication is currently not allowed"),
        "{table}"
    );
    let page = server.get("/dashboard").await.text();
    assert!(
        page.contains("forbidden") && page.contains(BANNED_MESSAGE),
        "{page}"
    );
    let resume = format!(
        r#"data-action="resume" data-account="{}""#,
        a["id"].as_str().unwrap()
    );
    assert!(page.contains(&resume), "the dashboard offers to resume it");
    let requests = server.history(4).await;
    let first = requests.last().unwrap();
    assert_eq!(first["failover_attempts"], 1);

    // A restart does not bring it back.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = env.start();
    assert_eq!(server.account("a").await["status"], "forbidden");
    assert_eq!(
        server
            .ask("claude-sonnet-4-5", false)
            .await
            .header("x-claudeflare-account"),
        Some("b")
    );

    // A person resumes it: back in rotation, reason gone.
    env.ok(&["resume", "a"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.account("a").await["status"] == "active"
        })
        .await
    );
    assert_eq!(server.account("a").await["status_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_resumes_a_banned_account() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    env.mock.script(&key("a"), [Reply::banned()]);
    let server = env.start();
    assert_eq!(server.ask("claude-opus-4-8", false).await.status, 200);
    assert_eq!(server.account("a").await["status"], "forbidden");
    let resumed = server.post("/api/accounts/a/resume", "").await;
    assert_eq!(resumed.status, 200, "{}", resumed.text());
    assert_eq!(server.account("a").await["status"], "active");
    assert_eq!(listed(&env, "a")["status"], "active", "stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn scoped_refusals_bench_nothing_and_the_client_gets_anthropics_answer() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    env.mock.script(
        &key("a"),
        [Reply::long_context_refused(), Reply::long_context_refused()],
    );
    env.mock.script(
        &key("b"),
        [Reply::out_of_credits(), Reply::long_context_refused()],
    );
    let server = env.start();
    // The first request: a refuses it for its context, b for its credits; nobody is benched.
    let response = server.ask("claude-sonnet-4-5[1m]", false).await;
    assert_eq!(response.status, 429, "{}", response.text());
    let json = response.json();
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["error"]["message"], "Out of credits for this model.");
    let response = server.ask("claude-sonnet-4-5[1m]", true).await;
    assert_eq!(response.status, 429);
    assert_eq!(response.json()["error"]["message"], LONG_CONTEXT_MESSAGE);
    for name in ["a", "b"] {
        let account = server.account(name).await;
        assert_eq!(account["status"], "active", "{account}");
        assert_eq!(account["rate_limited_until"], Value::Null);
    }
    // Another model on the same accounts goes through at once.
    assert_eq!(server.ask("claude-sonnet-4-5", false).await.status, 200);
    let requests = server.history(3).await;
    let refused = &requests[1];
    assert_eq!(refused["status"], 429);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("refused for this model or beta"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_billing_refusal_and_a_429_without_reset_information() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    env.mock.script(
        &key("a"),
        [
            Reply::extra_usage_required(),
            Reply::limited_without_reset(),
        ],
    );
    let server = env.start();
    let response = server.ask("claude-opus-4-8", false).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["message"], EXTRA_USAGE_MESSAGE);
    assert_eq!(
        server.account("a").await["status"],
        "active",
        "not a rate limit"
    );
    let requests = server.history(1).await;
    let error = requests[0]["error"].as_str().unwrap();
    assert!(error.starts_with("extra usage required"), "{error}");
    assert!(error.contains("Turn on extra usage"), "{error}");

    // No reset information at all: fail over now, bench a for the default minute only.
    let before = chrono::Utc::now();
    let response = server.ask("claude-opus-4-8", false).await;
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    let a = server.account("a").await;
    assert_eq!(a["status"], "rate_limited");
    let until: chrono::DateTime<chrono::Utc> =
        a["rate_limited_until"].as_str().unwrap().parse().unwrap();
    let benched = until - before;
    assert!(
        benched >= chrono::TimeDelta::seconds(59) && benched <= chrono::TimeDelta::seconds(62),
        "{benched}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opus_4_8_request_costs_real_dollars_with_its_1_hour_cache_writes() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    assert_eq!(server.ask("claude-opus-4-8", false).await.status, 200);
    assert_eq!(server.ask("claude-opus-4-8", true).await.status, 200);
    // 25 input, 42 output, 1000 cache reads, 3 five-minute and 4 one-hour cache writes:
    // 25 × 5 + 42 × 25 + 3 × 6.25 + 4 × 10 + 1000 × 0.5 = 1733.75 per million.
    let expected = 0.001_733_75;
    let requests = server.history(2).await;
    for request in &requests {
        let cost = request["cost_usd"].as_f64().unwrap();
        assert!((cost - expected).abs() < 1e-12, "{request}");
        assert_eq!(request["cache_creation_input_tokens"], 7);
    }
    let stats = server.json("/api/stats").await;
    let total = stats["total_cost_usd"].as_f64().unwrap();
    assert!((total - 2.0 * expected).abs() < 1e-12, "{stats}");
    let metrics = server.get("/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"claudeflare_cost_usd_total{account="a",model="claude-opus-4-8"}"#)
        })
        .unwrap_or_else(|| panic!("no cost in:\n{metrics}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((counted - 2.0 * expected).abs() < 1e-12, "{line}");
    let page = server.get("/dashboard").await.text();
    assert!(page.contains("$0.0035"), "the cost today on the dashboard");

    // A model the table does not know costs nothing and is named once in the log.
    assert_eq!(server.ask("claude-opus-9", false).await.status, 200);
    assert_eq!(server.ask("claude-opus-9", false).await.status, 200);
    let log = server.wait_log("no price known").await;
    assert_eq!(log.matches("no price known").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn utilization_moves_the_next_session_before_the_429_unless_turned_off() {
    for (rotate, expected) in [(None, "b"), (Some("1"), "a")] {
        let mut env = Env::sqlite().await;
        if let Some(rotate) = rotate {
            env.set("CLAUDEFLARE_ROTATE_AT_UTILIZATION", rotate);
        }
        env.add_keys(&["a", "b"]);
        env.mock
            .script(&key("a"), [Reply::allowed_warning(0.99, 0.40)]);
        let server = env.start();
        let first = server.ask("claude-sonnet-4-6", false).await;
        assert_eq!(first.header("x-claudeflare-account"), Some("a"));
        assert_eq!(
            server.account("a").await["rate_limit_status"],
            "allowed_warning"
        );
        assert_eq!(server.account("a").await["utilization_5h"], 0.99);
        let second = server.ask("claude-sonnet-4-6", false).await;
        assert_eq!(
            second.header("x-claudeflare-account"),
            Some(expected),
            "rotate_at_utilization = {rotate:?}"
        );
        assert_eq!(server.account("a").await["status"], "active");
        let config = server.json("/api/config").await;
        assert_eq!(
            config["rotate_at_utilization"].as_f64(),
            Some(rotate.map_or(0.98, |_| 1.0))
        );
    }
}

/// Build the database of the previous release: its migrations only, an account and a priced
/// request in it.
async fn previous_release_database(path: &std::path::Path) {
    use sea_orm::ConnectionTrait;
    use sea_orm_migration::MigratorTrait;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let db = sea_orm::Database::connect(&url).await.unwrap();
    // Up to the request rollups, which the third migration builds from the history.
    migrations::Migrator::up(&db, Some(2)).await.unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO accounts (id, name, provider, mode, tier, paused, api_key, created_at, version, counters_epoch, \
         session_request_count, request_count, total_requests, needs_reauth) \
         VALUES ('old-id', 'old', 'anthropic', 'console', 5, false, '{}', '2026-11-01T10:00:00Z', 0, 0, 0, 12, 12, false)",
        key("old")
    ))
    .await
    .unwrap();
    db.execute_unprepared(
        "INSERT INTO requests (id, timestamp, method, path, account_id, account_name, status, success, \
         response_time_ms, failover_attempts, model, stream, input_tokens, output_tokens, \
         cache_read_input_tokens, cache_creation_input_tokens, cost_usd) \
         VALUES ('old-request', '2026-11-20T10:00:00Z', 'POST', '/v1/messages', 'old-id', 'old', 200, true, \
         900, 0, 'claude-sonnet-4-20250514', false, 100, 100, 0, 0, 1.25)",
    )
    .await
    .unwrap();
    migrations::Migrator::up(&db, Some(2)).await.unwrap();
    assert_eq!(
        migrations::Migrator::get_pending_migrations(&db)
            .await
            .unwrap()
            .len(),
        migrations::Migrator::migrations().len() - 4,
        "the previous release had the first 4 migrations"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_keeps_the_accounts_the_history_and_the_users_choices() {
    let env = Env::sqlite().await;
    previous_release_database(&env.db_path()).await;
    // The previous release's defaults, and one value the user chose.
    std::fs::write(
        env.config_path(),
        json!({
            "port": 0,
            "oauth_token_url": "https://console.anthropic.com/v1/oauth/token",
            "oauth_authorize_url_max": "https://claude.ai/oauth/authorize",
            "oauth_authorize_url_console": "https://console.anthropic.com/oauth/authorize",
            "oauth_redirect_uri": "https://my-proxy.example/oauth/callback",
            "pricing": {"claude-sonnet-4": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
        })
        .to_string(),
    )
    .unwrap();
    // (The tests' environment points the token URL at the mock: the file's value is upgraded,
    // the environment's wins.)
    let server = env.start();
    let log = server
        .wait_log("replaced the pre-June-2026 OAuth defaults")
        .await;
    assert_eq!(
        log.matches("replaced the pre-June-2026").count(),
        1,
        "one line"
    );

    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(env.config_path()).unwrap()).unwrap();
    assert_eq!(
        file["oauth_token_url"],
        "https://platform.claude.com/v1/oauth/token"
    );
    assert_eq!(
        file["oauth_authorize_url_max"],
        "https://claude.com/cai/oauth/authorize"
    );
    assert_eq!(
        file["oauth_authorize_url_console"],
        "https://platform.claude.com/oauth/authorize"
    );
    assert_eq!(
        file["oauth_redirect_uri"], "https://my-proxy.example/oauth/callback",
        "the user's choice is kept"
    );
    assert_eq!(
        file["pricing"]["claude-sonnet-4"]["input"], 3,
        "the rest is kept"
    );
    let config = server.json("/api/config").await;
    assert_eq!(
        config["oauth_authorize_url_max"],
        "https://claude.com/cai/oauth/authorize"
    );

    // The account of the previous release serves, with its tier and counters.
    let old = server.account("old").await;
    assert_eq!(
        (old["tier"].as_u64(), old["total_requests"].as_u64()),
        (Some(5), Some(12))
    );
    assert_eq!(old["status"], "active");
    assert_eq!(old["status_reason"], Value::Null);
    let response = server.ask("claude-sonnet-4-20250514", false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-claudeflare-account"), Some("old"));
    // The old record keeps its cost; the new one is priced from the (overridden) table.
    let requests = server.history(2).await;
    assert_eq!(requests[1]["cost_usd"], 1.25);
    let stats = server.json("/api/stats").await;
    let new_cost = requests[0]["cost_usd"].as_f64().unwrap();
    assert!(new_cost > 0.0);
    assert!(
        (stats["total_cost_usd"].as_f64().unwrap() - (1.25 + new_cost)).abs() < 1e-9,
        "{stats}"
    );
    // The CLI reads the upgraded file without a note (nothing left to upgrade).
    let output = env.cli(&["list"]);
    assert!(output.status.success());
    assert!(!String::from_utf8_lossy(&output.stderr).contains("replaced"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_upgrades_an_old_file_too_and_says_so() {
    let env = Env::sqlite().await;
    std::fs::create_dir_all(env.config_path().parent().unwrap()).unwrap();
    std::fs::write(
        env.config_path(),
        r#"{"oauth_redirect_uri": "https://console.anthropic.com/oauth/code/callback"}"#,
    )
    .unwrap();
    let output = env.cli(&["list"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("oauth_redirect_uri"), "{stderr}");
    let file = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(
        file.contains("https://platform.claude.com/oauth/code/callback"),
        "{file}"
    );
}

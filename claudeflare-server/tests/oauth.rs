//! Accounts through OAuth: the PKCE `add` flow, console keys, rotating refresh coordinated across
//! processes, re-authentication, usage, and secrets encrypted at rest.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Env, eventually};
use serde_json::{Value, json};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn listed(env: &Env) -> Vec<Value> {
    serde_json::from_str::<Value>(&env.ok(&["list", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// A subscription whose first access token expires in `seconds`; refreshed ones last 8 hours.
fn add_max_expiring(env: &Env, name: &str, seconds: u64) {
    env.mock.set_token_expires_in(seconds);
    add_max(env, name, "1");
    env.mock.set_token_expires_in(8 * 3600);
}

fn add_max(env: &Env, name: &str, tier: &str) {
    let output = env.oauth(&["add", name, "--mode", "max", "--tier", tier], name, false);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_add_flow_signs_in_with_pkce_and_the_account_serves() {
    let env = Env::sqlite().await;
    let output = env.oauth(&["add", "m", "--mode", "max", "--tier", "5"], "m", false);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let url_line = stdout.lines().find(|l| l.starts_with("http")).unwrap();
    assert!(
        url_line.starts_with("https://claude.com/cai/oauth/authorize?"),
        "{url_line}"
    );
    assert!(stdout.contains("Paste the authorization code:"), "{stdout}");
    assert!(
        stdout.contains("Added subscription account `m` (tier 5)"),
        "{stdout}"
    );

    let grants = env.mock.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].grant_type, "authorization_code");
    assert!(
        grants[0].accepted,
        "the mock verified the PKCE verifier against the challenge"
    );
    assert_eq!(
        grants[0].body["redirect_uri"],
        "https://platform.claude.com/oauth/code/callback"
    );

    let accounts = listed(&env);
    assert_eq!(
        (accounts[0]["mode"].as_str(), accounts[0]["tier"].as_u64()),
        (Some("max"), Some(5))
    );
    assert!(accounts[0]["token_expires_at"].is_string());

    let server = env.start();
    let response = server.message(false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = env.mock.requests().pop().unwrap();
    assert_eq!(upstream.headers["authorization"], "Bearer sk-ant-oat01-m-1");
    assert!(
        upstream.headers["anthropic-beta"]
            .to_str()
            .unwrap()
            .contains("oauth-2025-04-20")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_state_or_a_missing_flag_is_refused() {
    let env = Env::sqlite().await;
    let output = env.oauth(&["add", "m", "--mode", "max", "--tier", "1"], "m", true);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("state does not match"),
        "{}",
        stderr(&output)
    );
    assert!(env.mock.grants().is_empty(), "nothing was exchanged");
    assert!(listed(&env).is_empty());

    let no_mode = env.cli(&["add", "x"]);
    assert!(!no_mode.status.success());
    assert!(stderr(&no_mode).contains("--mode"), "{}", stderr(&no_mode));
    let no_tier = env.cli(&["add", "x", "--mode", "max"]);
    assert!(!no_tier.status.success());
    assert!(stderr(&no_tier).contains("--tier"), "{}", stderr(&no_tier));
}

#[tokio::test(flavor = "multi_thread")]
async fn console_mode_creates_an_api_key_and_uses_it() {
    let env = Env::sqlite().await;
    let output = env.oauth(&["add", "c", "--mode", "console"], "c", false);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("https://platform.claude.com/oauth/authorize?")),
        "{stdout}"
    );
    let created = env.mock.created_keys();
    assert_eq!(created.len(), 1);
    assert_eq!(listed(&env)[0]["mode"], "console");
    assert_eq!(
        listed(&env)[0]["tier"],
        1,
        "console accounts default to tier 1"
    );
    let server = env.start();
    assert_eq!(server.message(false).await.status, 200);
    let upstream = env.mock.requests().pop().unwrap();
    assert_eq!(upstream.headers["x-api-key"], created[0].as_str());
    assert!(upstream.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refreshed_once_for_20_requests_and_the_rotation_survives_a_restart() {
    let env = Env::sqlite().await;
    add_max_expiring(&env, "m", 30);
    env.mock.set_token_delay(Duration::from_millis(300));
    let server = env.start();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = server.client.clone();
        set.spawn(async move {
            let body = json!({"model": "claude-sonnet-4-20250514", "messages": []});
            client.post_json("/v1/messages", &body, &[]).await.status
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let refreshes = env.mock.refreshes();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    assert!(refreshes[0].accepted);
    let (access, _) = env.mock.tokens("m").unwrap();
    assert!(
        env.mock
            .requests()
            .iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {access}").as_str())
    );
    drop(server);

    let server = env.start();
    assert_eq!(
        server.message(false).await.status,
        200,
        "the rotated tokens were stored"
    );
    assert_eq!(
        env.mock.requests().pop().unwrap().headers["authorization"],
        format!("Bearer {access}").as_str()
    );
    let refreshes = env.mock.refreshes().len();
    assert_eq!(refreshes, 1, "no refresh needed after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_refreshed_ahead_of_expiry_without_a_request() {
    let env = Env::sqlite().await;
    add_max_expiring(&env, "m", 5 * 60);
    let server = env.start();
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.mock
                .grants()
                .iter()
                .any(|g| g.grant_type == "refresh_token" && g.accepted)
        })
        .await,
        "refreshed within 10 minutes of expiry: {}",
        server.log()
    );
    assert!(
        env.mock
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/v1/messages")),
        "without any request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_racing_between_the_cli_and_the_server_loses_no_account() {
    let env = Env::sqlite().await;
    add_max_expiring(&env, "m", 60);
    env.mock.set_token_delay(Duration::from_millis(600));
    // The server refreshes ahead of expiry at start; the CLI asks for a refresh at the same time.
    let server = env.start();
    let cli = env.cli(&["refresh", "m"]);
    assert!(cli.status.success(), "{}", stderr(&cli));
    assert!(
        eventually(Duration::from_secs(5), || async {
            !server.log().is_empty()
        })
        .await
    );
    let refreshes = env.mock.refreshes();
    assert_eq!(
        refreshes.len(),
        1,
        "one process refreshed, the other adopted its tokens: {refreshes:?}"
    );
    assert!(refreshes.iter().all(|g| g.accepted));
    assert_eq!(listed(&env)[0]["status"], "active");
    let response = server.message(false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(server.account("m").await["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_needs_reauth_and_reauth_restores_the_same_account() {
    let env = Env::sqlite().await;
    add_max(&env, "m", "5");
    let server = env.start();
    for _ in 0..2 {
        assert_eq!(server.message(false).await.status, 200);
    }
    let before = server.account("m").await;
    env.mock.expire_access_token("m");
    env.mock.revoke("m");
    let response = server.message(false).await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response.text().contains("needs re-authentication"),
        "{}",
        response.text()
    );
    assert_eq!(server.account("m").await["status"], "needs_reauth");
    // The log says what to run.
    server.wait_log("claudeflare-server reauth m").await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            env.ok(&["list"]).contains("needs re-auth")
        })
        .await,
        "stored for the CLI"
    );

    let output = env.oauth(&["reauth", "m"], "m", false);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.account("m").await["status"] == "active"
        })
        .await,
        "{}\n{}",
        server.account("m").await,
        server.log()
    );
    let after = server.account("m").await;
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["tier"], 5);
    assert!(after["total_requests"].as_u64().unwrap() >= 3);
    assert_eq!(server.message(false).await.status, 200);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 4
        })
        .await,
        "history kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_polled_for_subscriptions() {
    let env = Env::sqlite().await;
    add_max(&env, "m", "20");
    env.mock.set_usage(
        "m",
        json!({
            "five_hour": {"utilization": 42.0, "resets_at": "2026-11-22T03:00:00Z"},
            "seven_day": {"utilization": 10.5, "resets_at": null},
            "seven_day_opus": null
        }),
    );
    let server = env.start();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !server.account("m").await["usage"].is_null()
        })
        .await
    );
    let usage = &server.account("m").await["usage"];
    assert_eq!(usage["five_hour"]["utilization"], 42.0);
    assert_eq!(usage["five_hour"]["resets_at"], "2026-11-22T03:00:00Z");
    assert_eq!(usage["seven_day"]["utilization"], 10.5);
    assert!(env.ok(&["list"]).contains("42% / 10%"));
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_in_the_limits_shape_shows_per_model_caps_and_feeds_rotation() {
    let mut env = Env::sqlite().await;
    env.set("CLAUDEFLARE_USAGE_POLL_INTERVAL_SECONDS", "1");
    add_max(&env, "m", "20");
    add_max(&env, "n", "20");
    // The newer shape for m: its 5-hour window nearly used, Opus 4.8 capped for the week.
    env.mock.set_usage(
        "m",
        json!({"limits": [
            {"kind": "session", "percent": 99, "resets_at": "2099-01-01T03:00:00Z", "scope": null},
            {"kind": "weekly_all", "percent": 40, "resets_at": "2099-01-05T00:00:00Z", "scope": null},
            {"kind": "weekly_scoped", "percent": 100, "resets_at": "2099-01-04T00:00:00Z",
             "scope": {"model": {"id": "claude-opus-4-8", "display_name": "Opus 4.8"}, "surface": null}}
        ]}),
    );
    // The flat shape for n, with extra usage.
    env.mock.set_usage(
        "n",
        json!({
            "five_hour": {"utilization": 5.0, "resets_at": null},
            "seven_day": {"utilization": 20.0, "resets_at": null},
            "seven_day_opus": {"utilization": 50.0, "resets_at": null},
            "extra_usage": {"is_enabled": true, "monthly_limit": 100, "used_credits": 25, "utilization": 25.0}
        }),
    );
    let server = env.start();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !server.account("m").await["usage"].is_null()
                && !server.account("n").await["usage"].is_null()
        })
        .await
    );
    let m = server.account("m").await;
    assert_eq!(m["usage"]["five_hour"]["utilization"], 99.0);
    assert_eq!(m["usage"]["seven_day"]["utilization"], 40.0);
    assert_eq!(
        m["usage"]["models"],
        json!([{"model": "claude-opus-4-8", "utilization": 100.0, "resets_at": "2099-01-04T00:00:00Z"}])
    );
    assert_eq!(
        m["utilization_5h"], 0.99,
        "the polled usage feeds the live state"
    );
    let n = server.account("n").await;
    assert_eq!(n["usage"]["models"][0]["model"], "opus");
    assert_eq!(n["usage"]["extra_usage"]["used_credits"], 25.0);
    let page = server.get("/dashboard").await.text();
    assert!(
        page.contains("claude-opus-4-8"),
        "per-model caps on the dashboard"
    );
    assert!(page.contains("extra usage on"), "{page}");
    // m is at 99% of its window: the first session starts on n, before any request to m.
    let response = server.message(false).await;
    assert_eq!(response.header("x-claudeflare-account"), Some("n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_usage_endpoint_is_polled_less_and_never_marks_the_account() {
    let mut env = Env::sqlite().await;
    env.set("CLAUDEFLARE_USAGE_POLL_INTERVAL_SECONDS", "1");
    add_max(&env, "m", "5");
    env.mock.throttle_usage("m", 100, None);
    let server = env.start();
    // Polled every second without throttling; throttled, the waits double: 1 s, 2 s, 4 s.
    assert!(
        eventually(Duration::from_secs(12), || async {
            env.mock.usage_calls("m") >= 4
        })
        .await,
        "{} calls",
        env.mock.usage_calls("m")
    );
    let times = env.mock.usage_call_times("m");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, expected) in [1, 2, 4].into_iter().enumerate() {
        let expected = Duration::from_secs(expected);
        assert!(
            gaps[i] >= expected.mul_f64(0.9) && gaps[i] < expected.mul_f64(1.5),
            "wait {i} was {:?}, not about {expected:?}: {gaps:?}",
            gaps[i]
        );
    }
    let m = server.account("m").await;
    assert_eq!(m["status"], "active");
    assert_eq!(m["rate_limited_until"], Value::Null);
    assert_eq!(
        server.message(false).await.header("x-claudeflare-account"),
        Some("m")
    );
    server
        .wait_log("the usage endpoint asks to slow down")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn needs_reauth_is_stored_at_once_with_the_command_and_survives_a_kill() {
    let env = Env::sqlite().await;
    add_max(&env, "m", "1");
    env.ok(&["add", "k", "--api-key", "sk-ant-api03-SECRET-k"]);
    let mut server = env.start();
    env.mock.expire_access_token("m");
    env.mock.revoke("m");
    let response = server.message(false).await;
    assert_eq!(
        response.header("x-claudeflare-account"),
        Some("k"),
        "failed over"
    );
    let m = server.account("m").await;
    assert_eq!(m["status"], "needs_reauth");
    let reason = m["status_reason"].as_str().unwrap();
    assert!(reason.contains("invalid_grant"), "{reason}");
    assert!(reason.contains("claudeflare-server reauth m"), "{reason}");
    // In the database the moment it is decided: killed at once, nothing is lost.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let listed_m = listed(&env).into_iter().find(|a| a["name"] == "m").unwrap();
    assert_eq!(listed_m["status"], "needs_reauth");
    assert!(
        listed_m["status_reason"]
            .as_str()
            .unwrap()
            .contains("claudeflare-server reauth m")
    );
    assert!(
        env.ok(&["list"])
            .contains("needs re-auth: the refresh token was rejected")
    );
    let grants = env.mock.grants().len();
    let server = env.start();
    assert_eq!(server.account("m").await["status"], "needs_reauth");
    for _ in 0..3 {
        assert_eq!(
            server.message(false).await.header("x-claudeflare-account"),
            Some("k")
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.mock.grants().len(),
        grants,
        "the dead refresh token is not tried again"
    );
    let page = server.get("/dashboard").await.text();
    assert!(
        page.contains("needs re-auth") && page.contains("invalid_grant"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_at_rest_in_logs_or_in_answers() {
    let mut env = Env::sqlite().await;
    env.set("LOG_LEVEL", "DEBUG");
    add_max(&env, "m", "1");
    let console = env.oauth(&["add", "c", "--mode", "console"], "c", false);
    assert!(console.status.success());
    env.ok(&["add", "k", "--api-key", "sk-ant-api03-SECRET-plain"]);
    let server = env.start();
    assert_eq!(server.message(false).await.status, 200);
    let answers = [
        server.get("/api/accounts").await.text(),
        server.get("/api/config").await.text(),
        server.get("/api/requests").await.text(),
        server.get("/dashboard").await.text(),
        env.ok(&["list", "--json"]),
    ];
    drop(server);

    let (access, refresh) = env.mock.tokens("m").unwrap();
    let secrets = [
        access,
        refresh,
        env.mock.created_keys()[0].clone(),
        "sk-ant-api03-SECRET-plain".to_owned(),
    ];
    let folder = env.config_path().parent().unwrap().to_owned();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                path.display()
            );
        }
    }
    let log = env.start().log();
    for secret in &secrets {
        assert!(
            answers.iter().all(|a| !a.contains(secret.as_str())),
            "{secret} in an answer"
        );
        assert!(!log.contains(secret.as_str()), "{secret} in the log");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&folder), 0o700);
        assert_eq!(mode(&folder.join("secret.key")), 0o600);
        assert_eq!(mode(&env.db_path()), 0o600);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_key_names_the_accounts_to_reauth_instead_of_crashing() {
    let mut env = Env::sqlite().await;
    add_max(&env, "m", "1");
    env.ok(&["add", "k", "--api-key", "sk-ant-api03-SECRET-k"]);
    std::fs::remove_file(env.config_path().parent().unwrap().join("secret.key")).unwrap();
    env.set("CLAUDEFLARE_SECRET_KEY", &"ab".repeat(32));
    let server = env.start();
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.log().contains("reauth k")
        })
        .await,
        "{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("cannot decrypt the credentials of account `m`")
            && log.contains("claudeflare-server reauth m"),
        "{log}"
    );
    assert_eq!(server.json("/health").await["status"], "ok");
    assert_eq!(server.message(false).await.status, 503);
    let list = env.ok(&["list"]);
    assert_eq!(list.matches("needs re-auth").count(), 2, "{list}");
    env.ok(&["reauth", "k", "--api-key", "sk-ant-api03-SECRET-k2"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/health").await["accounts"] == 1
        })
        .await
    );
    assert_eq!(server.message(false).await.status, 200);
}

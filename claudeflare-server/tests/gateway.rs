//! Claude Code's gateway protocol (`GET /protocol` of `claude gateway`, 2.1.332): errors that
//! say whether to retry, a key's budget as the usage-limit headers and `GET /api/oauth/usage`
//! report it, model allowlists and their model list, and telemetry.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use claudeflare_testkit::{Reply, TestResponse, unified_headers};
use common::{Env, Server, key};
use http::Method;
use serde_json::{Value, json};

async fn ask(server: &Server, key: &str, model: &str) -> TestResponse {
    let body =
        json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
    server
        .client
        .post_json(
            "/v1/messages",
            &body,
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
}

fn assert_final(response: &TestResponse, status: u16, kind: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(
        response.json()["error"]["type"],
        kind,
        "{}",
        response.text()
    );
    assert_eq!(
        response.header("x-should-retry"),
        Some("false"),
        "retrying cannot help: {}",
        response.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_key_is_final() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.new_key(&["team"]);
    let server = env.start();
    assert_final(
        &ask(&server, "cfk_mistyped", "claude-opus-5-5").await,
        401,
        "authentication_error",
    );
    let anonymous = server
        .client
        .post_json("/v1/messages", &json!({"model": "claude-opus-5-5"}), &[])
        .await;
    assert_final(&anonymous, 401, "authentication_error");
    assert!(env.mock.requests().is_empty(), "no account was used");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_account_refused_by_the_upstream_is_a_final_403() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.mock.script(&key("a"), [Reply::banned()]);
    let server = env.start();
    assert_eq!(
        server.ask("claude-opus-5-5", false).await.status,
        403,
        "the upstream's own"
    );
    let ours = server.ask("claude-opus-5-5", false).await;
    assert_final(&ours, 403, "permission_error");
    assert!(
        ours.text().contains("refused by the upstream"),
        "{}",
        ours.text()
    );
    assert_eq!(ours.header("retry-after"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_reports_its_standing_in_place_of_the_upstreams_headers_then_refuses() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    // The upstream reports the account's own quota: the key must not see it.
    env.mock.script(
        &key("a"),
        (0..3).map(|_| Reply::MessageWith {
            headers: unified_headers(0.4, 0.2),
        }),
    );
    // The mock's Sonnet 4 answer costs about $0.00106: the second crosses 75 % of $0.0013.
    let team = env.new_key(&["team", "--monthly-budget-usd", "0.0013"]);
    let free = env.new_key(&["free"]);
    let server = env.start();

    let first = ask(&server, &team, "claude-sonnet-4-20250514").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("anthropic-ratelimit-unified-status"),
        Some("allowed")
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-representative-claim"),
        Some("overage")
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-overage-utilization"),
        Some("0.00")
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-overage-surpassed-threshold"),
        None
    );
    assert_eq!(
        first.header("anthropic-ratelimit-unified-5h-utilization"),
        None,
        "the account's quota is not the key's"
    );
    let second = ask(&server, &team, "claude-sonnet-4-20250514").await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.header("anthropic-ratelimit-unified-status"),
        Some("allowed_warning")
    );
    assert_eq!(
        second.header("anthropic-ratelimit-unified-overage-surpassed-threshold"),
        Some("0.75")
    );
    let reset: i64 = second
        .header("anthropic-ratelimit-unified-overage-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset > chrono::Utc::now().timestamp());

    // Its spend, as Claude Code asks for it: the only /api path a non-admin key may call.
    let usage = server
        .client
        .send(
            Method::GET,
            "/api/oauth/usage",
            &[("authorization", &format!("Bearer {team}"))],
            String::new(),
        )
        .await;
    assert_eq!(usage.status, 200, "{}", usage.text());
    let usage = usage.json();
    // In cents: $0.0013 rounds to 0; what matters is that it is a number, not null.
    assert!(usage["extra_usage"]["monthly_limit"].is_number(), "{usage}");
    assert_eq!(usage["limits"][0]["group"], "monthly");
    assert!(
        usage["limits"][0]["percent"].as_f64().unwrap() >= 100.0,
        "{usage}"
    );
    let other_api = server
        .client
        .send(
            Method::GET,
            "/api/stats",
            &[("authorization", &format!("Bearer {team}"))],
            String::new(),
        )
        .await;
    assert_eq!(other_api.status, 403);

    // The second request spent it: the third is refused at once, before any account.
    let before = env.mock.requests().len();
    let third = ask(&server, &team, "claude-sonnet-4-20250514").await;
    assert_final(&third, 429, "billing_error");
    assert!(third.text().contains("resets"), "{}", third.text());
    assert_eq!(
        third.header("anthropic-ratelimit-unified-status"),
        Some("rejected")
    );
    assert_eq!(
        third.header("anthropic-ratelimit-unified-representative-claim"),
        None
    );
    assert!(third.header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(env.mock.requests().len(), before);

    // A key without a budget gets the upstream's headers as they are, and no cap.
    let unlimited = ask(&server, &free, "claude-sonnet-4-20250514").await;
    assert_eq!(
        unlimited.header("anthropic-ratelimit-unified-representative-claim"),
        Some("five_hour"),
        "the upstream's own"
    );
    assert!(
        unlimited
            .header("anthropic-ratelimit-unified-5h-utilization")
            .is_some()
    );
    let usage = server
        .client
        .send(
            Method::GET,
            "/api/oauth/usage",
            &[("authorization", &format!("Bearer {free}"))],
            String::new(),
        )
        .await
        .json();
    assert_eq!(usage["limits"], json!([]));
    assert_eq!(usage["extra_usage"]["monthly_limit"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_limited_to_some_models_is_refused_others_and_lists_its_own() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let team = env.new_key(&["team", "--models", "claude-sonnet-5-5,claude-haiku-5-5"]);
    let any = env.new_key(&["any"]);
    let server = env.start();
    let refused = ask(&server, &team, "claude-opus-5-5").await;
    assert_final(&refused, 400, "invalid_request_error");
    assert!(
        refused
            .text()
            .contains("claude-sonnet-5-5, claude-haiku-5-5"),
        "{}",
        refused.text()
    );
    assert!(env.mock.requests().is_empty(), "refused before any account");
    assert_eq!(ask(&server, &team, "claude-sonnet-5-5").await.status, 200);
    assert_eq!(
        ask(&server, &team, "claude-haiku-5-5[1m]").await.status,
        200
    );
    let listed = server
        .client
        .send(
            Method::GET,
            "/v1/models",
            &[("x-api-key", &team)],
            String::new(),
        )
        .await;
    assert_eq!(listed.status, 200);
    let listed = listed.json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-sonnet-5-5", "claude-haiku-5-5"]);
    assert_eq!(listed["data"][0]["display_name"], "Claude Sonnet 5.5");
    assert_eq!(
        env.mock.requests().len(),
        2,
        "the list was not asked of the upstream"
    );
    // Without a list, any model, and the upstream's model list.
    assert_eq!(ask(&server, &any, "claude-opus-5-5").await.status, 200);
    let proxied = server
        .client
        .send(
            Method::GET,
            "/v1/models",
            &[("x-api-key", &any)],
            String::new(),
        )
        .await;
    assert_eq!(proxied.status, 200);
    assert_eq!(env.mock.requests().len(), 4);
    let keys: Value = serde_json::from_str(&env.ok(&["keys", "list", "--json"])).unwrap();
    let team = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "team")
        .unwrap();
    assert_eq!(
        team["models"],
        json!(["claude-sonnet-5-5", "claude-haiku-5-5"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_files_models_limit_every_request() {
    let mut env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.set("CLAUDEFLARE_MODELS", "[claude-opus-5-5]");
    let server = env.start();
    assert_final(
        &server.ask("claude-sonnet-5-5", false).await,
        400,
        "invalid_request_error",
    );
    assert_eq!(server.ask("claude-opus-5-5", true).await.status, 200);
    let listed = server.json("/v1/models").await;
    assert_eq!(listed["data"][0]["id"], "claude-opus-5-5");
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_is_answered_and_forwarded_without_the_clients_credential() {
    let mut env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let team = env.new_key(&["team"]);
    // Without a collector: answered, dropped.
    let server = env.start();
    for signal in ["metrics", "logs", "traces"] {
        let sent = server
            .client
            .send(
                Method::POST,
                &format!("/v1/{signal}"),
                &[
                    ("authorization", &format!("Bearer {team}")),
                    ("content-type", "application/x-protobuf"),
                ],
                "\u{0a}\u{00}".to_owned(),
            )
            .await;
        assert_eq!(sent.status, 200, "{signal}: {}", sent.text());
    }
    let refused = server
        .client
        .send(
            Method::POST,
            "/v1/metrics",
            &[("content-type", "application/json")],
            "{}".to_owned(),
        )
        .await;
    assert_eq!(refused.status, 401, "telemetry needs a key too");
    assert!(
        env.mock.requests().is_empty(),
        "nothing reached the upstream"
    );
    drop(server);

    // With a collector: forwarded there, with the body and type, without the key.
    env.set("CLAUDEFLARE_OTLP_ENDPOINT", &env.mock.url());
    let server = env.start();
    let sent = server
        .client
        .send(
            Method::POST,
            "/v1/logs",
            &[("x-api-key", &team), ("content-type", "application/json")],
            r#"{"resourceLogs":[]}"#.to_owned(),
        )
        .await;
    assert_eq!(sent.status, 200);
    assert_eq!(sent.text(), "{}");
    assert!(
        common::eventually(std::time::Duration::from_secs(3), || async {
            !env.mock.requests().is_empty()
        })
        .await
    );
    let forwarded = &env.mock.requests()[0];
    assert_eq!(forwarded.path, "/v1/logs");
    assert_eq!(&forwarded.body[..], br#"{"resourceLogs":[]}"#);
    assert!(forwarded.headers.get("x-api-key").is_none());
    assert!(forwarded.headers.get("authorization").is_none());
}

/// Claude Code itself (`CLAUDE_CODE_BIN`, installed at a pinned version by `.ci/run`), run with
/// `-p` against the server, `HOME` in a temporary folder, telemetry off; `None` when it is not
/// installed (a failure under CI).
fn claude_code() -> Option<std::path::PathBuf> {
    let bin = std::env::var_os("CLAUDE_CODE_BIN").map(std::path::PathBuf::from);
    match bin.filter(|bin| bin.exists()) {
        Some(bin) => Some(bin),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "Claude Code is missing: set CLAUDE_CODE_BIN (.ci/run installs it)"
            );
            eprintln!("skipped: Claude Code is not installed (CLAUDE_CODE_BIN)");
            None
        }
    }
}

/// `claude -p PROMPT` with `key`: its exit, what it printed, and how long it took.
fn run_claude_code(
    bin: &std::path::Path,
    server: &Server,
    key: &str,
) -> (bool, String, std::time::Duration) {
    let home = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let output = std::process::Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args(["-p", "say hi"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", &server.url)
        .env("ANTHROPIC_API_KEY", key)
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said, started.elapsed())
}

/// Claude Code with a mistyped key, or a key whose budget is spent, says so at once (before,
/// it retried for about three minutes and printed nothing); with a good key it answers.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_is_told_at_once_when_retrying_cannot_help() {
    let Some(bin) = claude_code() else {
        return;
    };
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let team = env.new_key(&["team"]);
    let spent = env.new_key(&["spent", "--monthly-budget-usd", "0"]);
    let server = env.start();

    let (ok, said, took) = run_claude_code(&bin, &server, "cfk_mistyped");
    assert!(!ok, "{said}");
    assert!(said.contains("API key"), "{said}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "took {took:?}: {said}"
    );

    let (ok, said, took) = run_claude_code(&bin, &server, &spent);
    assert!(!ok, "{said}");
    assert!(said.contains("monthly budget"), "{said}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "took {took:?}: {said}"
    );
    assert!(env.mock.requests().is_empty(), "no account was used");

    let (ok, said, _) = run_claude_code(&bin, &server, &team);
    assert!(ok && said.contains("Hello from the mock"), "{said}");
}

/// Claude Code 2.1.332 itself signs in with its gateway sign-in (`claude auth login
/// --gateway-json`, the `/login` flow as JSON lines; the gateway named in its settings by
/// `forceLoginGatewayUrl`), the person approves on `/device` with their key, and Claude Code,
/// holding the bearer, gets its first answer.
#[tokio::test(flavor = "multi_thread")]
async fn claude_code_signs_in_with_its_gateway_login_and_is_answered() {
    use std::io::{BufRead, BufReader, Write};
    let Some(bin) = claude_code() else {
        return;
    };
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let dev = env.new_key(&["dev", "--email", "dev@example.com"]);
    let admin = env.new_key(&["admin", "--admin"]);
    let server = env.start();
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".claude.json"),
        r#"{"hasCompletedOnboarding": true}"#,
    )
    .unwrap();
    std::fs::create_dir_all(home.path().join(".claude")).unwrap();
    let settings = json!({"forceLoginMethod": "gateway", "forceLoginGatewayUrl": server.url});
    std::fs::write(
        home.path().join(".claude/settings.json"),
        settings.to_string(),
    )
    .unwrap();
    let claude = |args: &[&str]| {
        let mut command = std::process::Command::new("timeout");
        command
            .arg("120")
            .arg(&bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("BROWSER", "/bin/true")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("DISABLE_ERROR_REPORTING", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
        command
    };

    // The sign-in, answering its questions as a person would, on a thread of its own.
    let mut child = claude(&["auth", "login", "--gateway-json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut answers, questions) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let (code_tx, code_rx) = std::sync::mpsc::channel();
    let dialogue = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(questions).lines().map_while(Result::ok) {
            let Ok(question) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let state = question["state"].as_str().unwrap_or_default().to_owned();
            seen.push(question.clone());
            match state.as_str() {
                // The gateway's URL, its (loopback) certificate, the account it signed in as.
                "url_input" | "trust_prompt" | "confirm_account" => {
                    let answer =
                        json!({"state": state, "shown": question["shown"], "accept": true});
                    writeln!(answers, "{answer}").unwrap();
                }
                "polling" => {
                    let _ =
                        code_tx.send(question["userCode"].as_str().unwrap_or_default().to_owned());
                }
                "done" | "error" | "cancelled" => break,
                _ => {}
            }
        }
        drop(answers);
        seen
    });
    let user_code = tokio::task::spawn_blocking(move || {
        code_rx.recv_timeout(std::time::Duration::from_secs(60))
    })
    .await
    .unwrap()
    .expect("Claude Code never showed a code");
    let approved = server
        .client
        .send(
            Method::POST,
            "/device",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("user_code={user_code}&key={dev}"),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let seen = tokio::task::spawn_blocking(move || dialogue.join().unwrap())
        .await
        .unwrap();
    let status = child.wait().unwrap();
    let states: Vec<&str> = seen.iter().filter_map(|q| q["state"].as_str()).collect();
    assert!(status.success(), "{seen:?}");
    assert_eq!(states.last(), Some(&"done"), "{seen:?}");
    let account = seen
        .iter()
        .find(|q| q["state"] == "confirm_account")
        .unwrap();
    assert_eq!(
        account["shown"], "dev@example.com",
        "the key's email, to confirm"
    );

    // Signed in: its first prompt is answered, as the key.
    let output = claude(&["-p", "say hi"]).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.contains("Hello from the mock"), "{said}");
    let auth = format!("Bearer {admin}");
    let recorded = common::eventually(std::time::Duration::from_secs(5), || async {
        let history = server
            .client
            .send(
                Method::GET,
                "/api/requests",
                &[("authorization", &auth)],
                "",
            )
            .await
            .json();
        history[0]["api_key"] == "dev"
    })
    .await;
    assert!(recorded, "the answer is recorded as the key's");
}

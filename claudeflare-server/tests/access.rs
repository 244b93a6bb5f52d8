//! Access control through the binary: client keys, admin, per-key limits, and the browser rules
//! (README, "Running it for a team").

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{Reply, TestResponse};
use common::{Env, Server, eventually};
use http::Method;
use serde_json::{Value, json};

fn message_body() -> String {
    json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string()
}

async fn send(
    server: &Server,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TestResponse {
    server
        .client
        .send(method, path, headers, body.to_owned())
        .await
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    send(server, Method::GET, path, headers, "").await
}

/// A message request presenting `headers` (a key, say).
async fn message_with(server: &Server, headers: &[(&str, &str)]) -> TestResponse {
    let mut all = vec![
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    all.extend_from_slice(headers);
    send(server, Method::POST, "/v1/messages", &all, &message_body()).await
}

/// Create a key with `args` and return it (printed once, on stdout).
fn create_key(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["keys", "add"];
    all.extend_from_slice(args);
    let key = env.ok(&all).trim().to_owned();
    assert!(key.starts_with("cfk_") && key.len() >= 40, "{key}");
    key
}

fn assert_envelope(response: &TestResponse, status: u16, kind: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    let body = response.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
}

fn assert_no_cors(response: &TestResponse) {
    for (name, _) in &response.headers {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "a CORS header was sent: {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_only_this_machine_is_answered_and_no_page_can_change_anything() {
    let mut env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.set("CLAUDEFLARE_ALLOWED_HOSTS", "[proxy.lan]");
    let server = env.start();
    let port = server.url.rsplit(':').next().unwrap().to_owned();

    // Loopback names, any port, and allowed_hosts are answered; others are refused (DNS rebinding).
    for host in ["localhost", "127.0.0.1:9", "[::1]:8080", "proxy.lan:1234"] {
        let response = get_with(&server, "/health", &[("host", host)]).await;
        assert_eq!(response.status, 200, "{host}: {}", response.text());
    }
    let rebound = get_with(&server, "/api/stats", &[("host", "evil.example")]).await;
    assert_eq!(rebound.status, 403);
    assert!(
        rebound.json()["error"]
            .as_str()
            .unwrap()
            .contains("allowed_hosts")
    );
    let rebound = message_with(&server, &[("host", "evil.example:80")]).await;
    assert_envelope(&rebound, 403, "permission_error");
    assert!(env.mock.requests().is_empty(), "no account was used");

    // A cross-site page cannot change anything, bodiless POSTs (fetch with mode: no-cors) too.
    let foreign = [("origin", "http://evil.example")];
    let strategy = r#"{"strategy": "round-robin"}"#;
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(&foreign);
    let changed = send(
        &server,
        Method::POST,
        "/api/config/strategy",
        &headers,
        strategy,
    )
    .await;
    assert_eq!(changed.status, 403, "{}", changed.text());
    assert_no_cors(&changed);
    let paused = send(&server, Method::POST, "/api/accounts/a/pause", &foreign, "").await;
    assert_eq!(paused.status, 403);
    let marked = [("sec-fetch-site", "cross-site")];
    let paused = send(&server, Method::POST, "/api/accounts/a/pause", &marked, "").await;
    assert_eq!(paused.status, 403);
    let spent = message_with(&server, &[("origin", "https://evil.example")]).await;
    assert_envelope(&spent, 403, "permission_error");
    assert_eq!(server.json("/api/accounts").await[0]["paused"], false);
    assert_eq!(
        server.json("/api/config/strategy").await["strategy"],
        "session"
    );

    // A form or text/plain body (which browsers send cross-site without a preflight) is refused.
    let plain = [("content-type", "text/plain")];
    let refused = send(
        &server,
        Method::POST,
        "/api/config/strategy",
        &plain,
        strategy,
    )
    .await;
    assert_eq!(refused.status, 415, "{}", refused.text());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let refused = send(
        &server,
        Method::POST,
        "/api/config/strategy",
        &form,
        "strategy=weighted",
    )
    .await;
    assert_eq!(refused.status, 415);

    // The page's own requests (same origin) and scripts (no Origin) keep working.
    let own = format!("http://127.0.0.1:{port}");
    let mut headers = vec![("content-type", "application/json")];
    headers.push(("origin", own.as_str()));
    headers.push(("sec-fetch-site", "same-origin"));
    let changed = send(
        &server,
        Method::POST,
        "/api/config/strategy",
        &headers,
        strategy,
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_no_cors(&changed);
    let script = server.post("/api/accounts/a/pause", "").await;
    assert_eq!(script.status, 200, "{}", script.text());
    let with_origin = get_with(&server, "/api/stats", &[("origin", "http://evil.example")]).await;
    assert_eq!(with_origin.status, 200, "reads are not state changes");
    assert_no_cors(&with_origin);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_host_without_a_key_does_not_start() {
    let env = Env::sqlite().await;
    let output = env.cli(&["serve", "--host", "0.0.0.0"]);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("keys add") && said.contains("allow_unauthenticated"),
        "{said}"
    );
    let mut env = env;
    env.set("CLAUDEFLARE_ALLOW_UNAUTHENTICATED", "true");
    let server = env.start_with(&["serve", "--host", "0.0.0.0"]);
    // Still only loopback names (and allowed_hosts) while no key exists.
    let local = get_with(&server, "/health", &[("host", "localhost")]).await;
    assert_eq!(local.status, 200);
    let other = get_with(&server, "/health", &[("host", "10.1.2.3")]).await;
    assert_eq!(other.status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_guard_the_proxy_and_admin_keys_the_api() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let team = create_key(&env, &["team"]);
    let boss = create_key(&env, &["boss", "--admin"]);
    let listed = env.ok(&["keys", "list", "--json"]);
    assert!(
        !listed.contains(&team) && !listed.contains(&boss),
        "keys are never shown again"
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        (listed[1]["name"].as_str(), listed[1]["admin"].as_bool()),
        (Some("boss"), Some(true))
    );
    assert_eq!(listed[0]["hint"].as_str().unwrap().len(), 8);
    let unnamed = env.cli(&["keys", "add", " "]);
    assert!(!unnamed.status.success());
    assert!(String::from_utf8_lossy(&unnamed.stderr).contains("needs a name"));
    let over = env.cli(&["keys", "add", "x", "--monthly-budget-usd", "-3"]);
    assert!(!over.status.success(), "a negative budget is refused");
    let duplicate = env.cli(&["keys", "add", "team"]);
    assert!(!duplicate.status.success());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));

    let server = env.start();
    // /v1: no key or a wrong one is 401 in Anthropic's envelope, and reaches no account.
    assert_envelope(
        &message_with(&server, &[]).await,
        401,
        "authentication_error",
    );
    let wrong = message_with(&server, &[("x-api-key", "cfk_not-a-key")]).await;
    assert_envelope(&wrong, 401, "authentication_error");
    assert!(env.mock.requests().is_empty());
    // Either header, as the SDKs send ANTHROPIC_API_KEY; the key never reaches the upstream.
    let served = message_with(&server, &[("x-api-key", team.as_str())]).await;
    assert_eq!(served.status, 200, "{}", served.text());
    let bearer = format!("Bearer {team}");
    let served = message_with(&server, &[("authorization", bearer.as_str())]).await;
    assert_eq!(served.status, 200);
    for received in env.mock.requests() {
        let sent: Vec<String> = received
            .headers
            .iter()
            .map(|(_, v)| v.to_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            !sent.iter().any(|v| v.contains(&team)),
            "the client key went upstream"
        );
    }

    // /api, /metrics: 401 without, 403 with a key that is not admin, 200 with an admin key.
    let admin = format!("Bearer {boss}");
    let not_admin = format!("Bearer {team}");
    for path in ["/api/stats", "/api/keys", "/metrics"] {
        let anonymous = server.get(path).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert!(
            anonymous.json()["error"].is_string(),
            "{path}: {}",
            anonymous.text()
        );
        let refused = get_with(&server, path, &[("authorization", not_admin.as_str())]).await;
        assert_eq!(refused.status, 403, "{path}");
        let allowed = get_with(&server, path, &[("authorization", admin.as_str())]).await;
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.text());
        assert!(!allowed.text().contains(&team) && !allowed.text().contains(&boss));
    }
    // /health stays open and says nothing secret.
    let health = server.get("/health").await;
    assert_eq!(health.status, 200);
    assert!(!health.text().contains("cfk_"));

    // Records carry the key's name, and /api/requests filters by it.
    let as_admin = [("authorization", admin.as_str())];
    assert!(
        eventually(Duration::from_secs(3), || async {
            let rows = send(
                &server,
                Method::GET,
                "/api/requests?api_key=team",
                &as_admin,
                "",
            )
            .await;
            rows.json().as_array().map(Vec::len) == Some(2)
        })
        .await
    );
    let rows = send(&server, Method::GET, "/api/requests", &as_admin, "")
        .await
        .json();
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["api_key"] == "team"),
        "{rows}"
    );
    let keys = send(&server, Method::GET, "/api/keys", &as_admin, "")
        .await
        .json();
    assert_eq!(keys[0]["requests_this_month"], 2, "{keys}");

    // A key revoked while the server runs is refused within 2 seconds; a new one works as soon.
    env.ok(&["keys", "revoke", "team"]);
    let newcomer = create_key(&env, &["newcomer"]);
    assert!(
        eventually(Duration::from_secs(2), || async {
            message_with(&server, &[("x-api-key", team.as_str())])
                .await
                .status
                == 401
                && message_with(&server, &[("x-api-key", newcomer.as_str())])
                    .await
                    .status
                    == 200
        })
        .await,
        "the running server follows the keys"
    );
    let unknown = env.cli(&["keys", "revoke", "team"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no client key named `team`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_logs_in_with_a_session_cookie_that_is_not_the_key() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let boss = create_key(&env, &["boss", "--admin"]);
    let team = create_key(&env, &["team"]);
    let server = env.start();

    let page = server.get("/dashboard").await;
    assert_eq!(page.status, 401);
    assert!(
        page.text().contains("action=\"/login\""),
        "the login page: {}",
        page.text()
    );

    let form = [("content-type", "application/x-www-form-urlencoded")];
    let refused = send(
        &server,
        Method::POST,
        "/login",
        &form,
        &format!("key={team}"),
    )
    .await;
    assert_eq!(refused.status, 403, "a key that is not admin cannot log in");
    let refused = send(&server, Method::POST, "/login", &form, "key=cfk_wrong").await;
    assert_eq!(refused.status, 401);

    let logged_in = send(
        &server,
        Method::POST,
        "/login",
        &form,
        &format!("key={boss}"),
    )
    .await;
    assert_eq!(logged_in.status, 303, "{}", logged_in.text());
    let set_cookie = logged_in.header("set-cookie").unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(&boss), "the cookie is not the key");
    let session = set_cookie.split(';').next().unwrap().to_owned();

    let cookie = [("cookie", session.as_str())];
    let page = send(&server, Method::GET, "/dashboard", &cookie, "").await;
    assert_eq!(page.status, 200);
    // The dashboard's own actions: same origin, JSON, the cookie.
    let own = server.url.clone();
    let action = [
        ("cookie", session.as_str()),
        ("content-type", "application/json"),
        ("origin", own.as_str()),
    ];
    let switched = send(
        &server,
        Method::POST,
        "/api/config/strategy",
        &action,
        r#"{"strategy":"weighted"}"#,
    )
    .await;
    assert_eq!(switched.status, 200, "{}", switched.text());

    let logged_out = send(&server, Method::POST, "/logout", &cookie, "").await;
    assert_eq!(logged_out.status, 303);
    assert!(
        logged_out
            .header("set-cookie")
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = send(&server, Method::GET, "/api/stats", &cookie, "").await;
    assert_eq!(after.status, 401, "the session ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_key_limits_refuse_before_any_account_is_used() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let rpm = create_key(&env, &["scripted", "--rpm", "2"]);
    let one = create_key(&env, &["serial", "--concurrency", "1"]);
    let budget = create_key(&env, &["thrifty", "--monthly-budget-usd", "0.0005"]);
    let server = env.start();

    for _ in 0..2 {
        assert_eq!(
            message_with(&server, &[("x-api-key", rpm.as_str())])
                .await
                .status,
            200
        );
    }
    let before = env.mock.requests().len();
    let over = message_with(&server, &[("x-api-key", rpm.as_str())]).await;
    // At a minute's turn the window starts again: that one may pass.
    if over.status != 200 {
        assert_envelope(&over, 429, "rate_limit_error");
        assert!(
            over.text().contains("requests per minute"),
            "{}",
            over.text()
        );
        let retry: u64 = over.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        assert_eq!(env.mock.requests().len(), before, "no account was used");
    }

    // One request in flight (a slow stream), a second one is over the limit.
    env.mock.script(
        &common::key("a"),
        [Reply::Stream {
            delay: Duration::from_millis(300),
            fail_after: None,
            chunk_size: None,
        }],
    );
    let stream_body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let headers = [
        ("x-api-key", one.as_str()),
        ("content-type", "application/json"),
    ];
    let open = server
        .client
        .open(Method::POST, "/v1/messages", &headers, stream_body)
        .await;
    assert_eq!(open.status(), 200);
    let second = message_with(&server, &[("x-api-key", one.as_str())]).await;
    assert_envelope(&second, 429, "rate_limit_error");
    assert!(second.text().contains("in flight"));
    drop(open);
    assert!(
        eventually(Duration::from_secs(3), || async {
            message_with(&server, &[("x-api-key", one.as_str())])
                .await
                .status
                == 200
        })
        .await,
        "the place is free again once the stream ends"
    );

    // The monthly budget counts this instance's spending at once: the request after the one
    // that spent it is refused, as Claude Code's gateway protocol says, and not to be retried.
    assert_eq!(
        message_with(&server, &[("x-api-key", budget.as_str())])
            .await
            .status,
        200
    );
    let before = env.mock.requests().len();
    let refused = message_with(&server, &[("x-api-key", budget.as_str())]).await;
    assert_envelope(&refused, 429, "billing_error");
    assert!(
        refused.text().contains("monthly budget"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    assert_eq!(
        refused.header("anthropic-ratelimit-unified-status"),
        Some("rejected")
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 31 * 86400, "{retry}");
    assert_eq!(env.mock.requests().len(), before, "no account was used");
}

/// Anthropic's Python SDK, as a user runs it: `ANTHROPIC_BASE_URL` at claudeflare,
/// `ANTHROPIC_API_KEY` a client key (sent as `x-api-key`), or `auth_token` (sent as `Bearer`).
/// Skipped when the SDK is not installed, except under CI (`.ci/run` installs it).
#[tokio::test(flavor = "multi_thread")]
async fn anthropics_sdk_works_with_a_client_key() {
    if !common::python_sdk() {
        return;
    }
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let team = create_key(&env, &["team"]);
    let server = env.start();
    let script = r#"
import anthropic
model = "claude-sonnet-4-20250514"
hi = [{"role": "user", "content": "hi"}]
client = anthropic.Anthropic(max_retries=0)
message = client.messages.create(model=model, max_tokens=16, messages=hi)
print("json", message.usage.output_tokens)
with client.messages.stream(model=model, max_tokens=16, messages=hi) as stream:
    print("stream", len(stream.get_final_text()) > 0)
bearer = anthropic.Anthropic(api_key=None, auth_token=client.api_key, max_retries=0)
print("bearer", bearer.messages.create(model=model, max_tokens=16, messages=hi).usage.output_tokens)
try:
    anthropic.Anthropic(api_key="cfk_wrong", max_retries=0).messages.create(model=model, max_tokens=16, messages=hi)
except anthropic.AuthenticationError as error:
    print("refused", error.status_code)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .env("ANTHROPIC_BASE_URL", &server.url)
        .env("ANTHROPIC_API_KEY", &team)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    let expected = format!("json {}", claudeflare_testkit::OUTPUT_TOKENS);
    assert_eq!(lines[0], expected);
    assert_eq!(lines[1], "stream True");
    assert_eq!(
        lines[2],
        format!("bearer {}", claudeflare_testkit::OUTPUT_TOKENS)
    );
    assert_eq!(lines[3], "refused 401");
}

/// Two servers on one PostgreSQL database: a key created or revoked with the CLI reaches both
/// within 2 seconds, and a monthly budget counts the requests of both.
#[tokio::test(flavor = "multi_thread")]
async fn keys_and_budgets_are_shared_by_servers_on_one_database() {
    let Some(env) = Env::new(common::Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let _admin = create_key(&env, &["boss", "--admin"]);
    let (one, two) = (env.start(), env.start());
    let shared = create_key(&env, &["shared", "--monthly-budget-usd", "0.001"]);
    let bearer = format!("Bearer {shared}");
    let bearer = [("authorization", bearer.as_str())];
    let usage = |server| get_with(server, "/api/oauth/usage", &bearer);
    // The new key reaches both within 2 s (asking for its usage spends nothing).
    for server in [&one, &two] {
        assert!(
            eventually(Duration::from_secs(2), || async {
                usage(server).await.status == 200
            })
            .await
        );
    }
    // One request on the first instance spends the budget (about $0.00106 of $0.001): the
    // next there is refused at once, and the other instance knows within 2 seconds.
    assert_eq!(
        message_with(&one, &[("x-api-key", shared.as_str())])
            .await
            .status,
        200
    );
    let spent = std::time::Instant::now();
    let refused = message_with(&one, &[("x-api-key", shared.as_str())]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"]["type"], "billing_error");
    assert!(
        eventually(Duration::from_secs(4), || async {
            usage(&two).await.json()["limits"][0]["percent"]
                .as_f64()
                .is_some_and(|percent| percent >= 100.0)
        })
        .await,
        "the budget counts every instance's requests"
    );
    let known = spent.elapsed();
    eprintln!("the other instance knew after {} ms", known.as_millis());
    // The writer's linger (20 ms), then the next refresh (every 2 s).
    assert!(known <= Duration::from_millis(2500), "{known:?}");
    let other_refused = message_with(&two, &[("x-api-key", shared.as_str())]).await;
    assert_eq!(other_refused.status, 429, "{}", other_refused.text());
    assert_eq!(other_refused.header("x-should-retry"), Some("false"));
    let other = create_key(&env, &["other"]);
    env.ok(&["keys", "revoke", "other"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            message_with(&one, &[("x-api-key", other.as_str())])
                .await
                .status
                == 401
                && message_with(&two, &[("x-api-key", other.as_str())])
                    .await
                    .status
                    == 401
        })
        .await
    );
}

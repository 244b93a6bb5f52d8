//! Several providers in one pool: an Anthropic-compatible backend as the overflow of a Claude
//! account, model maps, priorities, per-account egress proxies, `edit` on a running server,
//! and keys bound to part of the pool.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{MockUpstream, Reply, TestProxy, TestResponse};
use common::{Env, Server, eventually, key};
use http::Method;
use serde_json::{Value, json};

/// Add `name` as an anthropic-compatible account at `backend`, with these extra arguments.
fn add_compatible(env: &Env, name: &str, backend: &MockUpstream, extra: &[&str]) {
    let key = key(name);
    let mut args = vec![
        "add",
        name,
        "--provider",
        "anthropic-compatible",
        "--base-url",
    ];
    let url = backend.url();
    args.push(&url);
    args.extend(["--api-key", &key]);
    args.extend_from_slice(extra);
    env.ok(&args);
}

async fn ask_with(
    server: &Server,
    model: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> TestResponse {
    let body = json!({"model": model, "max_tokens": 16, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    server
        .client
        .post_json("/v1/messages", &body, headers)
        .await
}

/// What a backend received as the model of its last request.
fn last_model(backend: &MockUpstream) -> Value {
    let last = backend.requests().last().cloned().unwrap();
    serde_json::from_slice::<Value>(&last.body).unwrap()["model"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn overflow_goes_to_a_compatible_backend_while_claude_is_limited_and_back_after() {
    let env = Env::sqlite().await;
    let glm = MockUpstream::start_compatible().await;
    env.add_keys(&["claude"]);
    add_compatible(
        &env,
        "glm",
        &glm,
        &[
            "--priority",
            "1",
            "--auth-header",
            "bearer",
            "--model-map",
            "claude-opus-*=glm-4.6,claude-*=glm-4.5-air",
        ],
    );
    env.mock
        .script("sk-ant-api03-SECRET-claude", [Reply::rate_limited(2)]);
    let server = env.start();
    // A subscription's client sends the OAuth beta; it must not reach another backend.
    let betas = [(
        "anthropic-beta",
        "oauth-2025-04-20,interleaved-thinking-2025-05-14",
    )];

    // Claude answers 429: the request goes to the overflow at once, its model mapped.
    let first = ask_with(&server, "claude-sonnet-4-20250514", false, &betas).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-claudeflare-account"), Some("glm"));
    assert_eq!(
        first.header("x-claudeflare-provider"),
        Some("anthropic-compatible")
    );
    assert_eq!(
        first.json()["model"],
        "glm-4.5-air",
        "the backend's own answer"
    );
    let sent = glm.requests().last().cloned().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {}", key("glm")),
        "the key in the bearer style asked for"
    );
    assert!(sent.headers.get("x-api-key").is_none());
    assert_eq!(
        sent.headers["anthropic-beta"], "interleaved-thinking-2025-05-14",
        "no Anthropic-only beta"
    );
    assert_eq!(last_model(&glm), "glm-4.5-air");

    // While Claude rests, the overflow serves without Claude being asked; streams are mapped
    // too (the first pattern that matches wins).
    let claude_asked = env.mock.requests().len();
    let streamed = ask_with(&server, "claude-opus-4-7", true, &[]).await;
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    assert_eq!(streamed.header("x-claudeflare-account"), Some("glm"));
    assert!(
        streamed.text().contains(r#""model":"glm-4.6""#),
        "{}",
        streamed.text()
    );
    assert_eq!(last_model(&glm), "glm-4.6");
    assert_eq!(
        env.mock.requests().len(),
        claude_asked,
        "Claude was not tried"
    );

    // The records keep both models and the provider; the unpriced model is flagged.
    let history = server.history(2).await;
    let (stream_record, json_record) = (&history[0], &history[1]);
    assert_eq!(json_record["requested_model"], "claude-sonnet-4-20250514");
    assert_eq!(json_record["model"], "glm-4.5-air");
    assert_eq!(json_record["provider"], "anthropic-compatible");
    assert_eq!(json_record["price_known"], false);
    assert_eq!(stream_record["requested_model"], "claude-opus-4-7");
    assert_eq!(stream_record["model"], "glm-4.6");

    // Once Claude's limit resets, the session returns to it.
    let back = eventually(Duration::from_secs(6), || async {
        let response = ask_with(&server, "claude-sonnet-4-20250514", false, &[]).await;
        response.header("x-claudeflare-account") == Some("claude")
    })
    .await;
    assert!(back, "Claude never served again");
    let response = ask_with(&server, "claude-sonnet-4-20250514", false, &[]).await;
    assert_eq!(response.header("x-claudeflare-account"), Some("claude"));
    assert_eq!(response.header("x-claudeflare-provider"), Some("anthropic"));

    let accounts = server.json("/api/accounts").await;
    let glm_view = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "glm")
        .unwrap();
    assert_eq!(glm_view["provider"], "anthropic-compatible");
    assert_eq!(glm_view["base_url"], glm.url() + "/");
    assert_eq!(glm_view["priority"], 1);
    assert_eq!(
        glm_view["model_map"],
        json!([{"pattern": "claude-opus-*", "model": "glm-4.6"}, {"pattern": "claude-*", "model": "glm-4.5-air"}])
    );
    let claude_view = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "claude")
        .unwrap();
    assert_eq!(claude_view["provider"], "anthropic");
    assert_eq!(claude_view["base_url"], Value::Null);
    let listed = env.ok(&["list"]);
    assert!(
        listed.contains("PROVIDER") && listed.contains("anthropic-compatible"),
        "{listed}"
    );
    let only: Value =
        serde_json::from_str(&env.ok(&["list", "--json", "--provider", "anthropic-compatible"]))
            .unwrap();
    let names: Vec<&str> = only
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["glm"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compatible_backends_429_benches_only_it_and_its_map_limits_what_it_serves() {
    let env = Env::sqlite().await;
    let backend = MockUpstream::start_compatible().await;
    // The compatible backend first: its 429 (a plain one, `retry-after` only) must bench it
    // alone and fail over to Claude.
    add_compatible(
        &env,
        "cheap",
        &backend,
        &["--model-map", "claude-haiku-*=glm-4.5-air"],
    );
    env.ok(&[
        "add",
        "claude",
        "--api-key",
        &key("claude"),
        "--priority",
        "1",
    ]);
    backend.script(
        &key("cheap"),
        [Reply::Error {
            status: 429,
            message: "Too many requests".into(),
            headers: vec![("retry-after".into(), "30".into())],
        }],
    );
    let server = env.start();

    let response = ask_with(&server, "claude-haiku-4-5", false, &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-claudeflare-account"), Some("claude"));
    let sent = backend.requests().last().cloned().unwrap();
    assert_eq!(
        sent.headers["x-api-key"],
        key("cheap"),
        "x-api-key is the default header style"
    );
    assert!(sent.headers.get("authorization").is_none());
    let cheap = server.account("cheap").await;
    assert_eq!(cheap["status"], "rate_limited", "{cheap}");
    let until = chrono::DateTime::parse_from_rfc3339(cheap["rate_limited_until"].as_str().unwrap())
        .unwrap();
    let left = until
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!(
        (20..=31).contains(&left),
        "benched for its retry-after: {left} s"
    );
    assert_eq!(server.account("claude").await["status"], "active");

    // A model its map does not serve never goes to it, whatever its priority.
    let asked = backend.requests().len();
    let opus = ask_with(&server, "claude-opus-4-7", false, &[]).await;
    assert_eq!(opus.header("x-claudeflare-account"), Some("claude"));
    assert_eq!(backend.requests().len(), asked);
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_changes_a_running_servers_accounts_within_2_seconds() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    let server = env.start();
    let served =
        |response: &TestResponse| response.header("x-claudeflare-account").map(str::to_owned);
    assert_eq!(served(&server.message(false).await).as_deref(), Some("a"));

    env.ok(&["edit", "a", "--priority", "5"]);
    let started = std::time::Instant::now();
    let moved = eventually(Duration::from_secs(2), || async {
        served(&server.message(false).await).as_deref() == Some("b")
    })
    .await;
    assert!(moved, "a priority change was not picked up");
    eprintln!("picked up in {} ms", started.elapsed().as_millis());
    assert_eq!(server.account("a").await["priority"], 5);

    env.ok(&["edit", "b", "--model-map", "claude-*=claude-haiku-4-5"]);
    let mapped = eventually(Duration::from_secs(2), || async {
        server.message(false).await;
        last_model(&env.mock) == "claude-haiku-4-5"
    })
    .await;
    assert!(mapped, "a model map was not picked up");
    env.ok(&[
        "edit",
        "b",
        "--model-map",
        "none",
        "--proxy",
        "socks5://me:hunter2-secret@127.0.0.1:9",
    ]);
    let shown = eventually(Duration::from_secs(2), || async {
        server.account("b").await["proxy"] == "socks5://me:***@127.0.0.1:9"
    })
    .await;
    assert!(shown, "{}", server.account("b").await);
    assert_eq!(server.account("b").await["model_map"], json!([]));
    let listed = env.ok(&["list", "--json"]);
    assert!(!listed.contains("hunter2"), "{listed}");
    assert!(!server.get("/api/accounts").await.text().contains("hunter2"));
    assert!(!server.get("/").await.text().contains("hunter2"));
    env.ok(&["edit", "b", "--proxy", "none", "--priority", "0"]);

    // Mistakes are told, and change nothing.
    for (args, says) in [
        (vec!["edit", "a"], "nothing to change"),
        (
            vec!["edit", "a", "--base-url", "https://x.example"],
            "anthropic-compatible",
        ),
        (
            vec!["edit", "a", "--model-map", "claude-*"],
            "PATTERN=MODEL",
        ),
        (
            vec!["edit", "a", "--proxy", "ftp://x:1"],
            "http://, https:// or socks5://",
        ),
        (vec!["edit", "nobody", "--priority", "1"], "nobody"),
        (
            vec![
                "add",
                "x",
                "--provider",
                "anthropic-compatible",
                "--api-key",
                "k",
            ],
            "--base-url",
        ),
        (
            vec![
                "add",
                "x",
                "--provider",
                "anthropic-compatible",
                "--api-key",
                "k",
                "--base-url",
                "http://api.example.com",
            ],
            "in clear",
        ),
        (
            vec![
                "add",
                "x",
                "--provider",
                "anthropic-compatible",
                "--base-url",
                "https://api.example.com",
            ],
            "--api-key",
        ),
        (
            vec![
                "add",
                "x",
                "--api-key",
                "k",
                "--base-url",
                "https://api.example.com",
            ],
            "anthropic-compatible",
        ),
    ] {
        let output = env.cli(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// An API call with the admin key.
async fn admin_get(server: &Server, admin: &str, path: &str) -> Value {
    let auth = format!("Bearer {admin}");
    let response = server
        .client
        .send(Method::GET, path, &[("authorization", &auth)], "")
        .await;
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_account_leaves_through_its_own_proxy_and_keys_can_be_bound_to_accounts() {
    let env = Env::sqlite().await;
    // Short-lived tokens: the first request refreshes first.
    env.mock.set_token_expires_in(120);
    let http_proxy = TestProxy::http_with_auth("me", "hunter2-secret").await;
    let socks_proxy = TestProxy::socks5_with_auth("me", "hunter2-secret").await;
    let via_http = http_proxy.url_with_credentials("me", "hunter2-secret");
    let via_socks = socks_proxy.url_with_credentials("me", "hunter2-secret");

    // A subscription through the HTTP proxy: its sign-in goes through it already.
    let added = env.oauth(
        &[
            "add", "sub", "--mode", "max", "--tier", "5", "--proxy", &via_http, "--group", "egress",
        ],
        "sub",
        false,
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    // Refreshed tokens live long: one refresh, then none.
    env.mock.set_token_expires_in(8 * 3600);
    let sign_in = http_proxy.count();
    assert!(sign_in >= 1, "the token exchange did not use the proxy");
    env.ok(&[
        "add",
        "keyed",
        "--api-key",
        &key("keyed"),
        "--proxy",
        &via_socks,
        "--group",
        "egress",
    ]);
    env.add_keys(&["direct"]);
    let admin = env.new_key(&["admin", "--admin"]);
    let to_sub = env.new_key(&["to-sub", "--accounts", "sub"]);
    let to_keyed = env.new_key(&["to-keyed", "--accounts", "keyed"]);
    let to_direct = env.new_key(&["to-direct", "--accounts", "direct"]);
    let to_egress = env.new_key(&["to-egress", "--accounts", "egress"]);
    let refused = env.cli(&["keys", "add", "typo", "--accounts", "nobody"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nobody"));
    let server = env.start();
    let ask = |key: String| {
        let server = &server;
        async move {
            let auth = format!("Bearer {key}");
            ask_with(
                server,
                "claude-sonnet-4-20250514",
                false,
                &[("authorization", &auth)],
            )
            .await
        }
    };

    for _ in 0..3 {
        let response = ask(to_sub.clone()).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("x-claudeflare-account"), Some("sub"));
    }
    assert_eq!(
        env.mock.refreshes().len(),
        1,
        "the short-lived token was refreshed"
    );
    let seen = http_proxy.connections();
    assert!(seen.iter().all(|c| c.authorized), "{seen:?}");
    let mock_addr = env.mock.url().trim_start_matches("http://").to_owned();
    assert!(seen.iter().all(|c| c.target == mock_addr), "{seen:?}");
    assert!(
        seen.iter().filter(|c| c.kind == "forward").count() >= 2,
        "the sign-in and the refresh (reqwest forwards http:// calls): {seen:?}"
    );
    assert!(
        seen.iter().any(|c| c.kind == "connect"),
        "the requests (a CONNECT tunnel, pooled): {seen:?}"
    );
    assert_eq!(
        socks_proxy.count(),
        0,
        "another account's proxy is not used"
    );
    // Its usage polls go through its proxy too.
    let polled = eventually(Duration::from_secs(10), || async {
        env.mock.usage_calls("sub") >= 1
    })
    .await;
    assert!(polled, "the subscription's usage was not polled");
    let seen = http_proxy.connections();
    assert!(
        seen.iter().all(|c| c.authorized && c.target == mock_addr),
        "{seen:?}"
    );

    let before_socks = socks_proxy.count();
    let response = ask(to_keyed.clone()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-claudeflare-account"), Some("keyed"));
    assert!(socks_proxy.count() > before_socks);
    let socks = socks_proxy.connections();
    assert!(
        socks
            .iter()
            .all(|c| c.authorized && c.kind == "socks5" && c.target == mock_addr),
        "{socks:?}"
    );

    let (http_before, socks_before) = (http_proxy.count(), socks_proxy.count());
    for _ in 0..3 {
        let response = ask(to_direct.clone()).await;
        assert_eq!(response.header("x-claudeflare-account"), Some("direct"));
    }
    assert_eq!(
        (http_proxy.count(), socks_proxy.count()),
        (http_before, socks_before),
        "an account without a proxy goes direct"
    );

    // A key bound to a group uses the accounts in it, and no other.
    for _ in 0..4 {
        let response = ask(to_egress.clone()).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let served = response.header("x-claudeflare-account");
        assert!(matches!(served, Some("sub" | "keyed")), "{served:?}");
    }

    // Every request of the proxied account depends on its proxy: without it, it is not
    // served, while the others are.
    drop(socks_proxy);
    let cut = ask(to_keyed).await;
    assert_ne!(cut.status, 200, "{}", cut.text());
    assert_eq!(ask(to_direct).await.status, 200);

    // The password is never shown.
    let accounts = admin_get(&server, &admin, "/api/accounts").await;
    let sub = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "sub")
        .unwrap();
    assert_eq!(sub["proxy"], via_http.replace("hunter2-secret", "***"));
    let keys = admin_get(&server, &admin, "/api/keys").await;
    let bound = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "to-sub")
        .unwrap();
    assert_eq!(bound["accounts"], json!(["sub"]));
    assert_eq!(sub["group"], "egress");
    for text in [
        accounts.to_string(),
        env.ok(&["list", "--json"]),
        env.ok(&["list"]),
        server.log(),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_backend_fails_over_to_an_account_of_another_upstream() {
    let env = Env::sqlite().await;
    // Nothing listens on port 1: the backend cannot be reached whoever asks.
    env.ok(&[
        "add",
        "down",
        "--provider",
        "anthropic-compatible",
        "--base-url",
        "http://127.0.0.1:1",
        "--api-key",
        "k",
    ]);
    env.ok(&[
        "add",
        "claude",
        "--api-key",
        &key("claude"),
        "--priority",
        "1",
    ]);
    let server = env.start();
    let response = ask_with(&server, "claude-sonnet-4-20250514", false, &[]).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-claudeflare-account"), Some("claude"));
    let record = &server.history(1).await[0];
    assert_eq!(record["failover_attempts"], 1, "{record}");
}

//! Sign-in from Claude Code's `/login` (the gateway protocol's device flow, RFC 8628), the
//! bearer it gets acting as its client key, and managed settings.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use claudeflare_testkit::TestResponse;
use common::{Env, Server};
use http::Method;
use serde_json::{Value, json};

const USER_AGENT: &str = "claude-code/2.1.332";

/// A form post as Claude Code sends it: form-encoded, its `User-Agent`, no `client_id`.
async fn form(server: &Server, path: &str, fields: &[(&str, &str)]) -> TestResponse {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    server
        .client
        .send(
            Method::POST,
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("user-agent", USER_AGENT),
            ],
            body,
        )
        .await
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn with_bearer(
    server: &Server,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> TestResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    server
        .client
        .send(method, path, &headers, body.to_owned())
        .await
}

fn message() -> String {
    json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string()
}

/// Put `managed_settings` in the config file (created by the CLI on its first run).
fn set_managed_settings(env: &Env, settings: &Value) {
    let path = env.config_path();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["managed_settings"] = settings.clone();
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_codes_device_flow_signs_in_as_a_client_key_and_ends_with_it() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let dev = env.new_key(&[
        "dev",
        "--email",
        "dev@example.com",
        "--monthly-budget-usd",
        "50",
    ]);
    let policy = json!({"env": {"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}});
    let admin = env.new_key(&["admin", "--admin"]);
    set_managed_settings(&env, &json!({"default": policy, "keys": {"other": {}}}));
    let server = env.start();

    // Discovery: absolute endpoints on the same origin.
    let metadata = server.json("/.well-known/oauth-authorization-server").await;
    assert_eq!(metadata["issuer"], server.url);
    assert_eq!(
        metadata["device_authorization_endpoint"],
        format!("{}/oauth/device_authorization", server.url)
    );
    assert_eq!(
        metadata["token_endpoint"],
        format!("{}/oauth/token", server.url)
    );
    assert_eq!(
        metadata["revocation_endpoint"],
        format!("{}/oauth/revoke", server.url)
    );

    // Device authorization: no client_id, `surface`, and a field nobody knows yet.
    let started = form(
        &server,
        "/oauth/device_authorization",
        &[("surface", "claude_code"), ("a_field_from_the_future", "1")],
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    let started = started.json();
    let device_code = started["device_code"].as_str().unwrap().to_owned();
    let user_code = started["user_code"].as_str().unwrap().to_owned();
    assert!(device_code.len() >= 43, "256 bits: {device_code}");
    assert_eq!(user_code.len(), 9);
    assert!(
        user_code
            .chars()
            .all(|c| c == '-' || "BCDFGHJKLMNPQRSTVWXZ".contains(c)),
        "base-20: {user_code}"
    );
    assert_eq!(
        started["verification_uri"],
        format!("{}/device", server.url)
    );
    assert_eq!(
        started["verification_uri_complete"],
        format!("{}/device?user_code={user_code}", server.url)
    );
    assert_eq!(started["expires_in"], 600);
    assert_eq!(started["interval"], 5);

    let device_fields = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code.as_str()),
        ("another_new_field", "x"),
    ];
    let poll = || form(&server, "/oauth/token", &device_fields);
    let pending = poll().await;
    assert_eq!(pending.status, 400);
    assert_eq!(pending.json()["error"], "authorization_pending");
    assert_eq!(
        poll().await.json()["error"],
        "slow_down",
        "polled at once again"
    );

    // The verification page: the code filled in from the link, never sent by itself; not
    // frameable.
    let page = server.get(&format!("/device?user_code={user_code}")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(page.text().contains(&format!("value=\"{user_code}\"")));
    assert!(!page.text().contains("<script"), "no auto-submit");
    let wrong = form(
        &server,
        "/device",
        &[("user_code", &user_code), ("key", "cfk_wrong")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let typed = user_code.to_lowercase().replace('-', " ");
    let approved = form(&server, "/device", &[("user_code", &typed), ("key", &dev)]).await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    assert!(approved.text().contains("Signed in as the key"));

    let tokens = poll().await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let tokens = tokens.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 8 * 3600);
    assert_eq!(tokens["email"], "dev@example.com");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        poll().await.json()["error"],
        "invalid_grant",
        "a device code is used once"
    );

    // The bearer acts as its key: served, with the key's budget headers, recorded as the key.
    let answer = with_bearer(&server, Method::POST, "/v1/messages", &access, &message()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.header("anthropic-ratelimit-unified-representative-claim"),
        Some("overage"),
        "the key's budget"
    );
    let usage = with_bearer(&server, Method::GET, "/api/oauth/usage", &access, "").await;
    assert_eq!(usage.status, 200, "{}", usage.text());
    let recorded = common::eventually(std::time::Duration::from_secs(5), || async {
        let history = with_bearer(&server, Method::GET, "/api/requests", &admin, "")
            .await
            .json();
        history[0]["api_key"] == "dev"
    })
    .await;
    assert!(recorded, "the bearer's request is recorded as its key's");

    // Managed settings: the wrapper, its checksum as ETag, 304 only to a match.
    let settings = with_bearer(&server, Method::GET, "/managed/settings", &access, "").await;
    assert_eq!(settings.status, 200, "{}", settings.text());
    let body = settings.json();
    assert_eq!(body["settings"], policy);
    let checksum = body["checksum"].as_str().unwrap().to_owned();
    assert!(checksum.starts_with("sha256:") && checksum.len() == 7 + 64);
    assert!(body["uuid"].is_string());
    let etag = format!("\"{checksum}\"");
    assert_eq!(settings.header("etag"), Some(etag.as_str()));
    let auth = format!("Bearer {access}");
    let again = server
        .client
        .send(
            Method::GET,
            "/managed/settings",
            &[("authorization", &auth), ("if-none-match", &etag)],
            "",
        )
        .await;
    assert_eq!(again.status, 304);
    let stale = server
        .client
        .send(
            Method::GET,
            "/managed/settings",
            &[("authorization", &auth), ("if-none-match", "\"sha256:0\"")],
            "",
        )
        .await;
    assert_eq!(stale.status, 200);
    assert_eq!(
        with_bearer(&server, Method::GET, "/managed/settings", "cfa_made_up", "")
            .await
            .status,
        401
    );

    // Refresh: a new pair; the old refresh token is used up.
    let renewed = form(
        &server,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let renewed = renewed.json();
    let access2 = renewed["access_token"].as_str().unwrap().to_owned();
    let refresh2 = renewed["refresh_token"].as_str().unwrap().to_owned();
    let reused = form(
        &server,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(reused.status, 401);
    assert_eq!(reused.json()["error"], "invalid_grant");
    assert_eq!(
        with_bearer(&server, Method::POST, "/v1/messages", &access2, &message())
            .await
            .status,
        200
    );

    // Sign-out (RFC 7009): the bearer is refused at once, and finally.
    let revoked = form(
        &server,
        "/oauth/revoke",
        &[("token", &access2), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(revoked.status, 200);
    let refused = with_bearer(&server, Method::POST, "/v1/messages", &access2, &message()).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    assert_eq!(
        form(&server, "/oauth/revoke", &[("token", "never-issued")])
            .await
            .status,
        200,
        "an unknown token is no error"
    );

    // Revoking the key ends its sign-ins: the refresh grant says invalid_grant.
    env.ok(&["keys", "revoke", "dev"]);
    let gone = common::eventually(std::time::Duration::from_secs(3), || async {
        with_bearer(&server, Method::POST, "/v1/messages", &access, &message())
            .await
            .status
            == 401
    })
    .await;
    assert!(gone, "the bearer of a revoked key still works");
    let after = form(
        &server,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
        ],
    )
    .await;
    assert_eq!(after.status, 401);
    assert_eq!(after.json()["error"], "invalid_grant");
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_settings_are_per_key_and_404_without_a_policy() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let other = env.new_key(&["other"]);
    let none = env.new_key(&["none"]);
    set_managed_settings(&env, &json!({"keys": {"other": {}}}));
    let server = env.start();
    let empty = with_bearer(&server, Method::GET, "/managed/settings", &other, "").await;
    assert_eq!(empty.status, 200, "an empty policy is a policy");
    assert_eq!(empty.json()["settings"], json!({}));
    let missing = with_bearer(&server, Method::GET, "/managed/settings", &none, "").await;
    assert_eq!(missing.status, 404, "no policy");
}

/// Start a sign-in as Claude Code does; its device code and user code.
async fn start_signin(server: &Server) -> (String, String) {
    let started = form(
        server,
        "/oauth/device_authorization",
        &[("surface", "claude_code")],
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    let started = started.json();
    (
        started["device_code"].as_str().unwrap().to_owned(),
        started["user_code"].as_str().unwrap().to_owned(),
    )
}

async fn poll_once(server: &Server, device_code: &str) -> TestResponse {
    form(
        server,
        "/oauth/token",
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ],
    )
    .await
}

async fn admin_post(server: &Server, admin: &str, path: &str, body: &Value) -> TestResponse {
    let auth = format!("Bearer {admin}");
    server
        .client
        .send(
            Method::POST,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_approves_or_refuses_a_sign_in_on_the_dashboard() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let admin = env.new_key(&["admin", "--admin"]);
    env.new_key(&["team"]);
    let server = env.start();

    let (device_code, user_code) = start_signin(&server).await;
    let waiting = with_bearer(&server, Method::GET, "/api/signins", &admin, "").await;
    assert_eq!(waiting.status, 200, "{}", waiting.text());
    let waiting = waiting.json();
    assert_eq!(waiting[0]["user_code"], user_code);
    assert_eq!(waiting[0]["user_agent"], USER_AGENT);
    assert_eq!(waiting[0]["surface"], "claude_code");
    let page = with_bearer(&server, Method::GET, "/dashboard", &admin, "")
        .await
        .text();
    assert!(
        page.contains("Sign-ins waiting") && page.contains(&user_code),
        "the dashboard shows it"
    );

    // A new key made for it: the sign-in is its only way in.
    let approved = admin_post(
        &server,
        &admin,
        &format!("/api/signins/{user_code}/approve"),
        &json!({"new_key": "laptop"}),
    )
    .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let tokens = poll_once(&server, &device_code).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let access = tokens.json()["access_token"].as_str().unwrap().to_owned();
    let answer = with_bearer(&server, Method::POST, "/v1/messages", &access, &message()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let keys = env.ok(&["keys", "list", "--json"]);
    assert!(keys.contains("\"laptop\""), "{keys}");

    // Approved for an existing key, or refused.
    let (_, second) = start_signin(&server).await;
    let missing = admin_post(
        &server,
        &admin,
        &format!("/api/signins/{second}/approve"),
        &json!({"key": "nobody"}),
    )
    .await;
    assert_eq!(missing.status, 404);
    let (refused_code, refused) = start_signin(&server).await;
    let denied = admin_post(
        &server,
        &admin,
        &format!("/api/signins/{refused}/deny"),
        &json!({}),
    )
    .await;
    assert_eq!(denied.status, 200, "{}", denied.text());
    assert_eq!(
        poll_once(&server, &refused_code).await.json()["error"],
        "access_denied"
    );
    let not_admin = env.new_key(&["plain"]);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        admin_post(
            &server,
            &not_admin,
            &format!("/api/signins/{second}/approve"),
            &json!({"key": "team"})
        )
        .await
        .status,
        403,
        "only an admin approves for another key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_holds_on_every_instance_of_a_shared_database() {
    let Some(env) = Env::new(common::Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let dev = env.new_key(&["dev"]);
    let (one, two) = (env.start(), env.start());
    // Started on one, approved on the other, polled on the first.
    let (device_code, user_code) = start_signin(&one).await;
    let approved = form(&two, "/device", &[("user_code", &user_code), ("key", &dev)]).await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let tokens = poll_once(&one, &device_code).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let tokens = tokens.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let issued = std::time::Instant::now();
    let works = common::eventually(std::time::Duration::from_secs(2), || async {
        with_bearer(&two, Method::POST, "/v1/messages", &access, &message())
            .await
            .status
            == 200
    })
    .await;
    assert!(works, "the other instance does not know the bearer");
    eprintln!(
        "known on the other instance after {} ms",
        issued.elapsed().as_millis()
    );
    // Refreshed on the second, revoked on the first: refused on both.
    let renewed = form(
        &two,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let renewed = renewed.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        form(
            &one,
            "/oauth/revoke",
            &[("token", &renewed), ("token_type_hint", "refresh_token")]
        )
        .await
        .status,
        200
    );
    let ended = common::eventually(std::time::Duration::from_secs(2), || async {
        with_bearer(&two, Method::POST, "/v1/messages", &access, &message())
            .await
            .status
            == 401
    })
    .await;
    assert!(
        ended,
        "revoking the sign-in's refresh token ends its bearers everywhere"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_serves_https_itself_with_tls_cert_and_tls_key() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let dev = env.new_key(&["dev"]);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (
        env.dir.path().join("cert.pem"),
        env.dir.path().join("key.pem"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = env.start_with(&["serve", "--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let base = format!("https://localhost:{port}");
    let trusted = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(trusted)
        .build()
        .unwrap();
    // The sign-in's endpoints are named https.
    let metadata: Value = client
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["token_endpoint"], format!("{base}/oauth/token"));
    let answer = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", &dev)
        .header("content-type", "application/json")
        .body(message())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Plain http on the same port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A missing key file is told, naming it, and nothing starts.
    let output = env.cli(&[
        "serve",
        "--tls-cert",
        &cert,
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
    let output = env.cli(&["serve", "--tls-cert", &cert]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--tls-key"));
}

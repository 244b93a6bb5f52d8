//! Claude on the clouds as a user runs it: Bedrock and Vertex AI accounts added with the CLI,
//! their secrets encrypted at rest, serving JSON and streams through the server, and taking the
//! overflow of an Anthropic subscription by priority.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{CloudReply, MockCloud, Reply, TestResponse};
use common::{Env, Server};
use serde_json::{Value, json};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";

async fn ask(server: &Server, model: &str, stream: bool) -> TestResponse {
    let body = json!({"model": model, "max_tokens": 16, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    server.client.post_json("/v1/messages", &body, &[]).await
}

fn add_bedrock(env: &Env, name: &str, cloud: &MockCloud, extra: &[&str]) {
    let url = cloud.url();
    let mut args = vec![
        "add",
        name,
        "--provider",
        "bedrock",
        "--region",
        "us-east-1",
        "--base-url",
        &url,
    ];
    args.extend_from_slice(extra);
    env.ok(&args);
}

/// Write `label`'s key file of the mock and add it as Vertex account `name`.
fn add_vertex(env: &Env, name: &str, cloud: &MockCloud, region: &str, extra: &[&str]) {
    let file = env.dir.path().join(format!("{name}.json"));
    std::fs::write(&file, cloud.service_account(name, "my-project")).unwrap();
    let (url, file) = (cloud.url(), file.to_str().unwrap().to_owned());
    let mut args = vec![
        "add",
        name,
        "--provider",
        "vertex",
        "--project",
        "my-project",
        "--region",
        region,
        "--service-account-file",
        &file,
        "--base-url",
        &url,
    ];
    args.extend_from_slice(extra);
    env.ok(&args);
}

fn account<'a>(accounts: &'a Value, name: &str) -> &'a Value {
    accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_accounts_are_stored_encrypted_and_serve_json_and_streams() {
    let env = Env::sqlite().await;
    let bedrock = MockCloud::bedrock("us-east-1").await;
    let vertex = MockCloud::vertex().await;
    bedrock.aws_keys("aws", KEY_ID, SECRET, None);
    add_bedrock(
        &env,
        "aws",
        &bedrock,
        &[
            "--aws-access-key-id",
            KEY_ID,
            "--aws-secret-access-key",
            SECRET,
        ],
    );
    add_vertex(&env, "gcp", &vertex, "us-east5", &["--priority", "1"]);

    // Nothing secret is in the database in clear.
    let stored = std::fs::read(env.db_path()).unwrap();
    let wal = std::fs::read(env.db_path().with_extension("db-wal")).unwrap_or_default();
    let private_key_line = claudeflare_testkit::cloud::TEST_PRIVATE_KEY
        .lines()
        .nth(1)
        .unwrap();
    for bytes in [&stored, &wal] {
        let text = String::from_utf8_lossy(bytes);
        for secret in [SECRET, KEY_ID, private_key_line] {
            assert!(!text.contains(secret), "{secret} is stored in clear");
        }
    }

    let server = env.start();
    let json = ask(&server, "claude-opus-4-7", false).await;
    assert_eq!(json.status, 200, "{}", json.text());
    assert_eq!(json.header("x-claudeflare-provider"), Some("bedrock"));
    let stream = ask(&server, "claude-opus-4-7", true).await;
    assert_eq!(stream.status, 200);
    assert!(
        stream.text().contains("event: message_stop"),
        "{}",
        stream.text()
    );

    // Bedrock throttles: the account rests and Vertex AI, the next priority, serves.
    bedrock.script(
        "aws",
        [CloudReply::error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )],
    );
    let overflow = ask(&server, "claude-sonnet-4-5-20250929", true).await;
    assert_eq!(overflow.status, 200, "{}", overflow.text());
    assert_eq!(overflow.header("x-claudeflare-account"), Some("gcp"));
    assert_eq!(overflow.header("x-claudeflare-provider"), Some("vertex"));
    let sent = vertex.requests().last().cloned().unwrap();
    assert!(
        sent.path.ends_with("/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
        "{}",
        sent.path
    );
    assert_eq!(vertex.grants().len(), 1);

    let history = server.history(3).await;
    assert_eq!(history[0]["provider"], "vertex");
    assert_eq!(history[0]["account"], "gcp");
    for record in &history[1..] {
        assert_eq!(record["provider"], "bedrock");
    }
    for record in &history {
        assert_eq!(record["price_known"], true, "{record}");
        assert!(record["cost_usd"].as_f64().unwrap() > 0.0, "{record}");
    }

    let accounts = server.json("/api/accounts").await;
    let text = accounts.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains("PRIVATE KEY"),
        "{text}"
    );
    let aws = account(&accounts, "aws");
    assert_eq!(aws["provider"], "bedrock");
    assert_eq!(aws["region"], "us-east-1");
    assert_eq!(aws["status"], "rate_limited");
    let gcp = account(&accounts, "gcp");
    assert_eq!(gcp["provider"], "vertex");
    assert_eq!(gcp["project"], "my-project");
    assert_eq!(gcp["region"], "us-east5");
    assert_eq!(gcp["priority"], 1);
    let listed = env.ok(&["list"]);
    assert!(
        listed.contains("bedrock") && listed.contains("vertex"),
        "{listed}"
    );
    assert!(!server.log().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_overflows_to_a_cloud_account_by_priority_and_comes_back() {
    let env = Env::sqlite().await;
    let output = env.oauth(
        &["add", "max", "--mode", "max", "--tier", "5"],
        "max",
        false,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bedrock = MockCloud::bedrock("us-east-1").await;
    bedrock.api_key("keyed", "ABSKQmVkcm9ja0FQSUtleQ");
    add_bedrock(
        &env,
        "aws",
        &bedrock,
        &[
            "--bedrock-api-key",
            "ABSKQmVkcm9ja0FQSUtleQ",
            "--priority",
            "1",
        ],
    );
    env.mock.script("max", [Reply::rate_limited(2)]);
    let server = env.start();

    let first = ask(&server, "claude-opus-4-7", false).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-claudeflare-account"), Some("aws"));
    let streamed = ask(&server, "claude-opus-4-7", true).await;
    assert_eq!(streamed.header("x-claudeflare-account"), Some("aws"));
    assert!(streamed.text().contains("event: message_stop"));
    assert_eq!(bedrock.requests().len(), 2);
    assert!(
        bedrock
            .requests()
            .iter()
            .all(|r| r.account.as_deref() == Some("keyed"))
    );

    let back = common::eventually(Duration::from_secs(6), || async {
        ask(&server, "claude-opus-4-7", false)
            .await
            .header("x-claudeflare-account")
            == Some("max")
    })
    .await;
    assert!(back, "the subscription never served again");
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_keys_can_come_from_a_profile_or_the_servers_environment() {
    let mut env = Env::sqlite().await;
    let bedrock = MockCloud::bedrock("us-east-1").await;
    bedrock.aws_keys(
        "profiled",
        "AKIAPROFILE",
        "profile-secret",
        Some("profile-session"),
    );
    bedrock.aws_keys("environment", "AKIAENVIRONMENT", "environment-secret", None);
    let file = env.dir.path().join("aws-credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = other\n\n[team]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = profile-secret\naws_session_token = profile-session\n",
    )
    .unwrap();
    env.set("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap());
    env.set(
        "AWS_CONFIG_FILE",
        env.dir.path().join("none").to_str().unwrap(),
    );
    add_bedrock(&env, "p", &bedrock, &["--aws-profile", "team"]);
    let missing = env.cli(&[
        "add",
        "q",
        "--provider",
        "bedrock",
        "--region",
        "us-east-1",
        "--aws-profile",
        "nobody",
    ]);
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("nobody") && said.contains("aws_access_key_id"),
        "{said}"
    );

    env.set("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT");
    env.set("AWS_SECRET_ACCESS_KEY", "environment-secret");
    add_bedrock(&env, "e", &bedrock, &["--priority", "1"]);
    let stored = String::from_utf8_lossy(&std::fs::read(env.db_path()).unwrap()).into_owned();
    assert!(!stored.contains("profile-secret") && !stored.contains("environment-secret"));

    let server = env.start();
    let json = ask(&server, "claude-opus-4-7", false).await;
    assert_eq!(json.status, 200, "{}", json.text());
    bedrock.script(
        "profiled",
        [CloudReply::error(429, "ThrottlingException", "slow down")],
    );
    let overflow = ask(&server, "claude-opus-4-7", false).await;
    assert_eq!(overflow.status, 200, "{}", overflow.text());
    let who: Vec<_> = bedrock
        .requests()
        .iter()
        .map(|r| r.account.clone())
        .collect();
    assert_eq!(
        who,
        [
            Some("profiled".into()),
            Some("profiled".into()),
            Some("environment".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_cloud_account_says_what_is_missing() {
    let env = Env::sqlite().await;
    let refused = |args: &[&str], needle: &str| {
        let output = env.cli(args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(needle), "{args:?}: {said}");
    };
    refused(&["add", "a", "--provider", "bedrock"], "--region");
    refused(
        &["add", "a", "--provider", "vertex", "--region", "us-east5"],
        "--project",
    );
    refused(
        &[
            "add",
            "a",
            "--provider",
            "vertex",
            "--region",
            "us-east5",
            "--project",
            "p",
        ],
        "--service-account-file",
    );
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"type": "service_account", "client_email": "x@p.iam.gserviceaccount.com", "private_key": "not a key", "token_uri": "https://oauth2.googleapis.com/token"}"#).unwrap();
    refused(
        &[
            "add",
            "a",
            "--provider",
            "vertex",
            "--region",
            "us-east5",
            "--project",
            "p",
            "--service-account-file",
            bad.to_str().unwrap(),
        ],
        "RSA",
    );
    refused(
        &[
            "add",
            "a",
            "--provider",
            "bedrock",
            "--region",
            "us-east-1",
            "--aws-profile",
            "x",
            "--bedrock-api-key",
            "k",
        ],
        "one of",
    );
    refused(
        &[
            "add",
            "a",
            "--provider",
            "bedrock",
            "--region",
            "us-east-1",
            "--api-key",
            "k",
        ],
        "not --api-key",
    );
    refused(
        &["add", "a", "--provider", "bedrock", "--region", "US East"],
        "invalid region",
    );
    refused(
        &["add", "a", "--region", "us-east-1", "--api-key", "k"],
        "--provider bedrock or vertex",
    );
    assert!(env.ok(&["list", "--json"]).trim() == "[]");
}

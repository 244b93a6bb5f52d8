//! The mock itself behaves as its docs say.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use claudeflare_testkit::{MockUpstream, Reply, TestClient, sse};
use http::Method;
use http_body_util::BodyExt;

#[tokio::test]
async fn a_scripted_broken_stream_breaks() {
    let mock = MockUpstream::start().await;
    mock.script(
        "k",
        [Reply::Stream {
            delay: Duration::ZERO,
            fail_after: Some(10),
            chunk_size: None,
        }],
    );
    let client = TestClient::new(mock.url());
    let response = client
        .open(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "k")],
            r#"{"stream":true}"#,
        )
        .await;
    let mut body = response.into_body();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap()),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(error.is_some(), "got {} bytes", got.len());
    assert!(got.len() < sse::message_stream("x").len());
}

/// The answers that look alike, as Anthropic sends them.
#[tokio::test]
async fn look_alike_answers_carry_their_status_type_message_and_headers() {
    let mock = MockUpstream::start().await;
    mock.script(
        "k",
        [
            Reply::banned(),
            Reply::long_context_refused(),
            Reply::out_of_credits(),
            Reply::limited_without_reset(),
            Reply::extra_usage_required(),
            Reply::allowed_warning(0.97, 0.4),
        ],
    );
    let client = TestClient::new(mock.url());
    let body = serde_json::json!({"model": "m"});
    let send = || client.post_json("/v1/messages", &body, &[("x-api-key", "k")]);
    let expect = [
        (403, "permission_error", claudeflare_testkit::BANNED_MESSAGE),
        (
            429,
            "rate_limit_error",
            claudeflare_testkit::LONG_CONTEXT_MESSAGE,
        ),
        (429, "rate_limit_error", "Out of credits for this model."),
        (
            429,
            "rate_limit_error",
            "Rate limited. Please try again later.",
        ),
        (
            400,
            "invalid_request_error",
            claudeflare_testkit::EXTRA_USAGE_MESSAGE,
        ),
    ];
    let mut responses = Vec::new();
    for (status, kind, message) in expect {
        let response = send().await;
        assert_eq!(response.status, status);
        let json = response.json();
        assert_eq!(json["error"]["type"], kind);
        assert_eq!(json["error"]["message"], message);
        responses.push(response);
    }
    assert_eq!(
        responses[2].header("anthropic-ratelimit-unified-overage-disabled-reason"),
        Some("out_of_credits")
    );
    assert_eq!(responses[3].header("x-should-retry"), Some("true"));
    assert_eq!(responses[3].header("retry-after"), None);
    assert_eq!(
        responses[3].header("anthropic-ratelimit-unified-reset"),
        None
    );

    let warning = send().await;
    assert_eq!(warning.status, 200);
    assert_eq!(
        warning.header("anthropic-ratelimit-unified-status"),
        Some("allowed_warning")
    );
    assert_eq!(
        warning.header("anthropic-ratelimit-unified-5h-utilization"),
        Some("0.97")
    );
    let usage = &warning.json()["usage"];
    assert_eq!(usage["cache_creation"]["ephemeral_1h_input_tokens"], 4);
    assert_eq!(
        usage["cache_creation_input_tokens"],
        usage["cache_creation"]["ephemeral_5m_input_tokens"]
            .as_u64()
            .unwrap()
            + 4
    );
}

#[tokio::test]
async fn the_usage_endpoint_answers_both_shapes_and_throttles() {
    let mock = MockUpstream::start().await;
    let (access, _) = mock.oauth_account("m");
    let limits = serde_json::json!({"limits": [{"kind": "session", "percent": 12, "resets_at": null, "scope": null}]});
    mock.set_usage("m", limits.clone());
    mock.throttle_usage("m", 1, Some(30));
    let client = TestClient::new(mock.url());
    let bearer = format!("Bearer {access}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("anthropic-beta", "oauth-2025-04-20"),
    ];
    let throttled = client
        .send(Method::GET, "/api/oauth/usage", &headers, "")
        .await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("30"));
    let answered = client
        .send(Method::GET, "/api/oauth/usage", &headers, "")
        .await;
    assert_eq!(answered.status, 200);
    assert_eq!(answered.json(), limits);
    assert_eq!(mock.usage_calls("m"), 2);
}

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

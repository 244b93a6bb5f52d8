//! The whole balancer stack, served by axum, against the mock Anthropic upstream.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use claudeflare_testkit::{
    BANNED_MESSAGE, CACHE_CREATION_1H_TOKENS, CACHE_CREATION_TOKENS, CACHE_READ_TOKENS,
    EXTRA_USAGE_MESSAGE, INPUT_TOKENS, LONG_CONTEXT_MESSAGE, MockUpstream, OUTPUT_TOKENS, Reply,
    TestClient, message_json, sse,
};
use claudeflare_tower::RetryConfig;
use claudeflare_tower::TokenPair;
use claudeflare_tower::{
    Account, AccountEntry, AccountInfo, AccountPool, AccountStatus, Balancer, BoxFuture,
    Credentials, LiveState, Mode, OAuthTokens, StateStore,
};
use claudeflare_tower::{Anthropic, Classification, DEFAULT_COOLDOWN, Outcome, Provider};
use claudeflare_tower::{MemoryRecorder, RequestRecord};
use claudeflare_tower::{RefreshError, TokenRefresher};
use claudeflare_tower::{RoundRobin, StrategyHandle};
use http::Method;
use http_body_util::BodyExt;
use serde_json::json;

const MODEL: &str = "claude-sonnet-4-20250514";

struct Harness {
    mock: MockUpstream,
    pool: AccountPool,
    recorder: Arc<MemoryRecorder>,
    client: TestClient,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    async fn start(
        accounts: Vec<Account>,
        configure: impl FnOnce(Balancer, &MockUpstream) -> Balancer,
    ) -> Self {
        let mock = MockUpstream::start().await;
        Self::with_mock(mock, accounts, configure).await
    }

    async fn with_mock(
        mock: MockUpstream,
        accounts: Vec<Account>,
        configure: impl FnOnce(Balancer, &MockUpstream) -> Balancer,
    ) -> Self {
        Self::with_pool(mock, AccountPool::new(accounts), configure).await
    }

    async fn with_pool(
        mock: MockUpstream,
        pool: AccountPool,
        configure: impl FnOnce(Balancer, &MockUpstream) -> Balancer,
    ) -> Self {
        let recorder = Arc::new(MemoryRecorder::default());
        let balancer = Balancer::new(pool.clone())
            .upstream_url(mock.url().parse::<http::Uri>().unwrap())
            .recorder(recorder.clone())
            .retry(RetryConfig {
                attempts: 3,
                delay: Duration::from_millis(20),
                backoff: 2.0,
            });
        let service = configure(balancer, &mock).build();
        let app = axum::Router::new().route_service("/v1/{*rest}", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TestClient::new(format!("http://{}", listener.local_addr().unwrap()));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            mock,
            pool,
            recorder,
            client,
            server,
        }
    }

    /// API-key accounts named `names`, each with the key `key-NAME`, and default settings.
    async fn keys(names: &[&str]) -> Self {
        let accounts = names
            .iter()
            .map(|n| Account::api_key(*n, format!("key-{n}")))
            .collect();
        Self::start(accounts, |b, _| b).await
    }

    /// The accounts (keys) the mock saw, in order.
    fn tried(&self) -> Vec<String> {
        self.mock
            .requests()
            .iter()
            .map(|r| r.account.clone().unwrap())
            .collect()
    }

    /// A streaming message request, its body left to read.
    async fn open_stream(&self) -> http::Response<hyper::body::Incoming> {
        let body = request_body(true).to_string();
        let headers = [("content-type", "application/json")];
        self.client
            .open(Method::POST, "/v1/messages", &headers, body)
            .await
    }

    async fn message(&self, stream: bool) -> claudeflare_testkit::TestResponse {
        self.client
            .post_json("/v1/messages", &request_body(stream), &[])
            .await
    }

    async fn records(&self, count: usize) -> Vec<RequestRecord> {
        // A record is handed over when its body ends, which can be just after the client read it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut records = self.recorder.records();
        while records.len() < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            records = self.recorder.records();
        }
        assert_eq!(records.len(), count, "{records:#?}");
        records
    }
}

fn request_body(stream: bool) -> serde_json::Value {
    json!({"model": MODEL, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "héllo 🌍"}]})
}

fn oauth_account(name: &str, tokens: (String, String), expires_in: TimeDelta) -> Account {
    Account::new(
        name,
        Mode::Max,
        Credentials::OAuth(OAuthTokens {
            access_token: tokens.0.into(),
            refresh_token: tokens.1.into(),
            expires_at: Utc::now() + expires_in,
        }),
    )
}

fn expected_usage(record: &RequestRecord) {
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);
    assert_eq!(record.usage.output_tokens, OUTPUT_TOKENS);
    assert_eq!(record.usage.cache_read_input_tokens, CACHE_READ_TOKENS);
    assert_eq!(
        record.usage.cache_creation_input_tokens,
        CACHE_CREATION_TOKENS
    );
    assert_eq!(
        record.usage.cache_creation_1h_input_tokens,
        CACHE_CREATION_1H_TOKENS
    );
}

#[tokio::test]
async fn non_streaming_passes_through_byte_for_byte_with_the_accounts_key() {
    let h = Harness::start(
        vec![Account::api_key("a", "sk-ant-api03-account-a")],
        |b, _| b,
    )
    .await;
    let sent = request_body(false).to_string();
    let response = h
        .client
        .send(
            Method::POST,
            "/v1/messages?beta=true",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "prompt-caching-2024-07-31"),
                ("x-stainless-lang", "js"),
                ("x-api-key", "client-secret-key"),
                ("authorization", "Bearer client-secret-token"),
                ("connection", "keep-alive"),
            ],
            sent.clone(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, message_json(MODEL).to_string().as_bytes());
    assert_eq!(response.header("x-claudeflare-account"), Some("a"));
    assert_eq!(response.header("request-id"), Some("req_mock_0"));
    let request_id = response
        .header("x-claudeflare-request-id")
        .unwrap()
        .to_owned();

    let received = h.mock.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.path, "/v1/messages?beta=true");
    assert_eq!(upstream.body, sent.as_bytes());
    assert_eq!(upstream.headers["x-api-key"], "sk-ant-api03-account-a");
    assert!(upstream.headers.get("authorization").is_none());
    assert_eq!(upstream.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        upstream.headers["anthropic-beta"],
        "prompt-caching-2024-07-31"
    );
    assert_eq!(upstream.headers["x-stainless-lang"], "js");
    for value in upstream.headers.values() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains("client-secret"),
            "client credential leaked upstream: {value}"
        );
    }

    let record = &h.records(1).await[0];
    assert_eq!(record.id, request_id);
    assert_eq!(record.account.as_deref(), Some("a"));
    assert_eq!(record.status, Some(200));
    assert!(record.success);
    assert_eq!(record.model.as_deref(), Some(MODEL));
    assert!(!record.stream);
    assert_eq!(record.failover_attempts, 0);
    assert!(
        record.upstream_ms.is_some() && record.overhead_us.is_some(),
        "{record:?}"
    );
    expected_usage(record);
}

#[tokio::test]
async fn streaming_passes_through_byte_for_byte_and_usage_is_read() {
    let h = Harness::keys(&["a"]).await;
    let response = h.open_stream().await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
            frames += 1;
        }
    }
    assert_eq!(received, sse::message_stream(MODEL));
    assert!(
        frames > 1,
        "the stream arrived in pieces, not buffered whole"
    );
    let record = &h.records(1).await[0];
    assert!(record.stream && record.success, "{record:?}");
    assert!(record.first_byte_ms.is_some());
    expected_usage(record);
}

#[tokio::test]
async fn subscription_accounts_send_bearer_and_the_oauth_beta_flag() {
    let mock = MockUpstream::start().await;
    let tokens = mock.oauth_account("m");
    let h = Harness::with_mock(
        mock,
        vec![oauth_account("m", tokens, TimeDelta::hours(8))],
        |b, _| b,
    )
    .await;
    let response = h
        .client
        .post_json(
            "/v1/messages",
            &request_body(false),
            &[
                ("x-api-key", "client-key"),
                ("anthropic-beta", "tools-2024-04-04"),
            ],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let upstream = &h.mock.requests()[0];
    assert_eq!(upstream.headers["authorization"], "Bearer sk-ant-oat01-m-0");
    assert_eq!(
        upstream.headers["anthropic-beta"],
        "tools-2024-04-04,oauth-2025-04-20"
    );
    assert!(upstream.headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn a_429_fails_over_for_plain_and_streaming_requests() {
    let h = Harness::keys(&["a", "b", "c"]).await;
    h.mock.script("key-a", [Reply::rate_limited(3600)]);
    h.mock
        .script("key-b", [Reply::Message, Reply::rate_limited(60)]);

    let response = h.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    let until = h
        .pool
        .get("a")
        .unwrap()
        .limited_until(Utc::now())
        .expect("a is benched");
    let expected = Utc::now() + TimeDelta::seconds(3600);
    assert!(
        (until - expected).num_seconds().abs() <= 2,
        "{until} vs {expected}"
    );

    // The session moved to b; b is limited in turn, and a stream fails over to c intact.
    let response = h.message(true).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("c"));
    assert_eq!(response.body, sse::message_stream(MODEL));

    let records = h.records(2).await;
    assert_eq!(
        (records[0].failover_attempts, records[0].account.as_deref()),
        (1, Some("b"))
    );
    assert_eq!(
        (records[1].failover_attempts, records[1].account.as_deref()),
        (1, Some("c"))
    );
    expected_usage(&records[1]);
    let tried = h.tried();
    assert_eq!(tried, ["key-a", "key-b", "key-b", "key-c"]);
    assert_eq!(
        h.pool.get("a").unwrap().status(Utc::now()),
        AccountStatus::RateLimited
    );
}

#[tokio::test]
async fn server_errors_and_529_are_retried_with_backoff_then_fail_over() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock
        .script("key-a", [Reply::status(500), Reply::status(529)]);
    let response = h.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("a"));
    let times: Vec<_> = h.mock.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= Duration::from_millis(20),
        "first retry after the delay"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(40),
        "second retry after twice the delay"
    );

    // Four failures in a row (the try and 3 retries) move the request to b.
    h.mock.script(
        "key-a",
        [
            Reply::status(503),
            Reply::status(529),
            Reply::status(500),
            Reply::status(502),
        ],
    );
    let response = h.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    assert_eq!(h.mock.requests().len(), 3 + 5);
    assert!(
        h.pool.get("a").unwrap().is_available(Utc::now()),
        "server errors do not bench an account"
    );
}

#[tokio::test]
async fn no_available_account_is_a_503_with_retry_after() {
    let h = Harness::keys(&["a", "b"]).await;
    h.pool.get("a").unwrap().set_paused(true);
    let until = Utc::now() + TimeDelta::seconds(90);
    let limited = Classification::new(Outcome::RateLimited { until });
    h.pool
        .observe(&h.pool.get("b").unwrap(), &limited, Utc::now());
    let response = h.message(false).await;
    assert_eq!(response.status, 503);
    let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
    assert!((89..=90).contains(&retry_after), "{retry_after}");
    let body = response.json();
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("claudeflare: no account is available")
    );
    assert!(h.mock.requests().is_empty());
    assert_eq!(h.records(1).await[0].status, Some(503));
}

/// Counts persisted tokens, to prove the new pair is stored before it is used.
struct Persisting {
    inner: Anthropic,
    persisted: Mutex<Vec<(String, String)>>,
}

impl TokenRefresher for Persisting {
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        token: &'a secrecy::SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        self.inner.refresh(account, token)
    }

    fn persist<'a>(
        &'a self,
        _account: &'a AccountInfo,
        tokens: &'a OAuthTokens,
    ) -> BoxFuture<'a, Result<(), claudeflare_tower::BoxError>> {
        use secrecy::ExposeSecret;
        let pair = (
            tokens.access_token.expose_secret().to_owned(),
            tokens.refresh_token.expose_secret().to_owned(),
        );
        self.persisted.lock().unwrap().push(pair);
        Box::pin(async { Ok(()) })
    }
}

fn persisting(mock: &MockUpstream) -> Arc<Persisting> {
    Arc::new(Persisting {
        inner: Anthropic::new().oauth(mock.token_url().parse().unwrap(), "test-client"),
        persisted: Mutex::default(),
    })
}

#[tokio::test]
async fn twenty_requests_on_an_expired_token_cause_one_refresh() {
    let mock = MockUpstream::start().await;
    let tokens = mock.oauth_account("m");
    mock.expire_access_token("m");
    mock.set_token_delay(Duration::from_millis(200));
    let refresher = persisting(&mock);
    let account = oauth_account("m", tokens, TimeDelta::minutes(-1));
    let r = refresher.clone();
    let h = Harness::with_mock(mock, vec![account], move |b, _| b.refresher(r)).await;

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = h.client.clone();
        set.spawn(async move {
            client
                .post_json("/v1/messages", &request_body(false), &[])
                .await
                .status
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let grants = h.mock.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].grant_type, "refresh_token");
    assert_eq!(grants[0].body["refresh_token"], "sk-ant-ort01-m-0");
    assert_eq!(grants[0].body["client_id"], "test-client");
    let (access, refresh) = h.mock.tokens("m").unwrap();
    assert_eq!(
        *refresher.persisted.lock().unwrap(),
        [(access.clone(), refresh)],
        "the rotated pair was persisted once"
    );
    let requests = h.mock.requests();
    assert_eq!(requests.len(), 20);
    assert!(
        requests
            .iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {access}").as_str())
    );
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_retries_once() {
    let mock = MockUpstream::start().await;
    let tokens = mock.oauth_account("m");
    let refresher = persisting(&mock);
    let r = refresher.clone();
    let h = Harness::with_mock(
        mock,
        vec![oauth_account("m", tokens, TimeDelta::hours(8))],
        move |b, _| b.refresher(r),
    )
    .await;
    h.mock.expire_access_token("m");
    let response = h.message(false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(h.mock.grants().len(), 1);
    let auth: Vec<_> = h
        .mock
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth, ["Bearer sk-ant-oat01-m-0", "Bearer sk-ant-oat01-m-1"]);
    assert_eq!(h.records(1).await[0].failover_attempts, 0);
}

#[tokio::test]
async fn invalid_grant_takes_the_account_out_of_rotation() {
    let mock = MockUpstream::start().await;
    let tokens = mock.oauth_account("m");
    mock.revoke("m");
    let refresher = persisting(&mock);
    let accounts = vec![
        oauth_account("m", tokens, TimeDelta::minutes(-5)),
        Account::api_key("a", "key-a"),
    ];
    let r = refresher.clone();
    let h = Harness::with_mock(mock, accounts, move |b, _| b.refresher(r)).await;
    let response = h.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("a"));
    assert_eq!(
        h.pool.get("m").unwrap().status(Utc::now()),
        AccountStatus::NeedsReauth
    );
    let response = h.message(false).await;
    assert_eq!(response.header("x-claudeflare-account"), Some("a"));
    assert_eq!(
        h.mock.grants().len(),
        1,
        "no second refresh of a dead token"
    );
    assert!(refresher.persisted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_broken_stream_ends_with_an_sse_error_event_and_is_recorded() {
    let h = Harness::keys(&["a"]).await;
    h.mock.script(
        "key-a",
        [Reply::Stream {
            delay: Duration::ZERO,
            fail_after: Some(10),
            chunk_size: None,
        }],
    );
    let response = h.message(true).await;
    assert_eq!(response.status, 200);
    let text = response.text();
    let full = String::from_utf8_lossy(&sse::message_stream(MODEL)).into_owned();
    let sent: usize = sse::odd_chunks(full.as_bytes())
        .iter()
        .take(10)
        .map(Bytes::len)
        .sum();
    assert!(
        text.starts_with(&full[..sent]),
        "what arrived before the break is passed on unchanged"
    );
    let tail = text.rsplit("event: error\ndata: ").next().unwrap();
    let event: serde_json::Value = serde_json::from_str(tail.trim_end()).unwrap();
    assert_eq!(event["type"], "error");
    assert_eq!(event["error"]["type"], "api_error");
    assert!(
        event["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("claudeflare: upstream stream failed")
    );
    assert!(text.ends_with("\n\n"));
    let record = &h.records(1).await[0];
    assert!(!record.success);
    assert!(
        record
            .error
            .as_deref()
            .unwrap()
            .contains("upstream stream failed"),
        "{record:?}"
    );
    assert_eq!(
        h.mock.requests().len(),
        1,
        "nothing is retried once bytes went out"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    let h = Harness::keys(&["a"]).await;
    h.mock.script(
        "key-a",
        [Reply::Stream {
            delay: Duration::from_millis(30),
            fail_after: None,
            chunk_size: Some(16),
        }],
    );
    let response = h.open_stream().await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);

    let record = &h.records(1).await[0];
    assert_eq!(
        record.error.as_deref(),
        Some("client disconnected before the response ended")
    );
    assert!(!record.success);
    assert_eq!(
        h.mock.until_cancelled(1, Duration::from_secs(5)).await,
        1,
        "the upstream stream was cut"
    );
    assert_eq!(h.mock.completed_streams(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_the_upstream() {
    let h = Harness::start(vec![Account::api_key("a", "key-a")], |b, _| {
        b.body_limit(1024)
    })
    .await;
    let big = json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let response = h.client.post_json("/v1/messages", &big, &[]).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["error"]["type"], "request_too_large");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn a_silent_upstream_is_a_504() {
    let h = Harness::start(vec![Account::api_key("a", "key-a")], |b, _| {
        b.timeouts(Duration::from_secs(1), Duration::from_millis(200))
    })
    .await;
    h.mock.script("key-a", [Reply::Stall]);
    let response = h.message(false).await;
    assert_eq!(response.status, 504);
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer")
    );
    assert_eq!(h.mock.requests().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_after_retries() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: http::Uri = format!("http://{}", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(closed);
    let accounts = ["a", "b", "c"]
        .iter()
        .map(|n| Account::api_key(*n, format!("key-{n}")))
        .collect();
    let h = Harness::start(accounts, move |b, _| b.upstream_url(url)).await;
    let started = std::time::Instant::now();
    let response = h.message(false).await;
    let waited = started.elapsed();
    assert_eq!(response.status, 502);
    // 3 retries of 20, 40 and 80 ms: the request's, not once more for each of the 3 accounts.
    assert!(waited < Duration::from_millis(400), "{waited:?}");
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("claudeflare: the upstream could not be reached"),
        "{message}"
    );
    let record = &h.records(1).await[0];
    assert_eq!(record.status, Some(502));
    assert_eq!(record.account.as_deref(), Some("a"));
    assert_eq!(record.failover_attempts, 0, "no other account was tried");
}

#[tokio::test]
async fn the_strategy_can_be_switched_while_serving() {
    let strategy = StrategyHandle::new(Box::new(claudeflare_tower::Session::default()));
    let handle = strategy.clone();
    let h = Harness::start(
        vec![
            Account::api_key("a", "key-a"),
            Account::api_key("b", "key-b"),
        ],
        move |b, _| b.strategy(strategy),
    )
    .await;
    let served_by = || async {
        h.message(false)
            .await
            .header("x-claudeflare-account")
            .unwrap()
            .to_owned()
    };
    let mut served = vec![served_by().await, served_by().await];
    handle.set(Box::new(RoundRobin::default()));
    served.extend([served_by().await, served_by().await]);
    assert_eq!(served, ["a", "a", "a", "b"]);
}

#[tokio::test]
async fn a_529_on_a_streaming_request_is_retried_like_any_other() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script("key-a", [Reply::status(529)]);
    let response = h.message(true).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, sse::message_stream(MODEL));
    let tried = h.tried();
    assert_eq!(
        tried,
        ["key-a", "key-a"],
        "retried on the same account after the backoff delay"
    );
}

#[tokio::test]
async fn a_client_gone_before_the_response_is_recorded() {
    let h = Harness::keys(&["a"]).await;
    h.mock.script("key-a", [Reply::Stall]);
    let waited = tokio::time::timeout(Duration::from_millis(300), h.message(false)).await;
    assert!(waited.is_err(), "the upstream never answered");
    let record = &h.records(1).await[0];
    assert_eq!(
        record.error.as_deref(),
        Some("client disconnected before the response started")
    );
    assert_eq!(record.status, None);
}

#[tokio::test]
async fn a_temporary_refresh_failure_is_retried_and_does_not_bench_the_account() {
    let mock = MockUpstream::start().await;
    let tokens = mock.oauth_account("m");
    mock.fail_token_endpoint(1);
    let refresher = persisting(&mock);
    let r = refresher.clone();
    let h = Harness::with_mock(
        mock,
        vec![oauth_account("m", tokens, TimeDelta::minutes(-1))],
        move |b, _| b.refresher(r),
    )
    .await;
    let response = h.message(false).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let grants = h.mock.grants();
    assert_eq!(
        grants.len(),
        2,
        "a 503, then a retry after the backoff delay: {grants:?}"
    );
    assert!(!grants[0].accepted && grants[1].accepted);
    assert_eq!(
        h.pool.get("m").unwrap().status(Utc::now()),
        AccountStatus::Active
    );
}

#[tokio::test]
async fn a_banned_account_fails_over_and_stays_out_until_resumed() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script("key-a", [Reply::banned()]);
    let response = h.message(true).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    assert_eq!(response.body, sse::message_stream(MODEL));
    let a = h.pool.get("a").unwrap();
    let in_a_week = Utc::now() + TimeDelta::days(7);
    assert_eq!(a.status(in_a_week), AccountStatus::Forbidden);
    assert_eq!(a.live().status_reason.as_deref(), Some(BANNED_MESSAGE));
    // However many requests follow, none goes back to the banned account.
    for _ in 0..3 {
        assert_eq!(
            h.message(false).await.header("x-claudeflare-account"),
            Some("b")
        );
    }
    assert_eq!(h.tried(), ["key-a", "key-b", "key-b", "key-b", "key-b"]);
    a.clear_forbidden();
    assert!(a.is_available(Utc::now()));
    h.records(4).await;
}

#[tokio::test]
async fn when_every_account_is_banned_the_client_gets_anthropics_403() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script("key-a", [Reply::banned()]);
    h.mock.script("key-b", [Reply::banned()]);
    let response = h.message(false).await;
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error"]["message"], BANNED_MESSAGE);
    let records = h.records(1).await;
    let error = records[0].error.as_deref().unwrap();
    assert!(
        error.starts_with("account refused by the upstream"),
        "{error}"
    );
    assert!(error.contains(BANNED_MESSAGE), "{error}");
}

#[tokio::test]
async fn scoped_refusals_fail_over_without_benching_and_the_last_is_anthropics_own() {
    let h = Harness::keys(&["a", "b", "c"]).await;
    h.mock.script("key-a", [Reply::long_context_refused()]);
    h.mock.script("key-b", [Reply::out_of_credits()]);
    let response = h.message(false).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("c"));
    for name in ["a", "b"] {
        let account = h.pool.get(name).unwrap();
        assert_eq!(account.status(Utc::now()), AccountStatus::Active, "{name}");
    }
    // Every account refuses: the client sees Anthropic's 429 and message, not a generic 503.
    for key in ["key-a", "key-b", "key-c"] {
        h.mock.script(key, [Reply::long_context_refused()]);
    }
    let response = h.message(true).await;
    assert_eq!(response.status, 429);
    assert_eq!(response.json()["error"]["message"], LONG_CONTEXT_MESSAGE);
    assert!(h.pool.get("c").unwrap().is_available(Utc::now()));
    let records = h.records(2).await;
    assert!(
        records[1]
            .error
            .as_deref()
            .unwrap()
            .starts_with("refused for this model")
    );
    // The next request goes to the session's account again at once.
    assert_eq!(h.message(false).await.status, 200);
}

#[tokio::test]
async fn a_429_without_reset_information_benches_for_the_default_cooldown() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script("key-a", [Reply::limited_without_reset()]);
    let before = Utc::now();
    let response = h.message(false).await;
    assert_eq!(response.header("x-claudeflare-account"), Some("b"));
    let until = h.pool.get("a").unwrap().limited_until(Utc::now()).unwrap();
    let cooldown = DEFAULT_COOLDOWN;
    assert!(
        until >= before + cooldown && until <= Utc::now() + cooldown,
        "{until}"
    );
}

#[tokio::test]
async fn a_400_about_extra_usage_is_delivered_recorded_and_benches_nothing() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script("key-a", [Reply::extra_usage_required()]);
    let response = h.message(false).await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"]["message"], EXTRA_USAGE_MESSAGE);
    assert_eq!(
        h.tried(),
        ["key-a"],
        "another account would be refused the same way"
    );
    assert!(h.pool.get("a").unwrap().is_available(Utc::now()));
    let records = h.records(1).await;
    let error = records[0].error.as_deref().unwrap();
    assert!(error.starts_with("extra usage required"), "{error}");
    assert!(!records[0].success);
}

#[tokio::test]
async fn utilization_headers_move_the_next_session_before_the_429() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock.script(
        "key-a",
        [
            Reply::allowed_warning(0.5, 0.2),
            Reply::allowed_warning(0.985, 0.3),
        ],
    );
    assert_eq!(
        h.message(false).await.header("x-claudeflare-account"),
        Some("a")
    );
    assert_eq!(
        h.message(false).await.header("x-claudeflare-account"),
        Some("a")
    );
    let a = h.pool.get("a").unwrap();
    assert_eq!(
        a.live().rate_limit_status.as_deref(),
        Some("allowed_warning")
    );
    assert_eq!(a.utilization(Utc::now()), Some(0.985));
    // Over 98%: the next request starts a session on b, before any 429.
    assert_eq!(
        h.message(true).await.header("x-claudeflare-account"),
        Some("b")
    );
    assert_eq!(h.tried(), ["key-a", "key-a", "key-b"]);
    assert!(a.is_available(Utc::now()), "a stays a failover candidate");
    h.mock.script("key-b", [Reply::rate_limited(60)]);
    assert_eq!(
        h.message(false).await.header("x-claudeflare-account"),
        Some("a")
    );
}

/// Read frames of a streamed body until `needle` has passed; returns what was read.
async fn read_past(body: &mut hyper::body::Incoming, needle: &str) -> String {
    let mut read = Vec::new();
    while !String::from_utf8_lossy(&read).contains(needle) {
        let frame = body.frame().await.unwrap().unwrap();
        read.extend_from_slice(&frame.into_data().unwrap());
    }
    String::from_utf8_lossy(&read).into_owned()
}

fn slow_stream() -> Reply {
    Reply::Stream {
        delay: Duration::from_millis(40),
        fail_after: None,
        chunk_size: Some(64),
    }
}

#[tokio::test]
async fn a_stream_the_client_cuts_keeps_the_tokens_seen_so_far() {
    let h = Harness::keys(&["a"]).await;
    h.mock.script("key-a", [slow_stream()]);
    let mut body = h.open_stream().await.into_body();
    read_past(&mut body, "content_block_start").await;
    drop(body);
    let record = &h.records(1).await[0];
    assert_eq!(
        record.error.as_deref(),
        Some("client disconnected before the response ended")
    );
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);
    assert_eq!(record.usage.cache_read_input_tokens, CACHE_READ_TOKENS);
    assert_eq!(
        record.usage.cache_creation_input_tokens,
        CACHE_CREATION_TOKENS
    );
    assert_eq!(
        record.usage.output_tokens, 1,
        "message_start's count, the last seen"
    );
    assert_eq!(record.model.as_deref(), Some(MODEL));
}

#[tokio::test]
async fn a_stream_cut_by_the_shutdown_ends_with_an_error_event_and_says_so() {
    let shutdown = claudeflare_tower::CancellationToken::new();
    let token = shutdown.clone();
    let h = Harness::start(vec![Account::api_key("a", "key-a")], move |b, _| {
        b.shutdown(token)
    })
    .await;
    h.mock.script("key-a", [slow_stream()]);
    let mut body = h.open_stream().await.into_body();
    let mut read = read_past(&mut body, "content_block_start").await;
    shutdown.cancel();
    while let Some(frame) = body.frame().await {
        read.push_str(&String::from_utf8_lossy(
            &frame.unwrap().into_data().unwrap(),
        ));
    }
    let tail = &read[read.rfind("event: ").unwrap()..];
    assert!(tail.starts_with("event: error\ndata: "), "{read}");
    assert!(tail.contains("shutting down"), "{tail}");
    assert!(!read.contains("message_stop"), "the stream was cut");
    let record = &h.records(1).await[0];
    assert_eq!(
        record.error.as_deref(),
        Some("cut by the server's shutdown")
    );
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);
    // A stream that ends on its own after the shutdown began is not cut.
    let h2 = Harness::keys(&["a"]).await;
    assert_eq!(h2.message(true).await.body, sse::message_stream(MODEL));
}

#[tokio::test]
async fn only_paths_under_v1_reach_the_upstream() {
    let h = Harness::keys(&["a"]).await;
    for path in [
        "/v1/../api/oauth/usage",
        "/v1/%2e%2e/api/oauth/usage",
        "/v1/%2E%2e/api/oauth/claude_cli/create_api_key",
        "/v1/messages/..%2f..%2fapi/oauth/usage",
        "/v1/./messages",
    ] {
        let response = h.client.get(path).await;
        assert_eq!(response.status, 400, "{path}");
        let json = response.json();
        assert_eq!(json["error"]["type"], "invalid_request_error", "{path}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("claudeflare: ")
        );
    }
    assert!(h.mock.requests().is_empty(), "{:?}", h.mock.requests());
    assert_eq!(h.client.get("/v1/models").await.status, 200);
    assert_eq!(h.mock.requests().len(), 1);
}

#[tokio::test]
async fn claudeflares_own_headers_from_the_client_do_not_reach_the_upstream() {
    let h = Harness::keys(&["a"]).await;
    let headers = [
        ("x-claudeflare-account", "b"),
        ("x-claudeflare-request-id", "forged"),
    ];
    let response = h
        .client
        .post_json("/v1/messages", &request_body(false), &headers)
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-claudeflare-account"), Some("a"));
    let received = &h.mock.requests()[0];
    assert!(
        received
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("x-claudeflare-")),
        "{:?}",
        received.headers
    );
}

#[tokio::test]
async fn a_501_or_505_is_not_retried() {
    let h = Harness::keys(&["a", "b"]).await;
    h.mock
        .script("key-a", [Reply::status(501), Reply::status(505)]);
    assert_eq!(h.message(false).await.status, 501);
    assert_eq!(h.message(false).await.status, 505);
    assert_eq!(h.tried(), ["key-a", "key-a"]);
}

/// What a [`StateStore`] heard: rate-limit marks and saved states, per account id.
#[derive(Default)]
struct Heard {
    rate_limits: Mutex<Vec<(String, chrono::DateTime<Utc>)>>,
    saved: Mutex<Vec<(String, LiveState)>>,
}

impl StateStore for Heard {
    fn save(&self, account_id: &str, state: &LiveState) {
        let saved = (account_id.to_owned(), state.clone());
        self.saved.lock().unwrap().push(saved);
    }

    fn rate_limited(&self, account: &AccountEntry, until: chrono::DateTime<Utc>) {
        let mark = (account.id().to_owned(), until);
        self.rate_limits.lock().unwrap().push(mark);
    }
}

#[tokio::test]
async fn a_rate_limit_inside_a_stream_benches_the_account_through_the_pool() {
    let mock = MockUpstream::start().await;
    let in_stream = Reply::StreamError {
        kind: "rate_limit_error".into(),
    };
    mock.script("key-a", [in_stream]);
    let heard = Arc::new(Heard::default());
    let accounts = vec![
        Account::api_key("a", "key-a"),
        Account::api_key("b", "key-b"),
    ];
    let pool = AccountPool::with_store(accounts, heard.clone());
    let h = Harness::with_pool(mock, pool, |b, _| b).await;
    let a = h.pool.get("a").unwrap();
    let before = Utc::now();

    let response = h.message(true).await;
    assert_eq!(
        response.status, 200,
        "the stream had started: it is the client's"
    );
    let body = response.text();
    assert!(
        body.contains("event: error") && body.contains("rate_limit_error"),
        "the client sees the upstream's own error event: {body}"
    );
    let record = &h.records(1).await[0];
    assert!(!record.success);
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("stream error: rate_limit_error")),
        "{record:?}"
    );
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);

    // Benched for the default cooldown, like a 429 without a reset…
    let until = a.limited_until(Utc::now()).expect("benched");
    assert!(until >= before + DEFAULT_COOLDOWN && until <= Utc::now() + DEFAULT_COOLDOWN);
    // …and the store heard it (persisted, counted in metrics), not just the entry in memory.
    let marks = heard.rate_limits.lock().unwrap().clone();
    assert_eq!(marks, [(a.id().to_owned(), until)]);
    let last_saved = heard
        .saved
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(id, _)| id == a.id())
        .map(|(_, live)| live.clone())
        .unwrap();
    assert_eq!(last_saved.rate_limited_until, Some(until));
    assert_eq!(last_saved.request_count, 1, "the request is counted once");

    let next = h.message(false).await;
    assert_eq!(next.header("x-claudeflare-account"), Some("b"));
}

#[tokio::test]
async fn an_overload_inside_a_stream_fails_the_request_only() {
    let h = Harness::keys(&["a"]).await;
    let in_stream = Reply::StreamError {
        kind: "overloaded_error".into(),
    };
    h.mock.script("key-a", [in_stream]);
    let response = h.message(true).await;
    assert!(response.text().contains("overloaded_error"));
    let record = &h.records(1).await[0];
    assert!(
        record
            .error
            .as_deref()
            .unwrap()
            .contains("overloaded_error")
    );
    assert!(h.pool.get("a").unwrap().is_available(Utc::now()));
}

/// A provider of our own: Anthropic's conventions, plus a header of the gateway in front of it,
/// and its own reading of a 503. No layer knows about it; it shares a pool with Anthropic's
/// accounts.
#[derive(Clone)]
struct Gateway {
    anthropic: Anthropic,
}

impl Provider for Gateway {
    type Tap = <Anthropic as Provider>::Tap;

    fn prepare(
        &self,
        account: &claudeflare_tower::AccountEntry,
        req: &mut http::Request<http_body_util::Full<Bytes>>,
    ) -> Result<(), claudeflare_tower::InvalidUpstream> {
        self.anthropic.prepare(account, req)?;
        req.headers_mut().insert(
            "x-gateway-tenant",
            http::HeaderValue::from_static("claudeflare"),
        );
        Ok(())
    }

    fn needs_body(
        &self,
        account: &claudeflare_tower::AccountEntry,
        status: http::StatusCode,
        headers: &http::HeaderMap,
    ) -> bool {
        self.anthropic.needs_body(account, status, headers)
    }

    fn classify(
        &self,
        account: &claudeflare_tower::AccountEntry,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: Option<&[u8]>,
        now: chrono::DateTime<Utc>,
    ) -> Classification {
        // The gateway answers 503 when its backend is rate-limited.
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            let until = now + TimeDelta::seconds(30);
            return Classification::new(Outcome::RateLimited { until });
        }
        self.anthropic.classify(account, status, headers, body, now)
    }

    fn classify_stream_error(
        &self,
        account: &claudeflare_tower::AccountEntry,
        error: &claudeflare_tower::StreamError,
        now: chrono::DateTime<Utc>,
    ) -> Classification {
        self.anthropic.classify_stream_error(account, error, now)
    }

    fn tap(
        &self,
        account: Option<&claudeflare_tower::AccountEntry>,
        headers: &http::HeaderMap,
    ) -> Self::Tap {
        self.anthropic.tap(account, headers)
    }

    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a secrecy::SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        self.anthropic.refresh(account, refresh_token)
    }
}

#[tokio::test]
async fn a_provider_of_ones_own_shares_a_pool_with_anthropic() {
    use claudeflare_tower::{Backend, Providers};
    let mock = MockUpstream::start().await;
    mock.script("key-a", [Reply::status(503)]);
    let base = mock.url().parse::<http::Uri>().unwrap();
    let providers = Providers::new().upstream_url(base.clone()).with(
        "gateway",
        Gateway {
            anthropic: Anthropic::new().base_url(base),
        },
    );
    let accounts = vec![
        Account::api_key("a", "key-a").with_backend(Backend::External("gateway".into())),
        Account::api_key("b", "key-b"),
    ];
    let pool = AccountPool::new(accounts);
    let recorder = Arc::new(MemoryRecorder::default());
    let service = Balancer::with_provider(providers, pool.clone())
        .recorder(recorder.clone())
        .build();
    let app = axum::Router::new().route_service("/v1/{*rest}", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TestClient::new(format!("http://{}", listener.local_addr().unwrap()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let response = client
        .post_json("/v1/messages", &request_body(true), &[])
        .await;
    server.abort();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("x-claudeflare-account"),
        Some("b"),
        "the provider's own reading of a 503 failed it over at once"
    );
    assert_eq!(response.header("x-claudeflare-provider"), Some("anthropic"));
    let seen = mock.requests();
    assert_eq!(
        seen.len(),
        2,
        "no retry on a: the provider called it a rate limit"
    );
    assert_eq!(seen[0].headers["x-gateway-tenant"], "claudeflare");
    assert!(
        !seen[1].headers.contains_key("x-gateway-tenant"),
        "Anthropic's account went out the Anthropic way"
    );
    assert!(!pool.get("a").unwrap().is_available(Utc::now()));
    let records = recorder.records();
    assert_eq!(records[0].usage.output_tokens, OUTPUT_TOKENS);
    assert_eq!(records[0].provider.as_deref(), Some("anthropic"));
}

#[tokio::test]
async fn layers_compose_by_hand_over_a_client_of_ones_own() {
    use claudeflare_tower::ClassifyLayer;
    use claudeflare_tower::RequestContext;
    use claudeflare_tower::Upstream;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{ServiceBuilder, ServiceExt};

    let mock = MockUpstream::start().await;
    mock.script("key-a", [Reply::rate_limited(120)]);
    let pool = AccountPool::new(vec![Account::api_key("a", "key-a")]);
    // Plain HTTP, no TLS stack: any hyper-util client will do.
    let client = Client::builder(TokioExecutor::new()).build_http();
    let service = ServiceBuilder::new()
        .layer(ClassifyLayer::new(pool.clone()))
        .service(Upstream::from_client(client));

    // Without `Auth`, nothing prepares the request: it carries its absolute URL and key.
    let mut request = http::Request::post(format!("{}/v1/messages", mock.url()))
        .header("x-api-key", "key-a")
        .body(http_body_util::Full::new(Bytes::from(
            request_body(false).to_string(),
        )))
        .unwrap();
    let context = RequestContext::get_or_insert(&mut request);
    context.set_account(pool.get("a").unwrap());
    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 429);
    assert!(matches!(
        context.outcome(),
        Some(Outcome::RateLimited { .. })
    ));
    let a = pool.get("a").unwrap();
    assert!(
        !a.is_available(Utc::now()),
        "Classify benched the context's account"
    );
    assert_eq!(a.live().request_count, 1);
    assert!(
        context.snapshot().upstream > Duration::ZERO,
        "Upstream timed the attempt"
    );
}

/// Intake, Select and Failover over a service of your own that answers in a body of your own
/// (here `Full<Bytes>`): its answers come through, and so do the layers' own.
#[tokio::test]
async fn the_layers_work_over_a_body_of_your_own() {
    use claudeflare_tower::{FailoverLayer, IntakeLayer, SelectLayer, Session};
    use http_body_util::Full;
    use tower::{ServiceBuilder, ServiceExt};

    let pool = AccountPool::new(vec![Account::api_key("work", "key-work")]);
    let strategy = StrategyHandle::new(Box::new(Session::default()));
    let own = tower::service_fn(|req: http::Request<Full<Bytes>>| async move {
        let account = claudeflare_tower::RequestContext::of(&req)
            .and_then(|context| context.account())
            .map(|account| account.name().to_owned())
            .unwrap_or_default();
        Ok::<_, claudeflare_tower::BoxError>(http::Response::new(Full::new(Bytes::from(account))))
    });
    let service = ServiceBuilder::new()
        .layer(IntakeLayer::new(1024))
        .layer(SelectLayer::new(pool.clone(), strategy))
        .layer(FailoverLayer::new(RetryConfig::default()))
        .service(own);
    let post = |body: &'static str| {
        http::Request::post("/v1/messages")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };

    let served: http::Response<Full<Bytes>> = service.clone().oneshot(post("{}")).await.unwrap();
    assert_eq!(served.status(), 200);
    let body = served.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "work", "the account Select chose reached the service");

    let too_large = service
        .clone()
        .oneshot(post(Box::leak("x".repeat(2048).into_boxed_str())))
        .await
        .unwrap();
    assert_eq!(
        too_large.status(),
        413,
        "Intake's own answer, in the service's body"
    );
    let body = too_large.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("request_too_large"));

    pool.get("work").unwrap().set_paused(true);
    let none = service.clone().oneshot(post("{}")).await.unwrap();
    assert_eq!(
        none.status(),
        503,
        "Select's own answer, in the service's body"
    );
    let body = none.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("no account is available"));
}

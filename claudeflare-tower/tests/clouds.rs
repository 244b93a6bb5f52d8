//! The balancer against the cloud mocks: Bedrock (SigV4 checked by the mock, or an API key) and
//! Vertex AI (its token from the mock's Google token endpoint).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use claudeflare_testkit::{
    CloudReply, INPUT_TOKENS, MockCloud, MockUpstream, OUTPUT_TOKENS, TestClient, TestResponse,
};
use claudeflare_tower::RetryConfig;
use claudeflare_tower::{
    Account, AccountPool, AccountStatus, AwsKeys, Backend, Balancer, Credentials, Mode,
};
use claudeflare_tower::{MemoryRecorder, RequestRecord};
use serde_json::{Value, json};

const MODEL: &str = "claude-opus-4-7";

struct Harness {
    _upstream: MockUpstream,
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
    async fn start(accounts: Vec<Account>) -> Self {
        let upstream = MockUpstream::start().await;
        let pool = AccountPool::new(accounts);
        let recorder = Arc::new(MemoryRecorder::default());
        let service = Balancer::new(pool.clone())
            .upstream_url(upstream.url().parse::<http::Uri>().unwrap())
            .recorder(recorder.clone())
            .retry(RetryConfig {
                attempts: 2,
                delay: Duration::from_millis(10),
                backoff: 2.0,
            })
            .build();
        let app = axum::Router::new().route_service("/v1/{*rest}", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TestClient::new(format!("http://{}", listener.local_addr().unwrap()));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            _upstream: upstream,
            pool,
            recorder,
            client,
            server,
        }
    }

    async fn message(&self, stream: bool) -> TestResponse {
        let body = json!({
            "model": MODEL, "max_tokens": 64, "stream": stream, "tags": ["team-a"],
            "messages": [{"role": "user", "content": "héllo 🌍"}],
        });
        let headers = [(
            "anthropic-beta",
            "interleaved-thinking-2025-05-14,request-tags-2026-08-21,oauth-2025-04-20",
        )];
        self.client
            .post_json("/v1/messages?beta=true", &body, &headers)
            .await
    }

    async fn records(&self, count: usize) -> Vec<RequestRecord> {
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

fn bedrock(name: &str, cloud: &MockCloud, credentials: Credentials) -> Account {
    Account::new(name, Mode::Console, credentials)
        .with_backend(Backend::bedrock("us-east-1", Some(cloud.url().parse().unwrap())).unwrap())
}

fn aws(cloud: &MockCloud, label: &str) -> Credentials {
    let id = format!("AKIA{}", label.to_uppercase());
    let secret = format!("secret-{label}");
    cloud.aws_keys(label, &id, &secret, Some("session-token"));
    Credentials::Aws(AwsKeys::new(id, secret, Some("session-token".into())))
}

fn vertex(name: &str, cloud: &MockCloud, region: &str) -> Account {
    let key = cloud.service_account(name, "my-project");
    Account::new(name, Mode::Console, Credentials::service_account(key)).with_backend(
        Backend::vertex("my-project", region, Some(cloud.url().parse().unwrap())).unwrap(),
    )
}

fn sent(cloud: &MockCloud) -> Value {
    serde_json::from_slice(&cloud.requests().last().unwrap().body).unwrap()
}

fn usage_is_the_mocks(record: &RequestRecord) {
    assert_eq!(record.usage.input_tokens, INPUT_TOKENS);
    assert_eq!(record.usage.output_tokens, OUTPUT_TOKENS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_signs_each_request_and_answers_json_and_sse() {
    let cloud = MockCloud::bedrock("us-east-1").await;
    let keys = aws(&cloud, "signer");
    let h = Harness::start(vec![bedrock("aws", &cloud, keys)]).await;

    let json = h.message(false).await;
    assert_eq!(json.status, 200, "{}", json.text());
    assert_eq!(json.header("x-claudeflare-provider"), Some("bedrock"));
    assert_eq!(json.json()["content"][0]["type"], "text");
    let stream = h.message(true).await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert!(stream.text().contains("event: message_stop"));

    let received = cloud.requests();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.account.as_deref() == Some("signer"))
    );
    assert_eq!(received[0].path, "/anthropic/v1/messages");
    let body = sent(&cloud);
    assert_eq!(body["model"], "anthropic.claude-opus-4-7");
    assert_eq!(
        body["anthropic_beta"],
        json!(["interleaved-thinking-2025-05-14"])
    );
    assert!(body.get("tags").is_none());
    assert!(received[0].headers.get("x-amz-security-token").is_some());

    let records = h.records(2).await;
    for record in &records {
        usage_is_the_mocks(record);
        assert_eq!(record.provider.as_deref(), Some("bedrock"));
        assert_eq!(record.billing.inference_geo.as_deref(), Some("us-east-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_the_mocks_signature_check_and_the_account_needs_reauth() {
    let cloud = MockCloud::bedrock("us-east-1").await;
    cloud.aws_keys("signer", "AKIAWRONG", "the-real-secret", None);
    let wrong = Credentials::Aws(AwsKeys::new("AKIAWRONG", "a-wrong-secret", None));
    let h = Harness::start(vec![bedrock("aws", &cloud, wrong)]).await;
    let answer = h.message(false).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.text().contains("needs re-authentication"));
    let received = cloud.requests();
    assert_eq!(received.len(), 1, "a refused key is not tried again");
    assert_eq!(received[0].account, None, "the mock refused the signature");
    let account = h.pool.get("aws").unwrap();
    assert_eq!(
        account.status(chrono::Utc::now()),
        AccountStatus::NeedsReauth
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_api_key_goes_as_a_bearer() {
    let cloud = MockCloud::bedrock("us-east-1").await;
    cloud.api_key("keyed", "ABSKbedrock-api-key");
    let key = Credentials::ApiKey("ABSKbedrock-api-key".to_owned().into());
    let h = Harness::start(vec![bedrock("aws", &cloud, key)]).await;
    let answer = h.message(false).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(cloud.requests()[0].account.as_deref(), Some("keyed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_throttling_benches_and_access_denied_takes_out_with_the_reason() {
    let cloud = MockCloud::bedrock("us-east-1").await;
    let (one, two) = (aws(&cloud, "one"), aws(&cloud, "two"));
    let h = Harness::start(vec![
        bedrock("one", &cloud, one),
        bedrock("two", &cloud, two),
    ])
    .await;
    cloud.script(
        "one",
        [CloudReply::error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        )],
    );
    cloud.script(
        "two",
        [CloudReply::error(
            403,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: bedrock:InvokeModel",
        )],
    );
    let answer = h.message(false).await;
    // Both refused: the client gets the last refusal, in Anthropic's envelope, without the ARN.
    assert_eq!(answer.status, 403, "{}", answer.text());
    let text = answer.text();
    assert!(
        text.contains("AccessDeniedException") && !text.contains("123456789012"),
        "{text}"
    );
    let now = chrono::Utc::now();
    let one = h.pool.get("one").unwrap();
    assert_eq!(one.status(now), AccountStatus::RateLimited);
    let until = one.limited_until(now).unwrap();
    assert!(until > now + chrono::TimeDelta::seconds(50), "{until}");
    let two = h.pool.get("two").unwrap();
    assert_eq!(two.status(now), AccountStatus::Forbidden);
    let reason = two.live().status_reason.unwrap();
    assert!(
        reason.contains("AccessDeniedException") && reason.contains("not authorized"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrocks_too_long_is_sent_as_the_sentence_claude_code_recovers_from() {
    let cloud = MockCloud::bedrock("us-east-1").await;
    let keys = aws(&cloud, "a");
    let h = Harness::start(vec![bedrock("a", &cloud, keys)]).await;
    cloud.script(
        "a",
        [CloudReply::error(
            400,
            "ValidationException",
            "Input is too long.",
        )],
    );
    let answer = h.message(false).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["message"], "Input is too long.");
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_gets_its_token_once_for_concurrent_requests_and_answers_json_and_sse() {
    let cloud = MockCloud::vertex().await;
    cloud.set_token_delay(Duration::from_millis(200));
    let h = Arc::new(Harness::start(vec![vertex("gcp", &cloud, "us-east5")]).await);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move { h.message(i % 2 == 0).await }));
    }
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-claudeflare-provider"), Some("vertex"));
    }
    assert_eq!(
        cloud.grants().len(),
        1,
        "single flight: {:?}",
        cloud.grants()
    );
    assert!(cloud.grants()[0].accepted);
    let requests = cloud.requests();
    let streamed = requests
        .iter()
        .filter(|r| r.path.ends_with("/models/claude-opus-4-7:streamRawPredict"))
        .count();
    assert_eq!(streamed, 5);
    assert!(requests.iter().all(|r| r.path.starts_with(
        "/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-opus-4-7:"
    )));
    let body = sent(&cloud);
    assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
    assert!(body.get("model").is_none() && body.get("tags").is_none());
    let beta = requests[0].headers["anthropic-beta"].to_str().unwrap();
    assert_eq!(beta, "interleaved-thinking-2025-05-14");
    for record in h.records(10).await {
        usage_is_the_mocks(&record);
        assert_eq!(record.billing.inference_geo.as_deref(), Some("us-east5"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_tokens_are_refreshed_ahead_of_their_expiry() {
    let cloud = MockCloud::vertex().await;
    // Five minutes and two seconds: inside the refresh margin two seconds after it is issued,
    // while the mock still takes it.
    cloud.set_token_lifetime(Duration::from_secs(302));
    let h = Harness::start(vec![vertex("gcp", &cloud, "global")]).await;
    assert_eq!(h.message(false).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.message(false).await.status, 200);
    let grants = cloud.grants();
    assert_eq!(grants.len(), 2, "{grants:?}");
    let requests = cloud.requests();
    let token = |i: usize| {
        requests[i].headers["authorization"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(token(0), token(1));
    assert!(
        requests
            .iter()
            .all(|r| r.path.contains("/locations/global/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_errors_are_read_by_vertex() {
    let cloud = MockCloud::vertex().await;
    let h = Harness::start(vec![
        vertex("a", &cloud, "us-east5"),
        vertex("b", &cloud, "us-east5"),
    ])
    .await;
    cloud.script(
        "a",
        [CloudReply::error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: anthropic-claude-opus.")],
    );
    cloud.script(
        "b",
        [CloudReply::error(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource '//aiplatform.googleapis.com/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-opus-4-7'.")],
    );
    let answer = h.message(false).await;
    assert_eq!(answer.status, 403);
    assert!(!answer.text().contains("my-project"), "{}", answer.text());
    let now = chrono::Utc::now();
    assert_eq!(
        h.pool.get("a").unwrap().status(now),
        AccountStatus::RateLimited
    );
    let b = h.pool.get("b").unwrap();
    assert_eq!(b.status(now), AccountStatus::Forbidden);
    assert!(
        b.live()
            .status_reason
            .unwrap()
            .contains("aiplatform.endpoints.predict")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_size_refusals_and_claudes_own_errors() {
    let cloud = MockCloud::vertex().await;
    let h = Harness::start(vec![vertex("a", &cloud, "us-east5")]).await;
    cloud.script(
        "a",
        [
            CloudReply::error(
                400,
                "INVALID_ARGUMENT",
                "The request size (30037042 bytes) exceeds 30.000MB limit.",
            ),
            CloudReply::claude(
                400,
                "invalid_request_error",
                "prompt is too long: 250000 tokens > 200000 maximum",
            ),
        ],
    );
    let size = h.message(false).await;
    assert_eq!(size.status, 400);
    assert_eq!(size.json()["error"]["message"], "Input is too long.");
    let prompt = h.message(false).await;
    assert_eq!(prompt.status, 400);
    assert_eq!(
        prompt.json()["error"]["message"],
        "prompt is too long: 250000 tokens > 200000 maximum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_account_needs_reauth() {
    let cloud = MockCloud::vertex().await;
    let h = Harness::start(vec![vertex("gone", &cloud, "us-east5")]).await;
    cloud.disable("gone");
    let answer = h.message(false).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let account = h.pool.get("gone").unwrap();
    assert_eq!(
        account.status(chrono::Utc::now()),
        AccountStatus::NeedsReauth
    );
    assert!(
        account
            .live()
            .status_reason
            .unwrap()
            .contains("invalid_grant")
    );
}

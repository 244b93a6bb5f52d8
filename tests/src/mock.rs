//! The mock Anthropic upstream.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

use crate::served::Served;
use crate::sse;

/// Usage every mock message reports (non-streaming and streaming alike).
pub const INPUT_TOKENS: u64 = 25;
/// Output tokens of every mock message.
pub const OUTPUT_TOKENS: u64 = 42;
/// Cache reads of every mock message.
pub const CACHE_READ_TOKENS: u64 = 1000;
/// Cache writes of every mock message (5-minute and 1-hour together).
pub const CACHE_CREATION_TOKENS: u64 = CACHE_CREATION_5M_TOKENS + CACHE_CREATION_1H_TOKENS;
/// Of the cache writes, those to the 5-minute cache (`usage.cache_creation`).
pub const CACHE_CREATION_5M_TOKENS: u64 = 3;
/// Of the cache writes, those to the 1-hour cache (Claude Code on a subscription asks for it).
pub const CACHE_CREATION_1H_TOKENS: u64 = 4;

/// The 403 Anthropic answers for a disabled or banned subscription.
pub const BANNED_MESSAGE: &str =
    "OAuth authentication is currently not allowed for this organization.";
/// The 429 for a long-context request on an account without extra usage: scoped to the request.
pub const LONG_CONTEXT_MESSAGE: &str = "Extra usage is required for long context requests.";
/// A 400 billing-policy refusal (third-party traffic on a subscription billed to extra usage).
pub const EXTRA_USAGE_MESSAGE: &str = "Third-party apps now draw from your extra usage, not your plan limits. Turn on extra usage to continue.";

/// How the mock answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal message: JSON, or SSE in odd-sized chunks when the request asked to stream.
    Message,
    /// SSE with `delay` between chunks; with `fail_after`, the connection breaks after that many
    /// chunks.
    Stream {
        /// Pause between chunks.
        delay: Duration,
        /// Break the connection after this many chunks.
        fail_after: Option<usize>,
        /// Chunk size in bytes (`None`: the odd-sized pattern).
        chunk_size: Option<usize>,
    },
    /// An error envelope with this status, message and extra headers.
    Error {
        /// HTTP status.
        status: u16,
        /// `error.message` of the envelope.
        message: String,
        /// Extra headers (rate-limit headers and the like).
        headers: Vec<(String, String)>,
    },
    /// A normal message with extra headers (unified rate-limit headers, say).
    MessageWith {
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Never answer (until the client gives up).
    Stall,
    /// A 200 stream that starts a message, then announces an error of this `error.type`
    /// (`rate_limit_error`, `overloaded_error`) as `event: error` and ends: a limit can also
    /// arrive inside a 200 stream.
    StreamError {
        /// `error.type` of the event.
        kind: String,
    },
    /// A message served as [`Served`] says: by another model, after a fallback, fast, in a
    /// region.
    Served(Served),
}

impl Reply {
    /// A 429 whose unified headers say the account resets in `seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + seconds;
        Reply::Error {
            status: 429,
            message: "Number of request tokens has exceeded your rate limit.".into(),
            headers: vec![
                (
                    "anthropic-ratelimit-unified-status".into(),
                    "rejected".into(),
                ),
                (
                    "anthropic-ratelimit-unified-reset".into(),
                    reset.to_string(),
                ),
                ("retry-after".into(), seconds.to_string()),
            ],
        }
    }

    /// An error with this status and no extra headers.
    pub fn status(status: u16) -> Self {
        Reply::Error {
            status,
            message: "scripted error".into(),
            headers: Vec::new(),
        }
    }

    /// The 403 `permission_error` of a disabled or banned subscription.
    pub fn banned() -> Self {
        Reply::Error {
            status: 403,
            message: BANNED_MESSAGE.into(),
            headers: Vec::new(),
        }
    }

    /// The 429 for a long-context request (`context-1m` beta or a `[1m]` model) on an account
    /// without extra usage: refused for this request, not the account.
    pub fn long_context_refused() -> Self {
        Reply::Error {
            status: 429,
            message: LONG_CONTEXT_MESSAGE.into(),
            headers: Vec::new(),
        }
    }

    /// A 429 carrying `overage-disabled-reason: out_of_credits` (a model-scoped credit problem).
    pub fn out_of_credits() -> Self {
        Reply::Error {
            status: 429,
            message: "Out of credits for this model.".into(),
            headers: vec![
                (
                    "anthropic-ratelimit-unified-status".into(),
                    "rejected".into(),
                ),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason".into(),
                    "out_of_credits".into(),
                ),
            ],
        }
    }

    /// A 429 with no reset information at all: only `x-should-retry: true`.
    pub fn limited_without_reset() -> Self {
        Reply::Error {
            status: 429,
            message: "Rate limited. Please try again later.".into(),
            headers: vec![("x-should-retry".into(), "true".into())],
        }
    }

    /// The 400 billing-policy refusal about extra usage.
    pub fn extra_usage_required() -> Self {
        Reply::Error {
            status: 400,
            message: EXTRA_USAGE_MESSAGE.into(),
            headers: Vec::new(),
        }
    }

    /// A normal message whose unified headers say `allowed_warning` at these utilizations of the
    /// 5-hour and 7-day windows (fractions, 0–1).
    pub fn allowed_warning(five_hour: f64, seven_day: f64) -> Self {
        Reply::MessageWith {
            headers: unified_headers(five_hour, seven_day),
        }
    }
}

fn epoch_in(seconds: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + seconds
}

/// The unified rate-limit headers of a subscription at these utilizations (fractions): status
/// `allowed`, or `allowed_warning` from 80% on; the 5-hour window resets in an hour, the 7-day
/// one in three days.
pub fn unified_headers(five_hour: f64, seven_day: f64) -> Vec<(String, String)> {
    let status = if five_hour.max(seven_day) >= 0.8 {
        "allowed_warning"
    } else {
        "allowed"
    };
    let binding = if five_hour >= seven_day {
        "five_hour"
    } else {
        "seven_day"
    };
    let (reset_5h, reset_7d) = (epoch_in(3600), epoch_in(3 * 86_400));
    [
        ("status", status.to_owned()),
        ("5h-status", status.to_owned()),
        ("5h-utilization", five_hour.to_string()),
        ("5h-reset", reset_5h.to_string()),
        ("7d-status", "allowed".to_owned()),
        ("7d-utilization", seven_day.to_string()),
        ("7d-reset", reset_7d.to_string()),
        ("representative-claim", binding.to_owned()),
        (
            "reset",
            if binding == "five_hour" {
                reset_5h
            } else {
                reset_7d
            }
            .to_string(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (format!("anthropic-ratelimit-unified-{name}"), value))
    .collect()
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// The account label the credential resolved to, if any.
    pub account: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// One call of the token endpoint.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `grant_type`.
    pub grant_type: String,
    /// The body as received.
    pub body: Value,
    /// Whether the mock accepted it.
    pub accepted: bool,
}

#[derive(Default)]
struct OAuthAccount {
    generation: u32,
    access_token: String,
    refresh_token: String,
    /// The access token is refused (as if expired) until the next refresh.
    access_expired: bool,
    revoked: bool,
}

/// An authorization the mock's "user" granted: the code, for the PKCE challenge it was asked with.
struct PendingCode {
    challenge: String,
    label: String,
}

#[derive(Default)]
struct Inner {
    pending_codes: HashMap<String, PendingCode>,
    created_keys: Vec<String>,
    usage: HashMap<String, Value>,
    usage_calls: HashMap<String, Vec<Instant>>,
    usage_throttled: HashMap<String, (usize, Option<u64>)>,
    scripts: HashMap<String, VecDeque<Reply>>,
    received: Vec<Received>,
    grants: Vec<Grant>,
    oauth: HashMap<String, OAuthAccount>,
    token_delay: Duration,
    token_expires_in: u64,
    token_failures: usize,
    /// Documents served at their paths (a price catalogue, say), with a status.
    documents: HashMap<String, (u16, String)>,
    document_fetches: HashMap<String, usize>,
    /// A backend other than Anthropic that speaks its Messages API (z.ai, Moonshot, …): a
    /// bearer is an API key like `x-api-key`, and no OAuth is involved.
    compatible: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    request_ids: AtomicUsize,
    cancelled_streams: AtomicUsize,
    completed_streams: AtomicUsize,
    /// Told whenever a stream ends, either way.
    stream_ended: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A mock of Anthropic's API and OAuth token endpoint on 127.0.0.1 with an ephemeral port.
/// The server stops when this is dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Start the mock.
    pub async fn start() -> Self {
        Self::start_as(false).await
    }

    /// Start a mock of an Anthropic-compatible backend (z.ai, Moonshot, DeepSeek, …): the
    /// Messages API, its SSE and errors, and a key taken as `x-api-key` or as
    /// `authorization: Bearer` alike (no OAuth, no beta flag needed).
    pub async fn start_compatible() -> Self {
        Self::start_as(true).await
    }

    async fn start_as(compatible: bool) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                token_expires_in: 8 * 3600,
                compatible,
                ..Inner::default()
            }),
            request_ids: AtomicUsize::new(0),
            cancelled_streams: AtomicUsize::new(0),
            completed_streams: AtomicUsize::new(0),
            stream_ended: tokio::sync::Notify::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (addr, task) = serve(app).await;
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.url())
    }

    /// Queue replies for the account `label` (an API key, or an OAuth account's label); once
    /// they are used up it gets [`Reply::Message`].
    pub fn script(&self, label: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared
            .lock()
            .scripts
            .entry(label.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Serve `body` with `status` at `path` (e.g. `/prices.json`), to anyone: a file on a web
    /// server, not part of Anthropic's API.
    pub fn serve_document(&self, path: &str, status: u16, body: impl Into<String>) {
        self.shared
            .lock()
            .documents
            .insert(path.to_owned(), (status, body.into()));
    }

    /// How many times the document at `path` was fetched.
    pub fn document_fetches(&self, path: &str) -> usize {
        self.shared
            .lock()
            .document_fetches
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    /// Register a subscription account; returns its (access token, refresh token).
    pub fn oauth_account(&self, label: &str) -> (String, String) {
        let mut inner = self.shared.lock();
        let account = inner.oauth.entry(label.to_owned()).or_default();
        account.access_token = format!("sk-ant-oat01-{label}-0");
        account.refresh_token = format!("sk-ant-ort01-{label}-0");
        (account.access_token.clone(), account.refresh_token.clone())
    }

    /// Play the user who signs in at the authorize URL as account `label`: returns the code the
    /// callback page would show for the `code_challenge` of that URL. The token exchange checks
    /// the PKCE verifier against it.
    pub fn authorize(&self, label: &str, code_challenge: &str) -> String {
        let mut inner = self.shared.lock();
        let code = format!("code-{label}-{}", inner.pending_codes.len());
        inner.oauth.entry(label.to_owned()).or_default();
        inner.pending_codes.insert(
            code.clone(),
            PendingCode {
                challenge: code_challenge.to_owned(),
                label: label.to_owned(),
            },
        );
        code
    }

    /// API keys created through `create_api_key`, oldest first.
    pub fn created_keys(&self) -> Vec<String> {
        self.shared.lock().created_keys.clone()
    }

    /// What the usage endpoint answers for the account `label`.
    pub fn set_usage(&self, label: &str, usage: Value) {
        self.shared.lock().usage.insert(label.to_owned(), usage);
    }

    /// Answer the next `count` usage calls of `label` with 429 (the endpoint rate-limits
    /// pollers that hammer it), with `retry-after` when given.
    pub fn throttle_usage(&self, label: &str, count: usize, retry_after: Option<u64>) {
        self.shared
            .lock()
            .usage_throttled
            .insert(label.to_owned(), (count, retry_after));
    }

    /// How many times the usage endpoint was called for `label`, throttled calls included.
    pub fn usage_calls(&self, label: &str) -> usize {
        self.usage_call_times(label).len()
    }

    /// When the usage endpoint was called for `label`, throttled calls included, oldest first.
    pub fn usage_call_times(&self, label: &str) -> Vec<Instant> {
        self.shared
            .lock()
            .usage_calls
            .get(label)
            .cloned()
            .unwrap_or_default()
    }

    /// Make the account's current access token fail with 401 until it is refreshed.
    pub fn expire_access_token(&self, label: &str) {
        if let Some(account) = self.shared.lock().oauth.get_mut(label) {
            account.access_expired = true;
        }
    }

    /// Make every refresh of the account fail with `invalid_grant`.
    pub fn revoke(&self, label: &str) {
        if let Some(account) = self.shared.lock().oauth.get_mut(label) {
            account.revoked = true;
        }
    }

    /// The account's current tokens (after rotations).
    pub fn tokens(&self, label: &str) -> Option<(String, String)> {
        let inner = self.shared.lock();
        let account = inner.oauth.get(label)?;
        Some((account.access_token.clone(), account.refresh_token.clone()))
    }

    /// Delay answers of the token endpoint (to let concurrent requests pile up).
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.lock().token_delay = delay;
    }

    /// Answer the next `count` token requests with 503 (a temporary outage).
    pub fn fail_token_endpoint(&self, count: usize) {
        self.shared.lock().token_failures = count;
    }

    /// `expires_in` of issued tokens.
    pub fn set_token_expires_in(&self, seconds: u64) {
        self.shared.lock().token_expires_in = seconds;
    }

    /// Every API request received, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Every call of the token endpoint, oldest first.
    pub fn grants(&self) -> Vec<Grant> {
        self.shared.lock().grants.clone()
    }

    /// The calls of the token endpoint that refreshed (or tried to refresh) a token.
    pub fn refreshes(&self) -> Vec<Grant> {
        let mut grants = self.grants();
        grants.retain(|g| g.grant_type == "refresh_token");
        grants
    }

    /// Streams whose client went away before the end.
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled_streams.load(Ordering::SeqCst)
    }

    /// Streams sent to the end.
    pub fn completed_streams(&self) -> usize {
        self.shared.completed_streams.load(Ordering::SeqCst)
    }

    /// Wait until `count` streams were cut by their client (at most `timeout`); returns how
    /// many were. Woken by each stream's end, not by polling.
    pub async fn until_cancelled(&self, count: usize, timeout: Duration) -> usize {
        let wait = async {
            loop {
                let ended = self.shared.stream_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.cancelled_streams() >= count {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.cancelled_streams()
    }
}

/// Serve `app` on 127.0.0.1 with an ephemeral port, until the task is aborted.
pub(crate) async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a mock to an ephemeral port");
    let addr = listener.local_addr().expect("the mock's address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

fn envelope(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn json_response(status: u16, body: &Value, request_id: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", id);
    }
    response
}

/// The canonical JSON body of a message from `model`.
pub fn message_json(model: &str) -> Value {
    json!({
        "id": "msg_mock",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the mock, Grüße 🌍"}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": INPUT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "cache_read_input_tokens": CACHE_READ_TOKENS,
            "cache_creation_input_tokens": CACHE_CREATION_TOKENS,
            "cache_creation": {
                "ephemeral_5m_input_tokens": CACHE_CREATION_5M_TOKENS,
                "ephemeral_1h_input_tokens": CACHE_CREATION_1H_TOKENS,
            },
        }
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = format!(
        "req_mock_{}",
        shared.request_ids.fetch_add(1, Ordering::SeqCst)
    );
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    if uri.path() == "/v1/oauth/token" {
        return token_endpoint(&shared, &body, &request_id).await;
    }
    let document = {
        let mut inner = shared.lock();
        let document = inner.documents.get(uri.path()).cloned();
        if document.is_some() {
            *inner
                .document_fetches
                .entry(uri.path().to_owned())
                .or_default() += 1;
        }
        document
    };
    if let Some((status, body)) = document {
        return Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap_or_default();
    }
    if uri.path() == "/oauth/authorize" {
        return authorize_page(&shared, &uri);
    }
    if uri.path() == "/api/oauth/claude_cli/create_api_key" || uri.path() == "/api/oauth/usage" {
        return oauth_api(&shared, uri.path(), &headers, &request_id);
    }
    let credential = resolve_credential(&shared, &headers);
    shared.lock().received.push(Received {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        account: credential.as_ref().ok().cloned(),
        at: Instant::now(),
    });
    let label = match credential {
        Ok(label) => label,
        Err(message) => return json_response(401, &envelope(401, message), &request_id),
    };
    let reply = shared
        .lock()
        .scripts
        .get_mut(&label)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Reply::Message);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-sonnet-4-20250514")
        .to_owned();
    let wants_stream = request["stream"].as_bool().unwrap_or(false);
    match reply {
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            json_response(500, &envelope(500, "stalled"), &request_id)
        }
        Reply::Error {
            status,
            message,
            headers,
        } => {
            let mut response = json_response(status, &envelope(status, &message), &request_id);
            add_headers(&mut response, headers);
            response
        }
        Reply::MessageWith { headers } => {
            let mut response = if wants_stream {
                sse_response(&shared, &model, &request_id, Duration::ZERO, None, None)
            } else {
                json_response(200, &message_json(&model), &request_id)
            };
            add_headers(&mut response, headers);
            response
        }
        Reply::Message if !wants_stream => {
            if !uri.path().starts_with("/v1/messages") {
                return json_response(200, &json!({"data": [], "path": path}), &request_id);
            }
            json_response(200, &message_json(&model), &request_id)
        }
        Reply::Message => sse_response(&shared, &model, &request_id, Duration::ZERO, None, None),
        Reply::StreamError { kind } => {
            let mut bytes = sse::message_stream(&model);
            // Cut after `message_start` and its first content event, as a limit hit mid-answer.
            let cut = bytes
                .windows(b"event: ping".len())
                .position(|w| w == b"event: ping")
                .unwrap_or(bytes.len());
            bytes.truncate(cut);
            let error = json!({"type": "error", "error": {"type": kind, "message": format!("mock: {kind} in the stream")}});
            bytes.extend_from_slice(format!("event: error\ndata: {error}\n\n").as_bytes());
            sse_body_response(&shared, bytes, &request_id, Duration::ZERO, None, None)
        }
        Reply::Stream {
            delay,
            fail_after,
            chunk_size,
        } => sse_response(&shared, &model, &request_id, delay, fail_after, chunk_size),
        Reply::Served(served) if wants_stream => sse_body_response(
            &shared,
            served.stream(&model),
            &request_id,
            Duration::ZERO,
            None,
            None,
        ),
        Reply::Served(served) => json_response(200, &served.json(&model), &request_id),
    }
}

fn add_headers(response: &mut Response, headers: Vec<(String, String)>) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// The account label of the request's credential, or why it is refused.
fn resolve_credential(shared: &Shared, headers: &HeaderMap) -> Result<String, &'static str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Ok(key.to_owned());
    }
    let Some(bearer) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err("x-api-key header is required");
    };
    if shared.lock().compatible {
        return Ok(bearer.to_owned());
    }
    let beta_ok = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "oauth-2025-04-20");
    if !beta_ok {
        return Err("OAuth authentication is currently not supported.");
    }
    let inner = shared.lock();
    let found = inner
        .oauth
        .iter()
        .find(|(_, account)| account.access_token == bearer);
    match found {
        Some((_, account)) if account.access_expired => Err("OAuth token has expired."),
        Some((label, _)) => Ok(label.clone()),
        None => Err("Invalid bearer token"),
    }
}

async fn token_endpoint(shared: &Shared, body: &Bytes, request_id: &str) -> Response {
    let delay = shared.lock().token_delay;
    tokio::time::sleep(delay).await;
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let grant_type = request["grant_type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut inner = shared.lock();
    if inner.token_failures > 0 {
        inner.token_failures -= 1;
        inner.grants.push(Grant {
            grant_type: grant_type.clone(),
            body: request,
            accepted: false,
        });
        return json_response(
            503,
            &json!({"error": "temporarily_unavailable"}),
            request_id,
        );
    }
    let expires_in = inner.token_expires_in;
    let answer = match grant_type.as_str() {
        "refresh_token" => {
            let presented = request["refresh_token"].as_str().unwrap_or_default();
            let found = inner
                .oauth
                .iter_mut()
                .find(|(_, account)| account.refresh_token == presented && !account.revoked);
            match found {
                Some((label, account)) => {
                    account.generation += 1;
                    account.access_token = format!("sk-ant-oat01-{label}-{}", account.generation);
                    account.refresh_token = format!("sk-ant-ort01-{label}-{}", account.generation);
                    account.access_expired = false;
                    Ok(json!({
                        "token_type": "Bearer",
                        "access_token": account.access_token,
                        "refresh_token": account.refresh_token,
                        "expires_in": expires_in,
                        "scope": "user:inference user:profile",
                    }))
                }
                None => Err(
                    json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}),
                ),
            }
        }
        "authorization_code" => authorization_code(&mut inner, &request, expires_in),
        _ => Err(json!({"error": "unsupported_grant_type"})),
    };
    let accepted = answer.is_ok();
    inner.grants.push(Grant {
        grant_type,
        body: request,
        accepted,
    });
    match answer {
        Ok(body) => json_response(200, &body, request_id),
        Err(body) => json_response(400, &body, request_id),
    }
}

/// The code grant: the code must be one `authorize` issued, and SHA-256 of the verifier must be
/// its challenge (PKCE S256).
fn authorization_code(inner: &mut Inner, request: &Value, expires_in: u64) -> Result<Value, Value> {
    use base64::Engine;
    use sha2::Digest;
    let code = request["code"].as_str().unwrap_or_default();
    let Some(pending) = inner.pending_codes.remove(code) else {
        return Err(json!({"error": "invalid_grant", "error_description": "unknown or used code"}));
    };
    let verifier = request["code_verifier"].as_str().unwrap_or_default();
    let digest = sha2::Sha256::digest(verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    if computed != pending.challenge {
        return Err(
            json!({"error": "invalid_grant", "error_description": "PKCE verification failed"}),
        );
    }
    for field in ["state", "client_id", "redirect_uri"] {
        if request[field].as_str().is_none_or(str::is_empty) {
            return Err(
                json!({"error": "invalid_request", "error_description": format!("{field} is missing")}),
            );
        }
    }
    let account = inner.oauth.entry(pending.label.clone()).or_default();
    account.generation += 1;
    account.access_token = format!("sk-ant-oat01-{}-{}", pending.label, account.generation);
    account.refresh_token = format!("sk-ant-ort01-{}-{}", pending.label, account.generation);
    account.access_expired = false;
    account.revoked = false;
    Ok(json!({
        "token_type": "Bearer",
        "access_token": account.access_token,
        "refresh_token": account.refresh_token,
        "expires_in": expires_in,
    }))
}

/// The page a browser reaches at the authorize URL: it signs in as `mock-user` at once and shows
/// the `CODE#STATE` to paste, as Anthropic's callback page does. For trying the flow by hand.
fn authorize_page(shared: &Shared, uri: &Uri) -> Response {
    let query = uri.query().unwrap_or_default();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let (challenge, state) = (param("code_challenge"), param("state"));
    if challenge.is_empty() || state.is_empty() || param("code_challenge_method") != "S256" {
        return json_response(
            400,
            &json!({"error": "invalid_request", "error_description": "PKCE S256 and state are required"}),
            "req_mock_authorize",
        );
    }
    let mut inner = shared.lock();
    let code = format!("code-mock-user-{}", inner.pending_codes.len());
    inner.oauth.entry("mock-user".to_owned()).or_default();
    inner.pending_codes.insert(
        code.clone(),
        PendingCode {
            challenge,
            label: "mock-user".to_owned(),
        },
    );
    let mut response = Response::new(Body::from(format!(
        "Authentication code (paste it into claudeflare):\n{code}#{state}\n"
    )));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `create_api_key` and `usage`, both with the account's bearer token.
fn oauth_api(shared: &Shared, path: &str, headers: &HeaderMap, request_id: &str) -> Response {
    let label = match resolve_credential(shared, headers) {
        Ok(label) => label,
        Err(message) => return json_response(401, &envelope(401, message), request_id),
    };
    let mut inner = shared.lock();
    if path.ends_with("create_api_key") {
        let key = format!("sk-ant-api03-created-{label}-{}", inner.created_keys.len());
        inner.created_keys.push(key.clone());
        return json_response(
            200,
            &json!({"raw_key": key, "name": "claudeflare"}),
            request_id,
        );
    }
    inner
        .usage_calls
        .entry(label.clone())
        .or_default()
        .push(Instant::now());
    if let Some((left, retry_after)) = inner
        .usage_throttled
        .get_mut(&label)
        .filter(|(left, _)| *left > 0)
    {
        *left -= 1;
        let mut response = json_response(
            429,
            &envelope(429, "Rate limited. Please slow down."),
            request_id,
        );
        if let Some(seconds) = retry_after {
            add_headers(
                &mut response,
                vec![("retry-after".into(), seconds.to_string())],
            );
        }
        return response;
    }
    let usage = inner
        .usage
        .get(&label)
        .cloned()
        .unwrap_or_else(|| json!({"five_hour": null, "seven_day": null}));
    json_response(200, &usage, request_id)
}

fn sse_response(
    shared: &Arc<Shared>,
    model: &str,
    request_id: &str,
    delay: Duration,
    fail_after: Option<usize>,
    chunk_size: Option<usize>,
) -> Response {
    let bytes = sse::message_stream(model);
    sse_body_response(shared, bytes, request_id, delay, fail_after, chunk_size)
}

/// An SSE response sending `bytes`.
fn sse_body_response(
    shared: &Arc<Shared>,
    bytes: Vec<u8>,
    request_id: &str,
    delay: Duration,
    fail_after: Option<usize>,
    chunk_size: Option<usize>,
) -> Response {
    let chunks = match chunk_size {
        Some(size) => bytes
            .chunks(size.max(1))
            .map(Bytes::copy_from_slice)
            .collect(),
        None => sse::odd_chunks(&bytes),
    };
    let body = sse::ChunkedBody::new(
        chunks,
        delay,
        fail_after,
        Arc::clone(shared) as Arc<dyn sse::StreamObserver>,
    );
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", id);
    }
    response
}

impl sse::StreamObserver for Shared {
    fn finished(&self, completed: bool) {
        let counter = if completed {
            &self.completed_streams
        } else {
            &self.cancelled_streams
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.stream_ended.notify_waiters();
    }
}

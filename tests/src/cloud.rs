//! Mocks of Claude on the clouds, as the providers' pages describe them:
//!
//! - AWS Bedrock's Messages API at `/anthropic/v1/messages`: every request's SigV4 signature
//!   recomputed from the registered keys and compared, or a Bedrock API key as a bearer; the
//!   body in Anthropic's shape with Bedrock's model ids, betas in `anthropic_beta` (a beta in the
//!   header is refused), no `tags`; AWS's errors (`x-amzn-errortype`, `{"message"}`).
//! - Vertex AI's `rawPredict` / `streamRawPredict` / `count-tokens`, with Google's token
//!   endpoint, which checks each JWT-bearer grant's signature against the service account's key;
//!   `anthropic_version: "vertex-2023-10-16"` and no `model` in the body; Google's errors
//!   (`[{"error": {"code", "message", "status"}}]`).
//!
//! Both answer Anthropic's JSON and SSE, and listen on 127.0.0.1 with an ephemeral port.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

use crate::mock::{Grant, INPUT_TOKENS, Received, message_json};
use crate::sse;

include!("cloud_keys.rs");

/// Vertex's `anthropic_version`.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// How a cloud mock answers one request.
#[derive(Debug, Clone)]
pub enum CloudReply {
    /// A message: JSON, or SSE when the request streams.
    Message,
    /// An error in the cloud's own shape: AWS's (`x-amzn-errortype: KIND`, `{"message"}`) or
    /// Google's (`[{"error": {"code", "message", "status": KIND}}]`).
    Error {
        /// HTTP status.
        status: u16,
        /// AWS's exception name, or Google's status.
        kind: String,
        /// The message (the clouds put account ids and ARNs in it).
        message: String,
    },
    /// Claude's own error envelope, as the clouds relay it (`overloaded_error`, say).
    Claude {
        /// HTTP status.
        status: u16,
        /// `error.type`.
        kind: String,
        /// `error.message`.
        message: String,
    },
}

impl CloudReply {
    /// An error of the cloud's own shape.
    pub fn error(status: u16, kind: &str, message: &str) -> Self {
        CloudReply::Error {
            status,
            kind: kind.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Claude's envelope.
    pub fn claude(status: u16, kind: &str, message: &str) -> Self {
        CloudReply::Claude {
            status,
            kind: kind.to_owned(),
            message: message.to_owned(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cloud {
    Bedrock,
    Vertex,
}

struct AwsKey {
    label: String,
    secret: String,
    session_token: Option<String>,
}

struct Issued {
    label: String,
    until: Instant,
}

#[derive(Default)]
struct Inner {
    region: String,
    token_url: String,
    aws_keys: HashMap<String, AwsKey>,
    api_keys: HashMap<String, String>,
    /// client_email → label.
    service_accounts: HashMap<String, String>,
    disabled: Vec<String>,
    tokens: HashMap<String, Issued>,
    token_lifetime: Duration,
    token_delay: Duration,
    grants: Vec<Grant>,
    scripts: HashMap<String, VecDeque<CloudReply>>,
    received: Vec<Received>,
}

struct Shared {
    cloud: Cloud,
    inner: Mutex<Inner>,
    issued: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl sse::StreamObserver for Shared {
    fn finished(&self, _completed: bool) {}
}

/// A mock of Claude on Bedrock or on Vertex AI. Stops when dropped.
pub struct MockCloud {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockCloud {
    /// Bedrock in `region`: requests must be signed for it (service `bedrock`).
    pub async fn bedrock(region: &str) -> Self {
        Self::start(Cloud::Bedrock, region).await
    }

    /// Vertex AI, with its token endpoint at [`token_url`](Self::token_url).
    pub async fn vertex() -> Self {
        Self::start(Cloud::Vertex, "").await
    }

    async fn start(cloud: Cloud, region: &str) -> Self {
        let shared = Arc::new(Shared {
            cloud,
            inner: Mutex::new(Inner {
                region: region.to_owned(),
                token_lifetime: Duration::from_secs(3600),
                ..Inner::default()
            }),
            issued: AtomicUsize::new(0),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (addr, task) = crate::mock::serve(app).await;
        shared.lock().token_url = format!("http://{addr}/token");
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`: the `--base-url` of accounts on it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Google's token endpoint, as the service accounts' `token_uri`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    /// Bedrock: accept AWS keys for `label`.
    pub fn aws_keys(
        &self,
        label: &str,
        access_key_id: &str,
        secret: &str,
        session_token: Option<&str>,
    ) {
        self.shared.lock().aws_keys.insert(
            access_key_id.to_owned(),
            AwsKey {
                label: label.to_owned(),
                secret: secret.to_owned(),
                session_token: session_token.map(str::to_owned),
            },
        );
    }

    /// Bedrock: accept the API key `key` (a bearer) for `label`.
    pub fn api_key(&self, label: &str, key: &str) {
        self.shared
            .lock()
            .api_keys
            .insert(key.to_owned(), label.to_owned());
    }

    /// Vertex: a service account `label` of `project`, its key file as Google gives it.
    pub fn service_account(&self, label: &str, project: &str) -> String {
        let email = format!("{label}@{project}.iam.gserviceaccount.com");
        self.shared
            .lock()
            .service_accounts
            .insert(email.clone(), label.to_owned());
        json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": format!("key-{label}"),
            "private_key": TEST_PRIVATE_KEY,
            "client_email": email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url(),
        })
        .to_string()
    }

    /// Vertex: refuse every further grant for `label` (its key deleted).
    pub fn disable(&self, label: &str) {
        self.shared.lock().disabled.push(label.to_owned());
    }

    /// Vertex: how long issued tokens live.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.lock().token_lifetime = lifetime;
    }

    /// Vertex: delay the token endpoint's answers.
    pub fn set_token_delay(&self, delay: Duration) {
        self.shared.lock().token_delay = delay;
    }

    /// Vertex: every grant asked for, oldest first.
    pub fn grants(&self) -> Vec<Grant> {
        self.shared.lock().grants.clone()
    }

    /// Queue replies for `label`; then it gets messages.
    pub fn script(&self, label: &str, replies: impl IntoIterator<Item = CloudReply>) {
        self.shared
            .lock()
            .scripts
            .entry(label.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Every API request received (token grants apart), oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// An error in `cloud`'s own shape.
fn cloud_error(cloud: Cloud, status: u16, kind: &str, message: &str) -> Response {
    match cloud {
        Cloud::Bedrock => {
            let mut response = json_response(status, &json!({"message": message}));
            let kind = format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/");
            if let Ok(value) = HeaderValue::from_str(&kind) {
                response.headers_mut().insert("x-amzn-errortype", value);
            }
            response
        }
        Cloud::Vertex => json_response(
            status,
            &json!([{"error": {"code": status, "message": message, "status": kind}}]),
        ),
    }
}

/// An answer given instead of serving (boxed: a response is large).
type Refused = Box<Response>;

fn claude_error(status: u16, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.cloud == Cloud::Vertex && uri.path() == "/token" {
        return token_endpoint(&shared, &body).await;
    }
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let who = match shared.cloud {
        Cloud::Bedrock => bedrock_caller(&shared, &method, &path, &headers, &body),
        Cloud::Vertex => vertex_caller(&shared, &headers),
    };
    shared.lock().received.push(Received {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        account: who.as_ref().ok().cloned(),
        at: Instant::now(),
    });
    let label = match who {
        Ok(label) => label,
        Err(refusal) => return *refusal,
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let served = match shared.cloud {
        Cloud::Bedrock => bedrock_request(uri.path(), &headers, &request),
        Cloud::Vertex => vertex_request(uri.path(), &request),
    };
    let (model, stream, counting) = match served {
        Ok(served) => served,
        Err(refusal) => return *refusal,
    };
    let reply = shared
        .lock()
        .scripts
        .get_mut(&label)
        .and_then(VecDeque::pop_front)
        .unwrap_or(CloudReply::Message);
    match reply {
        CloudReply::Error {
            status,
            kind,
            message,
        } => cloud_error(shared.cloud, status, &kind, &message),
        CloudReply::Claude {
            status,
            kind,
            message,
        } => claude_error(status, &kind, &message),
        CloudReply::Message if counting => {
            json_response(200, &json!({"input_tokens": INPUT_TOKENS}))
        }
        CloudReply::Message if stream => {
            let chunks = sse::odd_chunks(&sse::message_stream(&model));
            let body = sse::ChunkedBody::new(
                chunks,
                Duration::ZERO,
                None,
                Arc::clone(&shared) as Arc<dyn sse::StreamObserver>,
            );
            let mut response = Response::new(Body::new(body));
            response.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            response
        }
        CloudReply::Message => json_response(200, &message_json(&model)),
    }
}

/// The account a Bedrock request's credential names, with its signature checked.
fn bedrock_caller(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refused> {
    let refuse = |status: u16, kind: &str, message: &str| {
        Err(Box::new(cloud_error(Cloud::Bedrock, status, kind, message)))
    };
    let Some(authorization) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return refuse(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    if let Some(key) = authorization.strip_prefix("Bearer ") {
        return match shared.lock().api_keys.get(key) {
            Some(label) => Ok(label.clone()),
            None => refuse(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
        };
    }
    let inner = shared.lock();
    let signature = Signature::parse(authorization);
    let Some(signature) = signature else {
        return refuse(
            400,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'.",
        );
    };
    let Some(key) = inner.aws_keys.get(&signature.access_key_id) else {
        return refuse(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    };
    if signature.region != inner.region || signature.service != "bedrock" {
        return refuse(
            403,
            "InvalidSignatureException",
            &format!(
                "Credential should be scoped to a valid region and service 'bedrock' ({}/{}).",
                signature.region, signature.service
            ),
        );
    }
    let presented_token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    if presented_token != key.session_token.as_deref() {
        return refuse(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let Some(time) = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(amz_date)
    else {
        return refuse(
            400,
            "IncompleteSignatureException",
            "X-Amz-Date is missing or malformed.",
        );
    };
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return refuse(
            403,
            "InvalidSignatureException",
            "Signature expired: the request time is more than 5 minutes from now.",
        );
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = expected_signature(
        key,
        &signature.access_key_id,
        &inner.region,
        time,
        method.as_str(),
        &format!("http://{host}{path}"),
        &signature.signed_headers,
        headers,
        body,
    );
    match expected {
        Some(expected) if expected == signature.signature => Ok(key.label.clone()),
        _ => refuse(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ),
    }
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Signature {
    access_key_id: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

impl Signature {
    fn parse(header: &str) -> Option<Self> {
        let rest = header.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let mut fields = HashMap::new();
        for part in rest.split(',') {
            let (name, value) = part.trim().split_once('=')?;
            fields.insert(name, value);
        }
        let mut scope = fields.get("Credential")?.split('/');
        let access_key_id = scope.next()?.to_owned();
        let _date = scope.next()?;
        let region = scope.next()?.to_owned();
        let service = scope.next()?.to_owned();
        Some(Self {
            access_key_id,
            region,
            service,
            signed_headers: fields
                .get("SignedHeaders")?
                .split(';')
                .map(str::to_owned)
                .collect(),
            signature: (*fields.get("Signature")?).to_owned(),
        })
    }
}

/// `20261203T101500Z`.
fn amz_date(value: &str) -> Option<SystemTime> {
    let time = chrono::NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%SZ").ok()?;
    let seconds = u64::try_from(time.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The signature AWS computes for the request: the same canonical request, from the headers
/// it says it signed, with the registered secret.
#[allow(clippy::too_many_arguments)]
fn expected_signature(
    key: &AwsKey,
    access_key_id: &str,
    region: &str,
    time: SystemTime,
    method: &str,
    uri: &str,
    signed_headers: &[String],
    headers: &HeaderMap,
    body: &[u8],
) -> Option<String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    // The signer adds these itself.
    const OWN: [&str; 3] = ["host", "x-amz-date", "x-amz-security-token"];
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        &key.secret,
        key.session_token.clone(),
        None,
        "mock",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let signed: Vec<(&str, &str)> = signed_headers
        .iter()
        .filter(|name| !OWN.contains(&name.as_str()))
        .filter_map(|name| {
            let value = headers.get(name.as_str())?.to_str().ok()?;
            Some((name.as_str(), value))
        })
        .collect();
    let signable =
        SignableRequest::new(method, uri, signed.into_iter(), SignableBody::Bytes(body)).ok()?;
    let (instructions, signature) = sign(signable, &params).ok()?.into_parts();
    let _ = instructions;
    Some(signature)
}

/// Bedrock's checks of a request: (the model as sent, whether it streams, whether it counts).
fn bedrock_request(
    path: &str,
    headers: &HeaderMap,
    request: &Value,
) -> Result<(String, bool, bool), Refused> {
    let invalid = |message: &str| {
        Err(Box::new(cloud_error(
            Cloud::Bedrock,
            400,
            "ValidationException",
            message,
        )))
    };
    let counting = match path {
        "/anthropic/v1/messages" => false,
        "/anthropic/v1/messages/count_tokens" => true,
        _ => {
            return Err(Box::new(cloud_error(
                Cloud::Bedrock,
                404,
                "UnknownOperationException",
                "Unknown operation",
            )));
        }
    };
    if headers.contains_key("anthropic-beta") {
        return invalid(
            "anthropic-beta is not supported as a header; send anthropic_beta in the body.",
        );
    }
    if !request.is_object() {
        return invalid("Malformed input request, please reformat your input and try again.");
    }
    if request.get("tags").is_some() {
        return invalid("tags: Extra inputs are not permitted");
    }
    if request
        .get("anthropic_beta")
        .is_some_and(|betas| !betas.is_array())
    {
        return invalid("anthropic_beta: Input should be a valid list");
    }
    let model = request["model"].as_str().unwrap_or_default();
    let known = model.starts_with("anthropic.claude-")
        || model
            .split_once(".anthropic.claude-")
            .is_some_and(|(geo, _)| ["global", "us", "eu", "jp", "apac", "au"].contains(&geo));
    if !known {
        return invalid("The provided model identifier is invalid.");
    }
    Ok((
        model.to_owned(),
        request["stream"].as_bool().unwrap_or(false),
        counting,
    ))
}

/// The account a Vertex request's access token was issued to.
fn vertex_caller(shared: &Shared, headers: &HeaderMap) -> Result<String, Refused> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let inner = shared.lock();
    match token.and_then(|token| inner.tokens.get(token)) {
        Some(issued) if issued.until > Instant::now() => Ok(issued.label.clone()),
        _ => Err(Box::new(cloud_error(
            Cloud::Vertex,
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        ))),
    }
}

/// Vertex's checks of a request: (the model, as Anthropic names it, whether it streams,
/// whether it counts).
fn vertex_request(path: &str, request: &Value) -> Result<(String, bool, bool), Refused> {
    let not_found = || {
        Err(Box::new(cloud_error(
            Cloud::Vertex,
            404,
            "NOT_FOUND",
            &format!("The requested URL {path} was not found."),
        )))
    };
    let invalid = |message: &str| {
        Err(Box::new(claude_error(
            400,
            "invalid_request_error",
            message,
        )))
    };
    let Some(rest) = path.strip_prefix("/v1/projects/") else {
        return not_found();
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [
        _project,
        "locations",
        _region,
        "publishers",
        "anthropic",
        "models",
        call,
    ] = parts[..]
    else {
        return not_found();
    };
    let Some((model, method)) = call.split_once(':') else {
        return not_found();
    };
    if !request.is_object() {
        return invalid("The request body is not valid JSON.");
    }
    if request.get("tags").is_some() {
        return invalid("tags: Extra inputs are not permitted");
    }
    if model == "count-tokens" {
        return match request["model"].as_str() {
            Some(model) if method == "rawPredict" => Ok((model.replace('@', "-"), false, true)),
            _ => invalid("model: Field required"),
        };
    }
    if request.get("model").is_some() {
        return invalid("model: Extra inputs are not permitted");
    }
    if request["anthropic_version"] != VERTEX_VERSION {
        return invalid("anthropic_version: Input should be 'vertex-2023-10-16'");
    }
    let stream = request["stream"].as_bool().unwrap_or(false);
    match (method, stream) {
        ("rawPredict", false) | ("streamRawPredict", true) => {
            Ok((model.replace('@', "-"), stream, false))
        }
        _ => invalid("stream must be true with streamRawPredict and false with rawPredict"),
    }
}

/// Google's token endpoint: the JWT-bearer grant, its assertion checked against the service
/// account's key.
async fn token_endpoint(shared: &Shared, body: &[u8]) -> Response {
    let delay = shared.lock().token_delay;
    tokio::time::sleep(delay).await;
    let form: HashMap<String, String> = String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (decode(name), decode(value)))
        .collect();
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let answer = check_grant(shared, &form);
    let mut inner = shared.lock();
    inner.grants.push(Grant {
        grant_type,
        body: json!(form),
        accepted: answer.is_ok(),
    });
    match answer {
        Ok(label) => {
            let n = shared.issued.fetch_add(1, Ordering::SeqCst);
            let token = format!("ya29.mock-{label}-{n}");
            let lifetime = inner.token_lifetime;
            inner.tokens.insert(
                token.clone(),
                Issued {
                    label,
                    until: Instant::now() + lifetime,
                },
            );
            json_response(
                200,
                &json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}),
            )
        }
        Err(description) => json_response(
            400,
            &json!({"error": "invalid_grant", "error_description": description}),
        ),
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    iat: u64,
    exp: u64,
}

fn check_grant(shared: &Shared, form: &HashMap<String, String>) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return Err("Unsupported grant type".into());
    }
    let assertion = form.get("assertion").ok_or("Missing assertion")?;
    let key = DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[shared.lock().token_url.clone()]);
    let data = jsonwebtoken::decode::<Claims>(assertion, &key, &validation)
        .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    let claims = data.claims;
    let inner = shared.lock();
    let label = inner
        .service_accounts
        .get(&claims.iss)
        .cloned()
        .ok_or("Invalid grant: account not found")?;
    if inner.disabled.contains(&label) {
        return Err("Invalid grant: account not found".into());
    }
    if data.header.kid.as_deref() != Some(format!("key-{label}").as_str()) {
        return Err("Invalid JWT: kid does not name the account's key".into());
    }
    if !claims
        .scope
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return Err("Invalid JWT: the scope is not cloud-platform".into());
    }
    if claims.exp.saturating_sub(claims.iat) > 3600 {
        return Err("Invalid JWT: Token must be a short-lived token (60 minutes)".into());
    }
    Ok(label)
}

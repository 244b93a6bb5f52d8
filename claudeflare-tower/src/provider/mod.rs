//! An upstream API and its conventions.

mod anthropic;
mod bedrock;
mod cloud;
mod compatible;
mod model_map;
mod set;
mod vertex;

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};

pub use anthropic::{Anthropic, AnthropicTap};
pub use bedrock::Bedrock;
pub use cloud::CloudTap;
pub use compatible::{AuthStyle, Compatible};
pub use model_map::{InvalidModelMap, MapEntry, ModelMap};
pub use set::{AnyTap, Providers};
pub use vertex::Vertex;

use serde::{Deserialize, Serialize};

use crate::account::{AccountEntry, AccountInfo, Credentials};
use crate::{BoxError, BoxFuture};

/// An upstream API and its conventions: everything upstream-specific, behind one trait.
///
/// The layers know HTTP, accounts and retries; a provider knows its upstream:
///
/// - how the client's request becomes the upstream's for an account ([`Provider::prepare`]):
///   the URL, the account's credential in the provider's header style (the client's taken
///   off), and the model through the account's [`ModelMap`];
/// - what a response means ([`Provider::classify`], in the spirit of tower-http's
///   `ClassifyResponse`), what an error instead of a response means
///   ([`Provider::classify_error`]), and what an error inside a stream means
///   ([`Provider::classify_stream_error`]);
/// - how usage is read from a response body as it passes ([`Provider::tap`]);
/// - how a subscription token is refreshed ([`Provider::refresh`]).
///
/// # One pool, several providers
///
/// Each account names its provider in its [`Route`](crate::Route)'s [`Backend`]:
/// Anthropic, an [Anthropic-compatible](Compatible) backend at its own base URL, or a provider
/// written outside this crate, by name. [`Providers`], the stack's default, holds the built-in
/// ones and any you register, and hands each call to the account's: a `match` over an enum for
/// the built-in providers (no vtable on their request path), one dynamic call for yours.
///
/// # Adding a provider
///
/// Implement [`Provider`] for a type of your own, register it under a name with
/// [`Providers::with`], and give its accounts [`Backend::External`] with that name. Its
/// `prepare` sets the request's absolute URL and credential (the helpers [`Credentials::bearer`],
/// [`Credentials::plain`], [`join_uri`] and [`ModelMap::apply`] do the common parts), and its
/// `classify` can start from [`Classification::generic`], the rules any HTTP API follows. `examples/custom_provider.rs` mixes
/// one with Anthropic accounts in a pool. The layers do not change.
pub trait Provider: Clone + Send + Sync + 'static {
    /// Reads usage from one response body.
    type Tap: UsageTap;

    /// Make `req` (the client's request, its body read whole) the upstream request for
    /// `account`: its absolute URL, the account's credential in the provider's header style
    /// with the client's taken off (it must never reach the upstream), and the body's model
    /// through the account's map.
    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream>;

    /// Whether a response's meaning depends on its (error) body, which `Classify` then reads,
    /// up to 64 KiB, before handing it on.
    fn needs_body(&self, account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool;

    /// What a response received at `now` means, from its status, headers and (when
    /// [`needs_body`](Self::needs_body) said so) its body.
    fn classify(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification;

    /// What the client gets instead of an error body that `Classify` read (when
    /// [`needs_body`](Self::needs_body) said so): `None`, the default, hands it on as it is. A
    /// provider whose upstream speaks another error shape answers Anthropic's envelope here.
    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes> {
        let _ = (account, status, headers, body);
        None
    }

    /// What an error instead of a response means: the upstream unreachable, a timeout, a
    /// credential that cannot be had. The default is [`Outcome::from_error`].
    fn classify_error(
        &self,
        account: &AccountEntry,
        error: &(dyn std::error::Error + 'static),
    ) -> Outcome {
        let _ = account;
        Outcome::from_error(error)
    }

    /// What an error announced inside a successful stream means for the account.
    fn classify_stream_error(
        &self,
        account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification;

    /// A usage reader for a response with these headers, from `account` (none: an answer
    /// claudeflare made itself).
    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> Self::Tap;

    /// Exchange a subscription account's refresh token for new tokens.
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>>;
}

/// Which provider serves an account, with what that provider needs of the account beyond its
/// credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Anthropic's API, at the base URL of the stack's [`Anthropic`] (`upstream_url`).
    #[default]
    Anthropic,
    /// A backend that speaks the Messages API at its own base URL (z.ai, Moonshot, DeepSeek,
    /// MiniMax, OpenRouter's Anthropic endpoint).
    Compatible {
        /// Where its API is (`https://api.z.ai/api/anthropic`): the client's path is appended.
        base_url: Uri,
        /// The header its key goes in.
        auth: AuthStyle,
    },
    /// Claude on AWS Bedrock, through its Messages API (`{base_url}/anthropic/v1/messages`).
    Bedrock {
        /// The AWS region (`us-east-1`): where requests go, and what they are signed for.
        region: String,
        /// `https://bedrock-runtime.{region}.amazonaws.com` unless given.
        base_url: Uri,
    },
    /// Claude on Google Vertex AI (`{base_url}/v1/projects/{project}/locations/{region}/…`).
    Vertex {
        /// The Google Cloud project id.
        project: String,
        /// The region (`us-east5`, `europe-west1`) or `global`.
        region: String,
        /// `https://{region}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com`
        /// for `global`) unless given.
        base_url: Uri,
    },
    /// A provider registered with [`Providers::with`] under this name.
    External(std::sync::Arc<str>),
}

impl Backend {
    /// The provider's name: `anthropic`, `anthropic-compatible`, or an external one's.
    pub fn name(&self) -> &str {
        match self {
            Backend::Anthropic => "anthropic",
            Backend::Compatible { .. } => compatible::NAME,
            Backend::Bedrock { .. } => bedrock::NAME,
            Backend::Vertex { .. } => vertex::NAME,
            Backend::External(name) => name,
        }
    }

    /// Bedrock in `region`, at `base_url` or AWS's endpoint for the region.
    pub fn bedrock(region: &str, base_url: Option<Uri>) -> Result<Self, InvalidUpstream> {
        let region = cloud::region(region)?;
        let base_url = match base_url {
            Some(url) => url,
            None => cloud::endpoint(&format!("https://bedrock-runtime.{region}.amazonaws.com"))?,
        };
        Ok(Backend::Bedrock { region, base_url })
    }

    /// Vertex AI for `project` in `region`, at `base_url` or Google's endpoint for the region.
    pub fn vertex(
        project: &str,
        region: &str,
        base_url: Option<Uri>,
    ) -> Result<Self, InvalidUpstream> {
        let region = cloud::region(region)?;
        let base_url = match base_url {
            Some(url) => url,
            None if region == "global" => Uri::from_static("https://aiplatform.googleapis.com"),
            None if region == "us" || region == "eu" => {
                cloud::endpoint(&format!("https://aiplatform.{region}.rep.googleapis.com"))?
            }
            None => cloud::endpoint(&format!("https://{region}-aiplatform.googleapis.com"))?,
        };
        Ok(Backend::Vertex {
            project: cloud::project(project)?,
            region,
            base_url,
        })
    }

    /// [`name`](Self::name) as a header value (a built-in one costs no allocation).
    pub(crate) fn header_value(&self) -> Option<HeaderValue> {
        match self {
            Backend::Anthropic => Some(HeaderValue::from_static("anthropic")),
            Backend::Compatible { .. } => Some(HeaderValue::from_static(compatible::NAME)),
            Backend::Bedrock { .. } => Some(HeaderValue::from_static(bedrock::NAME)),
            Backend::Vertex { .. } => Some(HeaderValue::from_static(vertex::NAME)),
            Backend::External(name) => HeaderValue::from_str(name).ok(),
        }
    }

    /// A cloud's region.
    pub fn region(&self) -> Option<&str> {
        match self {
            Backend::Bedrock { region, .. } | Backend::Vertex { region, .. } => Some(region),
            _ => None,
        }
    }

    /// Its own base URL, when it has one.
    pub fn base_url(&self) -> Option<&Uri> {
        match self {
            Backend::Compatible { base_url, .. }
            | Backend::Bedrock { base_url, .. }
            | Backend::Vertex { base_url, .. } => Some(base_url),
            _ => None,
        }
    }
}

impl Credentials {
    /// The credential as `Authorization: Bearer …`: an OAuth access token, or a key a provider
    /// wants as a bearer. `None` for keys that sign requests rather than travel with them. For
    /// [`AccountEntry::credential`].
    pub fn bearer(&self) -> Option<HeaderValue> {
        HeaderValue::try_from(format!("Bearer {}", self.secret()?.expose_secret())).ok()
    }

    /// The credential as it is, for a header of its own (`x-api-key`). For
    /// [`AccountEntry::credential`].
    pub fn plain(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(self.secret()?.expose_secret()).ok()
    }

    /// The secret a request carries: the key, or the access token (keys that sign requests are
    /// never sent).
    fn secret(&self) -> Option<&SecretString> {
        match self {
            Credentials::ApiKey(key) => Some(key),
            Credentials::OAuth(tokens) => Some(&tokens.access_token),
            Credentials::Aws(_) => None,
        }
    }
}

/// `base` joined with the path and query of `uri`: `https://api.z.ai/api/anthropic` and
/// `/v1/messages?beta=true` make `https://api.z.ai/api/anthropic/v1/messages?beta=true`. For a
/// [`Provider::prepare`].
pub fn join_uri(base: &Uri, uri: &Uri) -> Result<Uri, InvalidUpstream> {
    let (Some(scheme), Some(authority)) = (base.scheme(), base.authority()) else {
        return Err(InvalidUpstream(base.to_string()));
    };
    let prefix = base.path().trim_end_matches('/');
    if prefix.is_empty() {
        // The usual case (`https://api.anthropic.com`): reuse the parsed parts, no new parsing.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        return Uri::from_parts(parts)
            .map_err(|e: http::uri::InvalidUriParts| InvalidUpstream(e.to_string()));
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{scheme}://{authority}{prefix}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| InvalidUpstream(e.to_string()))
}

impl ModelMap {
    /// Rename the model of `req`'s body through the map (keeping `content-length` true);
    /// nothing changes when the map is empty or sends the model as it is. For a
    /// [`Provider::prepare`].
    pub fn apply(&self, req: &mut Request<Full<Bytes>>) {
        if self.is_empty() {
            return;
        }
        let body = crate::body::take_full(req.body_mut());
        let body = self.rewrite(&body).unwrap_or(body);
        if req.headers().contains_key(http::header::CONTENT_LENGTH) {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        *req.body_mut() = Full::new(body);
    }
}

impl Classification {
    /// What a response means by the rules any HTTP API follows: a 429 benches the account
    /// until its `retry-after` (or for [`DEFAULT_COOLDOWN`]), 401 is a refused credential, 403
    /// a refused account (with the body's message, when it is JSON), 529 overloaded, other 5xx
    /// retried, other 4xx the client's. For providers that have no rules of their own beyond
    /// these.
    pub fn generic(
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        match status.as_u16() {
            429 => {
                let until = retry_after(headers, now).unwrap_or(now + DEFAULT_COOLDOWN);
                Classification::new(Outcome::RateLimited { until })
            }
            403 => {
                let mut seen = Classification::new(Outcome::Forbidden);
                seen.reason = Some(
                    body.and_then(error_message)
                        .unwrap_or_else(|| "the upstream refused the account (403)".to_owned()),
                );
                seen
            }
            _ => Classification::new(Outcome::from_status(status)),
        }
    }
}

/// `retry-after` in seconds (or as an HTTP date), as an instant after `now`.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    retry_after_value(headers.get(http::header::RETRY_AFTER)?.to_str().ok()?, now)
}

/// The longest wait a `retry-after` is taken at (a day and a second): beyond it, a value is a
/// mistake, not a plan.
pub(crate) const MAX_RETRY_AFTER: TimeDelta = TimeDelta::seconds(24 * 3600 + 1);

pub(crate) fn retry_after_value(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        let seconds = i64::try_from(seconds)
            .ok()?
            .min(MAX_RETRY_AFTER.num_seconds());
        return Some(now + TimeDelta::seconds(seconds));
    }
    DateTime::parse_from_rfc2822(value)
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// `error.message` (or a top-level `message`) of a JSON error body.
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

/// Token counts of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
    /// Input tokens written to the prompt cache, both lifetimes (5-minute and 1-hour).
    pub cache_creation_input_tokens: u64,
    /// Of `cache_creation_input_tokens`, those written to the 1-hour cache (priced higher than
    /// the 5-minute writes); 0 when the answer did not split them.
    #[serde(default)]
    pub cache_creation_1h_input_tokens: u64,
}

impl Usage {
    /// Take the split of cache writes by lifetime: the 1-hour part, and the total when the answer
    /// gave only the split.
    pub(crate) fn split_cache_creation(
        &mut self,
        five_minutes: Option<u64>,
        one_hour: Option<u64>,
    ) {
        let (five_minutes, one_hour) = (five_minutes.unwrap_or(0), one_hour.unwrap_or(0));
        self.cache_creation_1h_input_tokens = one_hour;
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .max(five_minutes.saturating_add(one_hour));
    }

    /// Cache writes to the 5-minute cache.
    pub fn cache_creation_5m_input_tokens(&self) -> u64 {
        self.cache_creation_input_tokens
            .saturating_sub(self.cache_creation_1h_input_tokens)
    }
}

/// What an answer says about its billing beyond the top-level token counts: the speed it ran
/// at, where it ran, and each attempt that made it (`usage.iterations`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Billing {
    /// `usage.speed`: `"fast"` when fast mode served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<String>,
    /// `usage.inference_geo`: where inference ran (`"us"`, `"global"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_geo: Option<String>,
    /// `usage.iterations`: the attempts of a server-side fallback (and the steps of a tool loop
    /// or a compaction), each with its own model and tokens. Empty when the answer listed none;
    /// then the top-level usage is the whole of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iterations: Vec<Iteration>,
}

/// One entry of `usage.iterations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Iteration {
    /// Its `type`: `message` (a declined attempt, or an earlier step of a tool loop),
    /// `fallback_message` (the attempt that served), `compaction`, `advisor_message`, ….
    pub kind: String,
    /// The model that ran it; `None` when the entry names none (a compaction: the served
    /// model's).
    pub model: Option<String>,
    /// Its tokens.
    pub usage: Usage,
}

impl Iteration {
    /// An entry of `kind`, run by `model`, that used `usage`.
    pub fn new(kind: impl Into<String>, model: Option<String>, usage: Usage) -> Self {
        Self {
            kind: kind.into(),
            model,
            usage,
        }
    }

    /// The kind of the entry for the attempt that served a server-side fallback.
    pub const FALLBACK_MESSAGE: &'static str = "fallback_message";
}

impl Billing {
    /// The model of the attempt that served a server-side fallback, when the answer listed one.
    pub fn fallback_model(&self) -> Option<&str> {
        self.iterations
            .iter()
            .rev()
            .find(|i| i.kind == Iteration::FALLBACK_MESSAGE)
            .and_then(|i| i.model.as_deref())
    }
}

/// A fresh token pair from a refresh.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The new access token.
    pub access_token: SecretString,
    /// The rotated refresh token, when the server sent one (keep the old one otherwise).
    pub refresh_token: Option<SecretString>,
    /// When the new access token expires.
    pub expires_at: DateTime<Utc>,
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The refresh token is no longer accepted (`invalid_grant` and the like): only a new login
    /// helps.
    #[error("the refresh token was rejected: {0}")]
    Rejected(String),
    /// Network trouble or a server error: try again later.
    #[error("token refresh failed: {0}")]
    Temporary(BoxError),
}

/// How long an account is benched when a limited response names no usable reset.
pub const DEFAULT_COOLDOWN: TimeDelta = TimeDelta::seconds(60);

/// A request that makes no valid upstream request (its path, or the account's base URL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid upstream URL: {0}")]
pub struct InvalidUpstream(pub String);

/// What an upstream response means for the request and the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// 1xx–3xx: hand it to the client.
    Success,
    /// A 4xx (or a 501 or 505) that another try or account would answer the same way: hand it
    /// to the client.
    ClientError,
    /// A 400 saying the request needs extra usage (third-party traffic on a subscription billed
    /// to extra usage): a billing-policy refusal, not a rate limit. Handed to the client; no
    /// account is benched.
    ExtraUsageRequired,
    /// 429: the account rests until then; try the next account now.
    RateLimited {
        /// When the account may be used again.
        until: DateTime<Utc>,
    },
    /// A 429 scoped to this request's model or beta (long context needing extra usage,
    /// `out_of_credits`): try the next account, keep this one in rotation.
    ScopedRefusal,
    /// A 403 `permission_error`: the account is disabled or banned. Try the next account; this
    /// one stays out of rotation until a person acts.
    Forbidden,
    /// 401: the credential was refused.
    AuthFailed,
    /// 529: the upstream is overloaded; retry with backoff, then the next account.
    Overloaded,
    /// 5xx: retry with backoff, then the next account.
    ServerError,
    /// No answer came: the upstream could not be reached or the connection broke. Retry with
    /// backoff; then the next account of another upstream, or 502.
    Unreachable,
    /// No answer within the first-byte timeout: 504 at once.
    TimedOut,
    /// The account cannot take the request now (its credential is dead, its upstream URL
    /// invalid): the next account at once.
    Unusable,
}

impl Outcome {
    /// The outcome a status implies when no provider looked at the response (a service of your
    /// own below `Failover`, say): a 429 benches for [`DEFAULT_COOLDOWN`].
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            429 => Outcome::RateLimited {
                until: Utc::now() + DEFAULT_COOLDOWN,
            },
            401 => Outcome::AuthFailed,
            529 => Outcome::Overloaded,
            501 | 505 => Outcome::ClientError,
            500..=599 => Outcome::ServerError,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Success,
        }
    }

    /// A short, recognisable label for a request record of this outcome, when it is one of the
    /// answers that look alike (so the history tells them apart).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Outcome::ExtraUsageRequired => {
                Some("extra usage required (billing refusal; no account benched)")
            }
            Outcome::ScopedRefusal => Some("refused for this model or beta (account kept)"),
            Outcome::Forbidden => Some("account refused by the upstream (out of rotation)"),
            _ => None,
        }
    }
}

/// What the upstream said about an account's limits in one response. Every field is optional:
/// an absent one leaves the account's last value.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// The provider's word for the account's status (Anthropic's unified status:
    /// `allowed`, `allowed_warning`, `rejected`, …).
    pub status: Option<String>,
    /// When that status resets.
    pub reset: Option<DateTime<Utc>>,
    /// Share of the 5-hour window used (0–1).
    pub utilization_5h: Option<f64>,
    /// When the 5-hour window resets.
    pub reset_5h: Option<DateTime<Utc>>,
    /// Share of the 7-day window used (0–1).
    pub utilization_7d: Option<f64>,
    /// When the 7-day window resets.
    pub reset_7d: Option<DateTime<Utc>>,
}

/// A provider's reading of one response (or of an error inside a stream): what it means, and
/// what it says about the account. [`AccountPool::observe`](crate::AccountPool::observe) applies
/// it to the account.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Classification {
    /// What the response means.
    pub outcome: Outcome,
    /// Take the account out of rotation until then (a rate limit, or a limited status on a
    /// response that otherwise went through).
    pub bench_until: Option<DateTime<Utc>>,
    /// The account's limits, as the response reported them.
    pub limits: Limits,
    /// The upstream's own words, when it gave a reason (an error message).
    pub reason: Option<String>,
}

impl Classification {
    /// A classification with nothing but `outcome`.
    pub fn new(outcome: Outcome) -> Self {
        let bench_until = match outcome {
            Outcome::RateLimited { until } => Some(until),
            _ => None,
        };
        Self {
            outcome,
            bench_until,
            limits: Limits::default(),
            reason: None,
        }
    }
}

/// An error an upstream announced inside a response body (an SSE `event: error`, or the
/// envelope of a JSON error answer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamError {
    /// `error.type`, e.g. `overloaded_error`.
    pub kind: String,
    /// `error.message`.
    pub message: String,
}

impl StreamError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// What a response body said, as far as a [`UsageTap`] read it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TapSummary {
    /// Tokens.
    pub usage: Usage,
    /// The model that served the request, as the answer named it (for a server-side fallback,
    /// the fallback model).
    pub model: Option<String>,
    /// Speed, region and attempts, for the cost.
    pub billing: Billing,
    /// An error the body carried, for the request's record.
    pub error: Option<String>,
    /// An error announced inside a stream, for [`Provider::classify_stream_error`].
    pub stream_error: Option<StreamError>,
}

/// Reads usage from a response body as its chunks pass, holding no byte back.
pub trait UsageTap: Send + 'static {
    /// The next chunk of the body.
    fn feed(&mut self, chunk: &[u8]);

    /// Whether the body is an event stream, which a cut can be reported into (with an event of
    /// [`error_event`](Self::error_event)).
    fn is_stream(&self) -> bool;

    /// Whether the bytes so far end where a frame can be appended cleanly.
    fn at_boundary(&self) -> bool {
        true
    }

    /// The frame that tells a stream's client it broke: `kind` and `message` in the
    /// provider's error event.
    fn error_event(&self, kind: &str, message: &str) -> bytes::Bytes;

    /// The body ended: what it said.
    fn finish(&mut self) -> TapSummary;

    /// The body was cut short: what was read so far (tokens used are used all the same).
    fn so_far(&self) -> TapSummary;
}

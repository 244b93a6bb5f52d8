//! [`Provider`]: everything upstream-specific, behind one trait.
//!
//! The layers know HTTP, accounts and retries; a provider knows its upstream:
//!
//! - where requests go ([`Provider::upstream_uri`]);
//! - how a credential goes on a request and the client's comes off ([`Provider::authorize`],
//!   [`Provider::strip_client_credentials`]);
//! - what a response means ([`Provider::classify`], in the spirit of tower-http's
//!   `ClassifyResponse`), and an error inside a stream ([`Provider::classify_stream_error`]);
//! - how usage is read from a response body as it passes ([`Provider::tap`]);
//! - how a subscription token is refreshed ([`Provider::refresh`]).
//!
//! [`Anthropic`] is the first implementation. The layers are generic over the provider (with
//! `Anthropic` as the default type), so a new provider touches no layer. Its methods are called
//! through generics, not a vtable: on the request path they cost what the code in them costs.

pub mod anthropic;

use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use secrecy::SecretString;

pub use anthropic::Anthropic;

use serde::{Deserialize, Serialize};

use crate::account::Mode;
use crate::{BoxError, BoxFuture};

/// An upstream API and its conventions. See the [module docs](self).
pub trait Provider: Clone + Send + Sync + 'static {
    /// Reads usage from one response body.
    type Tap: UsageTap;

    /// Short lowercase name, e.g. `anthropic`.
    fn name(&self) -> &'static str;

    /// The upstream URL for a request to `uri` (whose path and query are the client's).
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, InvalidUpstream>;

    /// Remove whatever credential the client sent: it must never reach the upstream.
    fn strip_client_credentials(&self, headers: &mut HeaderMap);

    /// Put an account's `credential` (the header value [`Credentials`](crate::Credentials)
    /// makes) on a request.
    fn authorize(&self, headers: &mut HeaderMap, mode: Mode, credential: HeaderValue);

    /// Whether a response's meaning depends on its (error) body, which `Classify` then reads,
    /// up to 64 KiB, before handing it on.
    fn needs_body(&self, status: StatusCode, headers: &HeaderMap) -> bool;

    /// What a response received at `now` means, from its status, headers and (when
    /// [`needs_body`](Self::needs_body) said so) its body.
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification;

    /// What an error announced inside a successful stream means for the account.
    fn classify_stream_error(&self, error: &StreamError, now: DateTime<Utc>) -> Classification;

    /// A usage reader for a response with these headers.
    fn tap(&self, headers: &HeaderMap) -> Self::Tap;

    /// Exchange a subscription account's refresh token for new tokens.
    fn refresh<'a>(
        &'a self,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>>;
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

/// A request path that makes no valid upstream URL.
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

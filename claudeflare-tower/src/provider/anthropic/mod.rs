//! [`Anthropic`]: the Messages API, its rate-limit headers, error envelopes, SSE usage events and
//! OAuth refresh grant, as Anthropic serves them in December 2026 (`platform.claude.com` OAuth).
//!
//! ```
//! use claudeflare_tower::provider::Anthropic;
//! let anthropic = Anthropic::new()
//!     .base_url(http::Uri::from_static("http://127.0.0.1:9000"))
//!     .oauth("https://platform.claude.com/v1/oauth/token".parse().unwrap(), "my-client-id");
//! ```

mod classify;
mod headers;
mod oauth;
mod usage;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use secrecy::SecretString;

pub use oauth::{DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL};
use usage::{JsonTap, SseTap};

use super::{
    Classification, InvalidUpstream, Provider, RefreshError, StreamError, TapSummary, TokenPair,
    UsageTap,
};
use crate::BoxFuture;
use crate::account::Mode;
use crate::setting::Setting;

/// Anthropic's API.
pub const DEFAULT_UPSTREAM_URL: &str = "https://api.anthropic.com";
/// The beta flag subscription tokens need.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Header names as constants: a `&str` name is parsed and validated at every use.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The Anthropic provider. Cheap to clone; clones share the base URL setting.
#[derive(Debug, Clone)]
pub struct Anthropic {
    base: Setting<Uri>,
    oauth: Arc<oauth::Endpoint>,
}

impl Default for Anthropic {
    fn default() -> Self {
        Self::new()
    }
}

impl Anthropic {
    /// `https://api.anthropic.com`, refreshing tokens at [`DEFAULT_TOKEN_URL`] as Claude Code's
    /// client.
    pub fn new() -> Self {
        Self {
            base: Setting::new(Uri::from_static(DEFAULT_UPSTREAM_URL)),
            oauth: Arc::new(oauth::Endpoint::new(
                Uri::from_static(DEFAULT_TOKEN_URL),
                DEFAULT_CLIENT_ID.to_owned(),
            )),
        }
    }

    /// Requests go to `base` (a mock in tests); a [`Setting`] lets it change while serving.
    pub fn base_url(mut self, base: impl Into<Setting<Uri>>) -> Self {
        self.base = base.into();
        self
    }

    /// Refresh tokens at `token_url` as OAuth client `client_id`.
    pub fn oauth(mut self, token_url: Uri, client_id: impl Into<String>) -> Self {
        self.oauth = Arc::new(oauth::Endpoint::new(token_url, client_id.into()));
        self
    }
}

impl Provider for Anthropic {
    type Tap = AnthropicTap;

    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, InvalidUpstream> {
        join(&self.base.current(), uri)
    }

    fn strip_client_credentials(&self, headers: &mut HeaderMap) {
        headers.remove(header::AUTHORIZATION);
        headers.remove(X_API_KEY);
    }

    fn authorize(&self, headers: &mut HeaderMap, mode: Mode, credential: HeaderValue) {
        match mode {
            Mode::Console => {
                headers.insert(X_API_KEY, credential);
            }
            Mode::Max => {
                headers.insert(header::AUTHORIZATION, credential);
                add_oauth_beta(headers);
            }
        }
    }

    fn needs_body(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        classify::needs_body(status) && is_json(headers)
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        classify::classify(status, headers, body, now)
    }

    fn classify_stream_error(&self, error: &StreamError, now: DateTime<Utc>) -> Classification {
        classify::classify_stream_error(error, now)
    }

    fn tap(&self, headers: &HeaderMap) -> AnthropicTap {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("text/event-stream") {
            AnthropicTap(Tap::Sse(Box::default()))
        } else if content_type.starts_with("application/json") {
            AnthropicTap(Tap::Json(JsonTap::default()))
        } else {
            AnthropicTap(Tap::None)
        }
    }

    fn refresh<'a>(
        &'a self,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(self.oauth.refresh(refresh_token))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Append the OAuth beta flag to `anthropic-beta` unless the client already lists it.
fn add_oauth_beta(headers: &mut HeaderMap) {
    let values: Vec<&str> = headers
        .get_all(&ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.contains(&OAUTH_BETA) {
        return;
    }
    let mut joined = values.join(",");
    if !joined.is_empty() {
        joined.push(',');
    }
    joined.push_str(OAUTH_BETA);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(ANTHROPIC_BETA, value);
    }
}

/// `base` joined with the path and query of `uri`.
fn join(base: &Uri, uri: &Uri) -> Result<Uri, InvalidUpstream> {
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

/// Usage from an Anthropic answer: the SSE events of a stream (`message_start`, the last
/// `usage`, `event: error`), or a JSON body read at its end.
///
/// Hand-written rather than a general SSE parser because it runs over every streamed byte:
/// Criterion measures it at 5.5 GiB/s on a 5,000-event stream (`hot_paths`, BENCHMARKS.md).
#[derive(Debug)]
pub struct AnthropicTap(Tap);

#[derive(Debug)]
enum Tap {
    /// `text/event-stream`.
    // Boxed: the stream reader is several times the size of the others.
    Sse(Box<SseTap>),
    /// `application/json`.
    Json(JsonTap),
    /// Anything else: nothing to read.
    None,
}

impl UsageTap for AnthropicTap {
    fn feed(&mut self, chunk: &[u8]) {
        match &mut self.0 {
            Tap::Sse(tap) => tap.feed(chunk),
            Tap::Json(tap) => tap.feed(chunk),
            Tap::None => {}
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.0, Tap::Sse(_))
    }

    fn at_boundary(&self) -> bool {
        match &self.0 {
            Tap::Sse(tap) => tap.at_boundary(),
            _ => true,
        }
    }

    fn error_event(&self, kind: &str, message: &str) -> Bytes {
        let lead = if self.at_boundary() { "" } else { "\n\n" };
        let json = crate::error::envelope_json(kind, message);
        Bytes::from(format!("{lead}event: error\ndata: {json}\n\n"))
    }

    fn finish(&mut self) -> TapSummary {
        match &mut self.0 {
            Tap::Sse(tap) => {
                tap.finish();
                // The model is read before the billing is taken: it may come from its attempts.
                let mut summary = TapSummary {
                    usage: tap.usage(),
                    model: tap.model().map(str::to_owned),
                    ..TapSummary::default()
                };
                summary.billing = tap.take_billing();
                summary.error = tap
                    .error()
                    .map(|e| format!("stream error: {}: {}", e.kind, e.message));
                summary.stream_error = tap.error().cloned();
                summary
            }
            Tap::Json(tap) => {
                let json = tap.finish();
                TapSummary {
                    usage: json.usage,
                    model: json.model,
                    billing: json.billing,
                    error: json.error,
                    stream_error: None,
                }
            }
            Tap::None => TapSummary::default(),
        }
    }

    fn so_far(&self) -> TapSummary {
        match &self.0 {
            Tap::Sse(tap) => sse_summary(tap),
            // A JSON body is only read whole.
            _ => TapSummary::default(),
        }
    }
}

fn sse_summary(tap: &SseTap) -> TapSummary {
    TapSummary {
        usage: tap.usage(),
        model: tap.model().map(str::to_owned),
        billing: tap.billing().clone(),
        error: None,
        stream_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_beta_is_appended_once() {
        let mut headers = HeaderMap::new();
        add_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], OAUTH_BETA);
        add_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], OAUTH_BETA);

        let mut headers = HeaderMap::new();
        headers.append(
            "anthropic-beta",
            HeaderValue::from_static("prompt-caching-2024-07-31, foo"),
        );
        headers.append("anthropic-beta", HeaderValue::from_static("bar"));
        add_oauth_beta(&mut headers);
        assert_eq!(
            headers["anthropic-beta"],
            "prompt-caching-2024-07-31,foo,bar,oauth-2025-04-20"
        );
    }

    #[test]
    fn client_credentials_are_replaced() {
        let anthropic = Anthropic::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("client-key"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        anthropic.strip_client_credentials(&mut headers);
        anthropic.authorize(
            &mut headers,
            Mode::Console,
            HeaderValue::from_static("account-key"),
        );
        assert_eq!(headers["x-api-key"], "account-key");
        assert!(headers.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn paths_join_the_base_url() {
        let uri = |s: &'static str| Uri::from_static(s);
        let joined = |base, path| join(&uri(base), &uri(path)).unwrap().to_string();
        assert_eq!(
            joined("https://api.anthropic.com", "/v1/messages?beta=true"),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        assert_eq!(
            joined("http://127.0.0.1:9/prefix/", "/v1/messages"),
            "http://127.0.0.1:9/prefix/v1/messages"
        );
        assert!(join(&uri("/relative"), &uri("/v1/messages")).is_err());
    }
}

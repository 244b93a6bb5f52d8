//! The Anthropic provider. Cheap to clone; clones share the base URL setting.

pub(crate) mod classify;
mod headers;
mod oauth;
mod usage;

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use secrecy::SecretString;

pub(crate) use oauth::{DEFAULT_CLIENT_ID, DEFAULT_TOKEN_URL};
use usage::{JsonTap, SseTap};

use super::{
    Classification, InvalidUpstream, Provider, RefreshError, StreamError, TapSummary, TokenPair,
    UsageTap, join_uri,
};
use crate::BoxFuture;
use crate::account::{AccountEntry, AccountInfo, Credentials, Mode};
use crate::setting::Setting;

/// Anthropic's API.
pub(crate) const DEFAULT_UPSTREAM_URL: &str = "https://api.anthropic.com";
/// The beta flag subscription tokens need.
pub(crate) const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Header names as constants: a `&str` name is parsed and validated at every use.
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The Anthropic provider. Cheap to clone; clones share the base URL setting.
///
/// The Messages API, its rate-limit headers, error envelopes, SSE usage events and
/// OAuth refresh grant, as Anthropic serves them in December 2026 (`platform.claude.com` OAuth).
///
/// ```
/// use claudeflare_tower::Anthropic;
/// let anthropic = Anthropic::new()
///     .base_url(http::Uri::from_static("http://127.0.0.1:9000"))
///     .oauth("https://platform.claude.com/v1/oauth/token".parse().unwrap(), "my-client-id");
/// ```
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
    /// Anthropic's API.
    pub const DEFAULT_UPSTREAM_URL: &str = DEFAULT_UPSTREAM_URL;
    /// The beta flag subscription tokens need.
    pub const OAUTH_BETA: &str = OAUTH_BETA;
    /// The OAuth client id subscription tokens are refreshed as (Claude Code's).
    pub const DEFAULT_CLIENT_ID: &str = DEFAULT_CLIENT_ID;
    /// Where subscription tokens are refreshed.
    pub const DEFAULT_TOKEN_URL: &str = DEFAULT_TOKEN_URL;

    /// `https://api.anthropic.com`, refreshing tokens at [`Anthropic::DEFAULT_TOKEN_URL`] as Claude Code's
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

impl Anthropic {
    /// The account's credential as Anthropic takes it: a subscription's access token as a
    /// bearer, a key as it is. For calls of your own on the account's behalf (the usage
    /// endpoint).
    pub fn credential(account: &AccountEntry) -> Option<HeaderValue> {
        account.credential(|credentials| match credentials {
            Credentials::OAuth(_) => credentials.bearer(),
            Credentials::ApiKey(_) => credentials.plain(),
            Credentials::Aws(_) => None,
        })
    }
}

impl Provider for Anthropic {
    type Tap = AnthropicTap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        *req.uri_mut() = join_uri(&self.base.current(), req.uri())?;
        let headers = req.headers_mut();
        strip_client_credentials(headers);
        let credential = Self::credential(account).ok_or_else(|| {
            InvalidUpstream(format!(
                "account `{}` has no usable credential",
                account.name()
            ))
        })?;
        match account.mode() {
            Mode::Max => {
                headers.insert(header::AUTHORIZATION, credential);
                add_oauth_beta(headers);
            }
            _ => {
                headers.insert(X_API_KEY, credential);
            }
        }
        account.route().model_map.apply(req);
        Ok(())
    }

    fn needs_body(&self, _account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool {
        classify::needs_body(status) && is_json(headers)
    }

    fn classify(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        classify::classify(status, headers, body, now)
    }

    fn classify_stream_error(
        &self,
        _account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        classify::classify_stream_error(error, now)
    }

    fn tap(&self, _account: Option<&AccountEntry>, headers: &HeaderMap) -> AnthropicTap {
        AnthropicTap::for_headers(headers)
    }

    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(self.oauth.refresh(refresh_token, account.proxy.as_ref()))
    }
}

/// Take off whatever credential the client sent: it must never reach the upstream.
pub(crate) fn strip_client_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(X_API_KEY);
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The values of `anthropic-beta`, split at commas.
pub(crate) fn betas(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(&ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Append the OAuth beta flag to `anthropic-beta` unless the client already lists it.
fn add_oauth_beta(headers: &mut HeaderMap) {
    let values = betas(headers);
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

/// Take the OAuth beta flag out of `anthropic-beta` (a subscription's client sends it; a
/// backend other than Anthropic must not get it).
pub(crate) fn remove_oauth_beta(headers: &mut HeaderMap) {
    let values = betas(headers);
    if !values.contains(&OAUTH_BETA) {
        return;
    }
    let joined = values
        .into_iter()
        .filter(|v| *v != OAUTH_BETA)
        .collect::<Vec<_>>()
        .join(",");
    match HeaderValue::from_str(&joined) {
        Ok(value) if !joined.is_empty() => {
            headers.insert(ANTHROPIC_BETA, value);
        }
        _ => {
            headers.remove(ANTHROPIC_BETA);
        }
    }
}

/// Usage from an Anthropic answer: the SSE events of a stream (`message_start`, the last
/// `usage`, `event: error`), or a JSON body read at its end.
///
/// Hand-written rather than a general SSE parser because it runs over every streamed byte:
/// Criterion measures it at 5.5 GiB/s on a 5,000-event stream (`hot_paths`, docs/benchmarks-history.md).
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

impl AnthropicTap {
    /// A reader for an answer with these headers: SSE, JSON, or nothing to read.
    pub(crate) fn for_headers(headers: &HeaderMap) -> Self {
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
        let json = crate::error::claudeflare_envelope(kind, message);
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
        let account = AccountEntry::new(crate::Account::api_key("a", "account-key"));
        let mut req = Request::post("/v1/messages?beta=true")
            .header("x-api-key", "client-key")
            .header(header::AUTHORIZATION, "Bearer client")
            .body(Full::new(Bytes::new()))
            .unwrap();
        anthropic.prepare(&account, &mut req).unwrap();
        assert_eq!(req.headers()["x-api-key"], "account-key");
        assert!(req.headers().get(header::AUTHORIZATION).is_none());
        assert_eq!(
            req.uri().to_string(),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "anthropic-beta",
            HeaderValue::from_static("a, oauth-2025-04-20,b"),
        );
        remove_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], "a,b");
        headers.insert("anthropic-beta", HeaderValue::from_static(OAUTH_BETA));
        remove_oauth_beta(&mut headers);
        assert!(headers.get("anthropic-beta").is_none());
    }

    #[test]
    fn paths_join_the_base_url() {
        use crate::provider::join_uri;
        let uri = |s: &'static str| Uri::from_static(s);
        let joined = |base, path| join_uri(&uri(base), &uri(path)).unwrap().to_string();
        assert_eq!(
            joined("https://api.anthropic.com", "/v1/messages?beta=true"),
            "https://api.anthropic.com/v1/messages?beta=true"
        );
        assert_eq!(
            joined("http://127.0.0.1:9/prefix/", "/v1/messages"),
            "http://127.0.0.1:9/prefix/v1/messages"
        );
        assert!(join_uri(&uri("/relative"), &uri("/v1/messages")).is_err());
    }
}

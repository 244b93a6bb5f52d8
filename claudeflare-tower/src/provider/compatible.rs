//! Anthropic-compatible backends.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Full;
use secrecy::SecretString;

use super::anthropic::{self, AnthropicTap};
use super::{
    Backend, Classification, InvalidUpstream, Provider, RefreshError, StreamError, TokenPair,
    join_uri,
};
use crate::BoxFuture;
use crate::account::{AccountEntry, AccountInfo, Credentials};

/// The provider's name in the API and the CLI.
pub(crate) const NAME: &str = "anthropic-compatible";

/// The header a compatible backend takes its key in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthStyle {
    /// `x-api-key: KEY`, as Anthropic's API keys (the default).
    #[default]
    XApiKey,
    /// `authorization: Bearer KEY`.
    Bearer,
}

impl AuthStyle {
    /// The name used in the CLI and the API (`x-api-key`, `bearer`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStyle::XApiKey => "x-api-key",
            AuthStyle::Bearer => "bearer",
        }
    }
}

impl std::str::FromStr for AuthStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x-api-key" => Ok(AuthStyle::XApiKey),
            "bearer" => Ok(AuthStyle::Bearer),
            other => Err(format!(
                "invalid auth header `{other}`: expected one of x-api-key, bearer"
            )),
        }
    }
}

/// Anthropic-compatible backends.
///
/// A backend that speaks Anthropic's Messages API at its own base URL (z.ai's
/// GLM, Moonshot's Kimi, DeepSeek, MiniMax, OpenRouter's Anthropic endpoint), typically the
/// overflow when every subscription is limited.
///
/// Each account carries its base URL and header style in its [`Backend::Compatible`]. Its
/// requests keep Anthropic's shape (`anthropic-version`, the body), lose every Anthropic-only
/// credential header (the OAuth beta flag), and carry the account's key as `x-api-key` or as a
/// bearer. Responses are read by the rules any HTTP API follows ([`Classification::generic`]: a 429
/// benches the account until its `retry-after`, a 5xx is retried, a 401 refuses the key, a 403
/// the account), and their usage the way Anthropic's is, since they send the same events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compatible;

impl Compatible {
    /// The provider's name in the API, the CLI and records.
    pub const NAME: &str = NAME;
}

impl Provider for Compatible {
    type Tap = AnthropicTap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        let route = account.route();
        let Backend::Compatible { base_url, auth } = &route.backend else {
            return Err(InvalidUpstream(format!(
                "account `{}` is not an {NAME} account",
                account.name()
            )));
        };
        *req.uri_mut() = join_uri(base_url, req.uri())?;
        let headers = req.headers_mut();
        anthropic::strip_client_credentials(headers);
        anthropic::remove_oauth_beta(headers);
        let (name, credential) = match auth {
            AuthStyle::Bearer => (
                header::AUTHORIZATION,
                account.credential(Credentials::bearer),
            ),
            _ => (anthropic::X_API_KEY, account.credential(Credentials::plain)),
        };
        let credential = credential.ok_or_else(|| {
            InvalidUpstream(format!("account `{}` has no usable key", account.name()))
        })?;
        headers.insert(name, credential);
        route.model_map.apply(req);
        Ok(())
    }

    fn needs_body(&self, _account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool {
        status == StatusCode::FORBIDDEN && anthropic::is_json(headers)
    }

    fn classify(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        Classification::generic(status, headers, body, now)
    }

    fn classify_stream_error(
        &self,
        _account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        // They send Anthropic's error events (`overloaded_error`, `rate_limit_error`, …).
        anthropic::classify::classify_stream_error(error, now)
    }

    fn tap(&self, _account: Option<&AccountEntry>, headers: &HeaderMap) -> AnthropicTap {
        AnthropicTap::for_headers(headers)
    }

    fn refresh<'a>(
        &'a self,
        _account: &'a AccountInfo,
        _refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(async {
            Err(RefreshError::Rejected(format!(
                "an {NAME} account has a key, not a token to refresh"
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Account;
    use crate::provider::{ModelMap, Outcome};

    fn account(auth: AuthStyle) -> AccountEntry {
        AccountEntry::new(
            Account::api_key("glm", "zk-secret")
                .with_backend(Backend::Compatible {
                    base_url: "https://api.z.ai/api/anthropic".parse().unwrap(),
                    auth,
                })
                .with_model_map("claude-*=glm-4.6".parse::<ModelMap>().unwrap()),
        )
    }

    #[test]
    fn requests_go_to_the_base_url_with_the_key_in_its_header_and_no_oauth_beta() {
        let body = br#"{"model":"claude-opus-5","max_tokens":5}"#;
        let request = || {
            Request::post("/v1/messages?beta=true")
                .header("authorization", "Bearer client-token")
                .header(
                    "anthropic-beta",
                    "oauth-2025-04-20,interleaved-thinking-2025-05-14",
                )
                .header("content-length", body.len())
                .body(Full::new(Bytes::from_static(body)))
                .unwrap()
        };
        let mut req = request();
        Compatible
            .prepare(&account(AuthStyle::XApiKey), &mut req)
            .unwrap();
        assert_eq!(
            req.uri().to_string(),
            "https://api.z.ai/api/anthropic/v1/messages?beta=true"
        );
        assert_eq!(req.headers()["x-api-key"], "zk-secret");
        assert!(req.headers().get("authorization").is_none());
        assert_eq!(
            req.headers()["anthropic-beta"],
            "interleaved-thinking-2025-05-14"
        );
        let sent = crate::body::take_full(req.body_mut());
        assert_eq!(&sent[..], br#"{"max_tokens":5,"model":"glm-4.6"}"#);
        assert_eq!(req.headers()["content-length"], sent.len().to_string());

        let mut req = request();
        Compatible
            .prepare(&account(AuthStyle::Bearer), &mut req)
            .unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer zk-secret");
        assert!(req.headers().get("x-api-key").is_none());
    }

    #[test]
    fn generic_rules_read_its_answers() {
        let now = Utc::now();
        let account = account(AuthStyle::XApiKey);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "30".parse().unwrap());
        let seen =
            Compatible.classify(&account, StatusCode::TOO_MANY_REQUESTS, &headers, None, now);
        assert_eq!(
            seen.outcome,
            Outcome::RateLimited {
                until: now + chrono::TimeDelta::seconds(30)
            }
        );
        let none = HeaderMap::new();
        let outcome = |status: u16| {
            Compatible
                .classify(
                    &account,
                    StatusCode::from_u16(status).unwrap(),
                    &none,
                    None,
                    now,
                )
                .outcome
        };
        assert_eq!(outcome(401), Outcome::AuthFailed);
        assert_eq!(outcome(403), Outcome::Forbidden);
        assert_eq!(outcome(500), Outcome::ServerError);
        assert_eq!(outcome(400), Outcome::ClientError);
        assert_eq!(outcome(200), Outcome::Success);
    }
}

//! The OAuth refresh grant against Anthropic's token endpoint, through the control-plane client.

use chrono::{TimeDelta, Utc};
use http::{Uri, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::egress::EgressProxy;
use crate::provider::{RefreshError, TokenPair};

/// Anthropic's public OAuth client id, used by Claude Code.
pub(crate) const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Anthropic's token endpoint.
pub(crate) const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";

/// OAuth errors after which the same refresh token will never work again.
const DEFINITIVE: [&str; 4] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
];

/// A token endpoint and the OAuth client that uses it.
#[derive(Debug)]
pub(super) struct Endpoint {
    token_url: Uri,
    client_id: String,
}

impl Endpoint {
    pub(super) fn new(token_url: Uri, client_id: String) -> Self {
        Self {
            token_url,
            client_id,
        }
    }

    /// The JSON refresh grant; `Rejected` when the server says the token is dead.
    pub(super) async fn refresh(
        &self,
        refresh_token: &SecretString,
        proxy: Option<&EgressProxy>,
    ) -> Result<TokenPair, RefreshError> {
        let body = serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
            "client_id": self.client_id,
        });
        let exchange = async {
            let request = crate::control::client_via(proxy)?
                .post(self.token_url.to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(body.to_string());
            crate::control::exchange(request).await
        };
        let (status, _, bytes) = exchange.await.map_err(RefreshError::Temporary)?;
        if status.is_success() {
            let grant: Grant = serde_json::from_slice(&bytes).map_err(|e| {
                RefreshError::Temporary(format!("unreadable token response: {e}").into())
            })?;
            return Ok(TokenPair {
                access_token: grant.access_token.into(),
                refresh_token: grant.refresh_token.map(Into::into),
                expires_at: Utc::now() + TimeDelta::seconds(grant.expires_in.unwrap_or(8 * 3600)),
            });
        }
        let error: OAuthError = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = error.error.unwrap_or_default();
        let description = match error.error_description {
            Some(description) => format!("{status} {code}: {description}"),
            None => format!("{status} {code}"),
        };
        if status.is_client_error() && DEFINITIVE.contains(&code.as_str()) {
            Err(RefreshError::Rejected(description))
        } else {
            Err(RefreshError::Temporary(description.into()))
        }
    }
}

#[derive(Deserialize)]
struct Grant {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

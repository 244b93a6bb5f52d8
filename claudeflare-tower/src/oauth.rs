//! [`HttpRefresher`]: the OAuth refresh grant against Anthropic's token endpoint.

use chrono::{TimeDelta, Utc};
use http::{Uri, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::BoxFuture;
use crate::account::AccountInfo;
use crate::auth::{RefreshError, TokenPair, TokenRefresher};

/// Anthropic's public OAuth client id, used by Claude Code.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// Anthropic's token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";

/// OAuth errors after which the same refresh token will never work again.
const DEFINITIVE: [&str; 4] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
];

/// Refreshes tokens with the JSON refresh grant. Keeps new tokens in memory only: wrap it, or
/// implement [`TokenRefresher`] yourself, to store them.
#[derive(Debug, Clone)]
pub struct HttpRefresher {
    token_url: Uri,
    client_id: String,
}

impl HttpRefresher {
    /// Refresh at `token_url` as OAuth client `client_id`.
    pub fn new(token_url: Uri, client_id: impl Into<String>) -> Self {
        Self {
            token_url,
            client_id: client_id.into(),
        }
    }

    /// The refresh grant; `Rejected` when the server says the token is dead.
    pub async fn refresh_token(
        &self,
        refresh_token: &SecretString,
    ) -> Result<TokenPair, RefreshError> {
        let body = serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
            "client_id": self.client_id,
        });
        let exchange = async {
            let response = crate::control::client()?
                .post(self.token_url.to_string())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(crate::control::describe)?;
            crate::control::read(response).await
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

impl TokenRefresher for HttpRefresher {
    fn refresh<'a>(
        &'a self,
        _account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(self.refresh_token(refresh_token))
    }
}

//! Anthropic's OAuth: the PKCE authorization flow of `add` and `reauth`, the console API-key
//! creation, the subscription usage endpoint, and token refresh coordinated across processes.
//!
//! The HTTP calls go through reqwest ([`crate::control`]). The oauth2 crate builds the
//! PKCE authorize URL, but its token exchange is not used: it sends form-encoded grants, and
//! Anthropic's token endpoint takes JSON.

use std::time::Duration;

use crate::control;
use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use claudeflare_tower::{AccountInfo, BoxError, EgressProxy, OAuthTokens};
use claudeflare_tower::{Anthropic, Provider};
use claudeflare_tower::{RefreshError, TokenPair};
use http::{HeaderValue, Method, StatusCode, header};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::db::{DbError, accounts};
use crate::secrets::Cipher;
use crate::usage::Usage;

/// The scopes Claude Code 2.1 asks for (`user:inference` is the one inference needs).
const SCOPES: [&str; 6] = [
    "org:create_api_key",
    "user:profile",
    "user:inference",
    "user:sessions:claude_code",
    "user:mcp_servers",
    "user:file_upload",
];
/// How long one process may hold the refresh lease.
const LEASE: TimeDelta = TimeDelta::seconds(30);

/// What went wrong talking to Anthropic's OAuth endpoints.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// A URL of the configuration is not usable.
    #[error("{0} is not a valid URL")]
    Url(&'static str),
    /// The pasted text is not `CODE#STATE`.
    #[error("the authorization code must look like CODE#STATE (copy the whole code from the page)")]
    Malformed,
    /// The state does not match the one issued.
    #[error(
        "the pasted code belongs to another authorization attempt (its state does not match); start again"
    )]
    StateMismatch,
    /// The server refused.
    #[error("{what} failed: {detail}")]
    Refused {
        /// Which call.
        what: &'static str,
        /// Status and error.
        detail: String,
    },
    /// The endpoint asks to slow down (429).
    #[error("the usage endpoint asks to slow down (429)")]
    Throttled {
        /// Its `retry-after`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// No answer.
    #[error("{what} failed: {source}")]
    Network {
        /// Which call.
        what: &'static str,
        /// The error.
        source: BoxError,
    },
}

/// One authorization attempt: the URL to open, and what checks the answer.
pub struct Flow {
    /// Open this in a browser.
    pub url: String,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
}

/// Start a PKCE authorization for a subscription (`max`) or a console account.
pub fn start(config: &Config, max: bool) -> Result<Flow, OAuthError> {
    let authorize = if max {
        &config.oauth_authorize_url_max
    } else {
        &config.oauth_authorize_url_console
    };
    let client = BasicClient::new(ClientId::new(config.client_id.clone()))
        .set_auth_uri(
            AuthUrl::new(authorize.clone()).map_err(|_| OAuthError::Url("the authorize URL"))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(config.oauth_redirect_uri.clone())
                .map_err(|_| OAuthError::Url("oauth_redirect_uri"))?,
        );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_extra_param("code", "true")
        .add_scopes(SCOPES.iter().map(|s| Scope::new((*s).to_owned())))
        .set_pkce_challenge(challenge)
        .url();
    Ok(Flow {
        url: url.to_string(),
        state,
        verifier,
    })
}

#[derive(Deserialize)]
struct Grant {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

/// Exchange the pasted `CODE#STATE` for tokens (JSON body, as Anthropic's endpoint wants).
pub async fn exchange(
    config: &Config,
    flow: Flow,
    pasted: &str,
    proxy: Option<&EgressProxy>,
) -> Result<OAuthTokens, OAuthError> {
    let (code, state) = pasted.trim().split_once('#').ok_or(OAuthError::Malformed)?;
    if code.is_empty() {
        return Err(OAuthError::Malformed);
    }
    if state != flow.state.secret() {
        return Err(OAuthError::StateMismatch);
    }
    let body = json!({
        "grant_type": "authorization_code",
        "code": code,
        "state": state,
        "client_id": config.client_id,
        "redirect_uri": config.oauth_redirect_uri,
        "code_verifier": flow.verifier.secret(),
    });
    let what = "the token exchange";
    let (status, _, bytes) = send(
        what,
        Method::POST,
        &config.oauth_token_url,
        None,
        "application/json",
        body.to_string(),
        proxy,
    )
    .await?;
    if !status.is_success() {
        return Err(refused(what, status, &bytes));
    }
    let grant: Grant = serde_json::from_slice(&bytes).map_err(|e| OAuthError::Refused {
        what,
        detail: format!("unreadable answer: {e}"),
    })?;
    let refresh_token = grant.refresh_token.ok_or_else(|| OAuthError::Refused {
        what,
        detail: "no refresh token in the answer".into(),
    })?;
    Ok(OAuthTokens {
        access_token: grant.access_token.into(),
        refresh_token: refresh_token.into(),
        expires_at: Utc::now() + TimeDelta::seconds(grant.expires_in.unwrap_or(8 * 3600)),
    })
}

/// Create an API key for a console account authorized through OAuth.
pub async fn create_api_key(
    config: &Config,
    access_token: &SecretString,
    proxy: Option<&EgressProxy>,
) -> Result<SecretString, OAuthError> {
    #[derive(Deserialize)]
    struct Created {
        raw_key: String,
    }
    let what = "creating the API key";
    let bearer = format!("Bearer {}", access_token.expose_secret());
    let (status, _, bytes) = send(
        what,
        Method::POST,
        &config.create_api_key_url,
        Some(&bearer),
        "application/x-www-form-urlencoded",
        String::new(),
        proxy,
    )
    .await?;
    if !status.is_success() {
        return Err(refused(what, status, &bytes));
    }
    let created: Created = serde_json::from_slice(&bytes).map_err(|e| OAuthError::Refused {
        what,
        detail: format!("unreadable answer: {e}"),
    })?;
    Ok(created.raw_key.into())
}

/// Fetch subscription usage with the account's `authorization` header, in either shape of the
/// answer. A 429 (the endpoint limits pollers) is [`OAuthError::Throttled`].
pub async fn fetch_usage(
    config: &Config,
    authorization: &HeaderValue,
    proxy: Option<&EgressProxy>,
) -> Result<Usage, OAuthError> {
    let what = "fetching usage";
    let bearer = authorization.to_str().map_err(|_| OAuthError::Refused {
        what,
        detail: "unusable token".into(),
    })?;
    let (status, headers, bytes) = send(
        what,
        Method::GET,
        &config.oauth_usage_url,
        Some(bearer),
        "application/json",
        String::new(),
        proxy,
    )
    .await?;
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(OAuthError::Throttled { retry_after });
    }
    if !status.is_success() {
        return Err(refused(what, status, &bytes));
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| OAuthError::Refused {
            what,
            detail: format!("unreadable answer: {e}"),
        })?;
    Ok(Usage::from_answer(&answer, Utc::now()))
}

/// The status and OAuth error of a refusal, never its whole body (which could echo input).
fn refused(what: &'static str, status: StatusCode, bytes: &Bytes) -> OAuthError {
    #[derive(Deserialize, Default)]
    struct Body {
        error: Option<serde_json::Value>,
        error_description: Option<String>,
    }
    let body: Body = serde_json::from_slice(bytes).unwrap_or_default();
    let code = match body.error {
        Some(serde_json::Value::String(code)) => code,
        Some(serde_json::Value::Object(map)) => map
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    };
    let detail = [
        status.to_string(),
        code,
        body.error_description.unwrap_or_default(),
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join(": ");
    OAuthError::Refused { what, detail }
}

/// One control-plane call (reqwest, 30 s in all, at most 1 MiB read back).
#[allow(clippy::too_many_arguments)]
async fn send(
    what: &'static str,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: String,
    proxy: Option<&EgressProxy>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), OAuthError> {
    let network = |source| OAuthError::Network { what, source };
    let url: reqwest::Url = url.parse().map_err(|_| OAuthError::Url(what))?;
    let mut request = control::client_via(proxy)
        .map_err(network)?
        .request(method, url)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT, "application/json")
        .header("anthropic-beta", claudeflare_tower::Anthropic::OAUTH_BETA)
        .body(body);
    if let Some(authorization) = authorization {
        let mut value = HeaderValue::from_str(authorization).map_err(|e| network(e.into()))?;
        value.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, value);
    }
    control::exchange(request).await.map_err(network)
}

/// Refresh the tokens of account `id`, coordinated through the database with every other
/// process (servers, the CLI) using it:
///
/// - tokens someone else already rotated past `presented` are adopted, not refreshed again;
/// - only the holder of the refresh lease calls the token endpoint; the others wait for its
///   tokens;
/// - the rotated pair is stored before it is returned (and so before it is used);
/// - a rejected refresh token is only fatal if the database still holds that very token.
pub async fn coordinated_refresh(
    db: &DatabaseConnection,
    cipher: &Cipher,
    config: &Config,
    account: &AccountInfo,
    presented: &SecretString,
) -> Result<TokenPair, RefreshError> {
    let id = account.id.as_str();
    let temporary = |e: DbError| RefreshError::Temporary(e.into());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(45);
    // Tokens another process refreshed since `presented` was read, still good for a while.
    let refreshed_elsewhere = |stored: &OAuthTokens| {
        stored.refresh_token.expose_secret() != presented.expose_secret()
            && stored.expires_at > Utc::now() + TimeDelta::minutes(1)
    };
    loop {
        let stored = stored_tokens(db, cipher, id).await.map_err(temporary)?;
        if refreshed_elsewhere(&stored) {
            tracing::info!(account = id, "using tokens another process refreshed");
            return Ok(pair(stored));
        }
        let now = Utc::now();
        if accounts::take_refresh_lease(db, id, now, now + LEASE)
            .await
            .map_err(temporary)?
        {
            // Read again under the lease: another process may have refreshed between the read
            // above and taking the lease (it stored its tokens and let the lease go). Refreshing
            // with the token read before would present a rotated refresh token, which the
            // upstream refuses (and may take for a stolen one).
            let stored = stored_tokens(db, cipher, id).await.map_err(temporary)?;
            if refreshed_elsewhere(&stored) {
                let _ = accounts::release_refresh_lease(db, id).await;
                tracing::info!(account = id, "using tokens another process refreshed");
                return Ok(pair(stored));
            }
            let token_url = config
                .oauth_token_url
                .parse()
                .map_err(|e| RefreshError::Temporary(format!("oauth_token_url: {e}").into()))?;
            let anthropic = Anthropic::new().oauth(token_url, config.client_id.clone());
            let result = anthropic.refresh(account, &stored.refresh_token).await;
            return match result {
                Ok(new) => {
                    let tokens = OAuthTokens {
                        access_token: new.access_token,
                        refresh_token: new.refresh_token.unwrap_or(stored.refresh_token),
                        expires_at: new.expires_at,
                    };
                    accounts::save_tokens(db, cipher, id, &tokens)
                        .await
                        .map_err(temporary)?;
                    Ok(pair(tokens))
                }
                Err(error) => {
                    let _ = accounts::release_refresh_lease(db, id).await;
                    if let RefreshError::Rejected(reason) = &error {
                        // Lost a race we could not see? Then the database has a newer token.
                        let now_stored = stored_tokens(db, cipher, id).await.map_err(temporary)?;
                        if now_stored.refresh_token.expose_secret()
                            != stored.refresh_token.expose_secret()
                        {
                            return Ok(pair(now_stored));
                        }
                        // The token the database holds is dead: say so there at once, so the
                        // CLI, other processes and the next start all see it.
                        let reason = format!("the refresh token was rejected: {reason}");
                        if let Err(db_error) = accounts::mark_needs_reauth(db, id, &reason).await {
                            tracing::error!(error = %db_error, "could not store that the account needs re-authentication");
                        }
                    }
                    Err(error)
                }
            };
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RefreshError::Temporary(
                "another process holds the refresh lease".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn pair(tokens: OAuthTokens) -> TokenPair {
    TokenPair {
        access_token: tokens.access_token,
        refresh_token: Some(tokens.refresh_token),
        expires_at: tokens.expires_at,
    }
}

async fn stored_tokens(
    db: &DatabaseConnection,
    cipher: &Cipher,
    id: &str,
) -> Result<OAuthTokens, DbError> {
    let model = accounts::find(db, id).await?;
    match accounts::to_account(&model, cipher)?.credentials {
        claudeflare_tower::Credentials::OAuth(tokens) => Ok(tokens),
        _ => Err(DbError::Corrupt {
            account: model.name,
            what: "mode (not a subscription)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_pkce_and_a_random_state() {
        let config = Config::default();
        let flow = start(&config, true).unwrap();
        let url = oauth2::url::Url::parse(&flow.url).unwrap();
        assert!(
            flow.url
                .starts_with("https://claude.com/cai/oauth/authorize?"),
            "{}",
            flow.url
        );
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["code"], "true");
        assert_eq!(query["client_id"], config.client_id);
        assert_eq!(query["response_type"], "code");
        assert_eq!(query["redirect_uri"], config.oauth_redirect_uri);
        assert_eq!(
            query["scope"],
            "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"
        );
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["state"], *flow.state.secret());
        assert_ne!(
            query["state"],
            *flow.verifier.secret(),
            "the state is not the verifier"
        );
        let other = start(&config, false).unwrap();
        assert!(
            other
                .url
                .starts_with("https://platform.claude.com/oauth/authorize?")
        );
        assert_ne!(other.state.secret(), flow.state.secret());
    }

    #[tokio::test]
    async fn a_foreign_or_malformed_code_is_refused_before_any_request() {
        let config = Config::default();
        let flow = start(&config, true).unwrap();
        assert!(matches!(
            exchange(&config, flow, "code#not-the-state", None).await,
            Err(OAuthError::StateMismatch)
        ));
        let flow = start(&config, true).unwrap();
        assert!(matches!(
            exchange(&config, flow, "no-hash-here", None).await,
            Err(OAuthError::Malformed)
        ));
    }
}

//! Claude on Google Vertex AI.

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::anthropic;
use super::cloud::{self, CloudError, CloudTap};
use super::{
    Backend, Classification, InvalidUpstream, ModelMap, Outcome, Provider, RefreshError,
    StreamError, TokenPair, join_uri,
};
use crate::BoxFuture;
use crate::account::{AccountEntry, AccountInfo, Credentials};

/// The provider's name in the API and the CLI.
pub(crate) const NAME: &str = "vertex";

/// The `anthropic_version` Vertex wants in the body.
pub(crate) const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// The OAuth scope of the access token.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long the grant's assertion is valid (Google takes at most an hour).
const ASSERTION_LIFETIME: TimeDelta = TimeDelta::hours(1);

/// Claude on Google Vertex AI.
///
/// Claude on Google Vertex AI, at
/// `{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict`
/// (`:streamRawPredict` for a stream), answering Anthropic's JSON and SSE.
///
/// Each account carries its project, region and base URL in its [`Backend::Vertex`] (by default
/// `https://{region}-aiplatform.googleapis.com`, `https://aiplatform.googleapis.com` for
/// `global`, `https://aiplatform.{us,eu}.rep.googleapis.com` for the multi-regions), and as
/// its credential an access token with the service account's key as what gets the next one
/// ([`Credentials::OAuth`](crate::Credentials::OAuth): the key in place of a refresh token).
/// The token comes from the JWT-bearer grant (RFC 7523) at the key's `token_uri`, refreshed
/// ahead of its expiry, one grant per account at a time (the `Auth` layer's single flight),
/// through the account's egress proxy.
///
/// Requests lose `model` from the body (it is in the URL, as Vertex's id: the account's
/// [`ModelMap`] target, or else the Anthropic id with its date after `@`,
/// `claude-sonnet-4-5@20250929`), gain `anthropic_version: "vertex-2023-10-16"`, and lose the
/// `tags` field and its beta, which Vertex refuses; the other betas stay in `anthropic-beta`.
/// `/v1/messages/count_tokens` goes to Vertex's `count-tokens` model, the model in the body.
///
/// Errors are Google's (`{"error": {"status", "message"}}`, sometimes in a list) or Claude's
/// own envelope: quota exhaustion benches the account (for the `retry-after` when there is one,
/// else [`DEFAULT_COOLDOWN`](super::DEFAULT_COOLDOWN)), permission denied takes it out of
/// rotation with Google's words, an expired token is refreshed, and a model the region does not
/// offer is refused for that request only. The client gets Anthropic's envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vertex;

impl Vertex {
    /// The provider's name in the API, the CLI and records.
    pub const NAME: &str = NAME;
    /// The `anthropic_version` Vertex's Claude models take in the body.
    pub const ANTHROPIC_VERSION: &str = ANTHROPIC_VERSION;
    /// The OAuth scope a service account's token is asked for.
    pub const SCOPE: &str = SCOPE;

    /// Check that `key` (a service account's key file) can be used: the fields the grant
    /// needs, a readable RSA key, and a `token_uri` that is https (or http on loopback).
    /// Returns the account's email.
    pub fn check_service_account(key: &str) -> Result<String, String> {
        let key: ServiceAccountKey = serde_json::from_str(key).map_err(|e| {
            format!("not a service account key file (client_email, private_key, token_uri): {e}")
        })?;
        jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|_| "its private_key is not an RSA key in PEM".to_owned())?;
        token_uri(&key.token_uri)?;
        Ok(key.client_email)
    }

    /// The model id Vertex gets for the Anthropic id `model`: the map's target, else `model`
    /// with a trailing date after `@` (`claude-sonnet-4-5-20250929` becomes
    /// `claude-sonnet-4-5@20250929`; `claude-opus-4-7` stays). `None` when the map does not
    /// serve it.
    pub fn model_id(map: &ModelMap, model: &str) -> Option<String> {
        if !map.is_empty() {
            return map.target(model).map(str::to_owned);
        }
        let dated = model.rsplit_once('-').filter(|(_, date)| {
            date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) && !model.contains('@')
        });
        Some(match dated {
            Some((name, date)) => format!("{name}@{date}"),
            None => model.to_owned(),
        })
    }
}

/// Whether `id` can stand in a URL path as it is.
fn path_safe(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'@'))
}

impl Provider for Vertex {
    type Tap = CloudTap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        let route = account.route();
        let Backend::Vertex {
            project,
            region,
            base_url,
        } = &route.backend
        else {
            return Err(InvalidUpstream(format!(
                "account `{}` is not a {NAME} account",
                account.name()
            )));
        };
        let counting = match req.uri().path() {
            "/v1/messages" => false,
            "/v1/messages/count_tokens" => true,
            path => {
                return Err(InvalidUpstream(format!(
                    "{NAME} serves /v1/messages, not {path}"
                )));
            }
        };
        let headers = req.headers_mut();
        anthropic::strip_client_credentials(headers);
        let betas = cloud::take_betas(headers);
        if let Ok(value) = HeaderValue::from_str(&betas.join(",")) {
            if !betas.is_empty() {
                headers.insert(anthropic::ANTHROPIC_BETA, value);
            }
        }
        let mut target = None;
        cloud::rewrite_body(req, |body| {
            let model = body
                .str("model")
                .ok_or_else(|| InvalidUpstream(format!("{NAME} needs the request's model")))?;
            let id = Vertex::model_id(&route.model_map, &model)
                .filter(|id| path_safe(id))
                .ok_or_else(|| {
                    InvalidUpstream(format!(
                        "account `{}` does not serve {model}",
                        account.name()
                    ))
                })?;
            let stream = body.is_true("stream");
            body.remove("tags");
            if counting {
                body.set("model", &id);
            } else {
                body.remove("model");
                body.set("anthropic_version", ANTHROPIC_VERSION);
            }
            target = Some((id, stream));
            Ok(())
        })?;
        let Some((id, stream)) = target else {
            return Err(InvalidUpstream(format!(
                "{NAME} needs a JSON request with its model"
            )));
        };
        let (model, method) = match (counting, stream) {
            (true, _) => ("count-tokens", "rawPredict"),
            (false, true) => (id.as_str(), "streamRawPredict"),
            (false, false) => (id.as_str(), "rawPredict"),
        };
        let path: Uri = format!(
            "/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:{method}"
        )
        .parse()
        .map_err(|e: http::uri::InvalidUri| InvalidUpstream(e.to_string()))?;
        *req.uri_mut() = join_uri(base_url, &path)?;
        let credential = account.credential(Credentials::bearer).ok_or_else(|| {
            InvalidUpstream(format!("account `{}` has no usable token", account.name()))
        })?;
        req.headers_mut().insert(header::AUTHORIZATION, credential);
        Ok(())
    }

    fn needs_body(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        _headers: &HeaderMap,
    ) -> bool {
        status.is_client_error() || status.is_server_error()
    }

    fn classify(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        if !cloud::is_error(status) {
            return Classification::new(Outcome::Success);
        }
        let error = CloudError::read(headers, body);
        let outcome = match (status.as_u16(), error.kind.as_str()) {
            (429, _) | (_, "RESOURCE_EXHAUSTED" | "rate_limit_error") => {
                return cloud::throttled(headers, now);
            }
            (401, _) | (_, "UNAUTHENTICATED" | "authentication_error") => Outcome::AuthFailed,
            (403, _) | (_, "PERMISSION_DENIED" | "permission_error") => {
                return cloud::forbidden(error.reason(NAME, status));
            }
            // A model the region does not offer, or the project may not use: another account
            // may serve it.
            (404, _) | (400, "FAILED_PRECONDITION") => Outcome::ScopedRefusal,
            (503 | 529, _) | (_, "UNAVAILABLE" | "overloaded_error") => Outcome::Overloaded,
            (500..=599, _) => Outcome::ServerError,
            _ => Outcome::ClientError,
        };
        Classification::new(outcome)
    }

    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes> {
        let error = CloudError::read(headers, Some(body));
        // "The request size (30037042 bytes) exceeds 30.000MB limit." (or "The message size …")
        let too_long = status == StatusCode::BAD_REQUEST
            && !error.anthropic
            && (error.message.starts_with("The request size")
                || error.message.starts_with("The message size"))
            && error.message.contains("exceeds");
        cloud::client_error(NAME, account.name(), status, &error, too_long)
    }

    fn classify_stream_error(
        &self,
        _account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        anthropic::classify::classify_stream_error(error, now)
    }

    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> CloudTap {
        let region =
            account.and_then(|account| account.route().backend.region().map(str::to_owned));
        CloudTap::new(headers, region, |_, region| region.to_owned())
    }

    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(grant(refresh_token, account.proxy.as_ref()))
    }
}

/// The fields of a service account's key file that the grant uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

fn token_uri(uri: &str) -> Result<Uri, String> {
    let parsed: Uri = uri
        .parse()
        .map_err(|_| format!("its token_uri `{uri}` is not a URL"))?;
    let loopback = parsed.host().is_some_and(|host| {
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme_str() {
        Some("https") => Ok(parsed),
        Some("http") if loopback => Ok(parsed),
        _ => Err(format!(
            "its token_uri `{uri}` must be https (or http on loopback)"
        )),
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Deserialize, Default)]
struct GrantError {
    error: Option<String>,
    error_description: Option<String>,
}

/// The JWT-bearer grant: an assertion signed with the key, exchanged at its `token_uri` for an
/// access token.
async fn grant(
    key: &SecretString,
    proxy: Option<&crate::EgressProxy>,
) -> Result<TokenPair, RefreshError> {
    let key: ServiceAccountKey = serde_json::from_str(key.expose_secret()).map_err(|e| {
        RefreshError::Rejected(format!("the service account key is unreadable: {e}"))
    })?;
    let uri = token_uri(&key.token_uri).map_err(RefreshError::Rejected)?;
    let now = Utc::now();
    let claims = Claims {
        iss: &key.client_email,
        scope: SCOPE,
        aud: &key.token_uri,
        iat: now.timestamp(),
        exp: (now + ASSERTION_LIFETIME).timestamp(),
    };
    let mut jwt_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jwt_header.kid.clone_from(&key.private_key_id);
    let signing_key =
        jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes()).map_err(|_| {
            RefreshError::Rejected("the service account's private key is not an RSA key".into())
        })?;
    let assertion = jsonwebtoken::encode(&jwt_header, &claims, &signing_key)
        .map_err(|e| RefreshError::Rejected(format!("could not sign the grant: {e}")))?;
    let exchange = async {
        let request = crate::control::client_via(proxy)?
            .post(uri.to_string())
            .header(header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ]);
        crate::control::exchange(request).await
    };
    let (status, _, bytes) = exchange.await.map_err(RefreshError::Temporary)?;
    if status.is_success() {
        let granted: Granted = serde_json::from_slice(&bytes).map_err(|e| {
            RefreshError::Temporary(format!("unreadable token response: {e}").into())
        })?;
        return Ok(TokenPair {
            access_token: granted.access_token.into(),
            refresh_token: None,
            expires_at: Utc::now() + TimeDelta::seconds(granted.expires_in.unwrap_or(3600)),
        });
    }
    let error: GrantError = serde_json::from_slice(&bytes).unwrap_or_default();
    let description = format!(
        "{status} {}{}",
        error.error.as_deref().unwrap_or_default(),
        error
            .error_description
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        // `invalid_grant` (a deleted key, a disabled account) and the like: a new key is needed.
        Err(RefreshError::Rejected(format!(
            "Google refused the service account {}: {description}",
            key.client_email
        )))
    } else {
        Err(RefreshError::Temporary(description.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_take_vertexs_dated_form() {
        let none = ModelMap::default();
        assert_eq!(
            Vertex::model_id(&none, "claude-sonnet-4-5-20250929").as_deref(),
            Some("claude-sonnet-4-5@20250929")
        );
        assert_eq!(
            Vertex::model_id(&none, "claude-opus-4-7").as_deref(),
            Some("claude-opus-4-7")
        );
        let map: ModelMap = "claude-opus-*=claude-opus-4-7".parse().unwrap();
        assert_eq!(
            Vertex::model_id(&map, "claude-opus-5").as_deref(),
            Some("claude-opus-4-7")
        );
        assert_eq!(Vertex::model_id(&map, "claude-haiku-4-5"), None);
        assert!(!path_safe("claude/../../x"));
    }

    #[test]
    fn token_uris_must_be_https_or_loopback() {
        assert!(token_uri("https://oauth2.googleapis.com/token").is_ok());
        assert!(token_uri("http://127.0.0.1:9/token").is_ok());
        assert!(token_uri("http://example.com/token").is_err());
    }
}

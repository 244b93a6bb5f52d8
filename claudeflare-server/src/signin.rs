//! Sign-in from Claude Code's `/login`, as its gateway protocol says (RFC 8414 discovery, the
//! RFC 8628 device flow, RFC 7009 revocation), and its managed settings.
//!
//! - `GET /.well-known/oauth-authorization-server`: where the endpoints below are.
//! - `POST /oauth/device_authorization`: a device code (256 random bits, single use) and a
//!   base-20 user code, for 10 minutes.
//! - `GET`/`POST /device`: the page where the person types the user code and signs in with their
//!   own client key, which approves the sign-in for that key. It never submits a code by
//!   itself, may not be framed, and takes a few tries a minute per address.
//! - `POST /oauth/token`: the device grant (`authorization_pending`, `slow_down`,
//!   `expired_token`, `access_denied`), then the refresh grant (`invalid_grant` once the
//!   sign-in or its key is revoked).
//! - `POST /oauth/revoke`: sign-out.
//! - `GET /managed/settings`: the config's `managed_settings` for the caller's key.
//!
//! Every form field these do not know is ignored, as OAuth servers must: a Claude Code release
//! may send new ones. The bearer a sign-in gets acts as its client key everywhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use chrono::{TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::{Markup, html};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::gateway::CallerKey;
use crate::db::signin::{self, Poll};
use crate::state::AppState;

/// The grant type of RFC 8628.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The base URL the client reached us at: its `Host`, over https when the server terminates TLS
/// itself or a proxy in front says so.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let https = state.config.get().tls_cert.is_some()
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn discovery(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    json_answer(
        StatusCode::OK,
        &json!({
            "issuer": base,
            "device_authorization_endpoint": format!("{base}/oauth/device_authorization"),
            "token_endpoint": format!("{base}/oauth/token"),
            "revocation_endpoint": format!("{base}/oauth/revoke"),
            "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["none"],
        }),
    )
}

/// A JSON answer the client must not cache.
fn json_answer(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body.clone())).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An OAuth error (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_answer(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// `POST /oauth/device_authorization` (RFC 8628 §3.1–3.2).
pub async fn device_authorization(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let surface = form.get("surface").map(String::as_str);
    match signin::start(&state.db, user_agent, surface).await {
        Ok(started) => {
            let base = base_url(&state, &headers);
            json_answer(
                StatusCode::OK,
                &json!({
                    "device_code": started.device_code,
                    "user_code": started.user_code,
                    "verification_uri": format!("{base}/device"),
                    "verification_uri_complete": format!("{base}/device?user_code={}", started.user_code),
                    "expires_in": started.expires_in,
                    "interval": started.interval,
                    "login_notice": "Sign in on that page with your claudeflare client key.",
                }),
            )
        }
        Err(error) => {
            tracing::error!(%error, "could not start a sign-in");
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the sign-in could not be stored; try again",
            )
        }
    }
}

/// `POST /oauth/token`: the device grant and the refresh grant.
pub async fn token(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let config = state.config.get();
    let lifetime = |seconds: u64| TimeDelta::seconds(i64::try_from(seconds).unwrap_or(i64::MAX));
    let access = lifetime(config.access_token_lifetime_seconds);
    let refresh = lifetime(config.refresh_token_lifetime_seconds);
    let unavailable = |error: crate::db::DbError| {
        tracing::error!(%error, "a token request could not be answered");
        oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try again in a moment",
        )
    };
    let issued = match form.get("grant_type").map(String::as_str) {
        Some(DEVICE_GRANT) => {
            let Some(device_code) = form.get("device_code") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "device_code is required",
                );
            };
            let key = match signin::poll(&state.db, device_code, Utc::now()).await {
                Ok(Poll::Approved(key)) => key,
                Ok(Poll::Pending) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "authorization_pending",
                        "waiting for the sign-in on the verification page",
                    );
                }
                Ok(Poll::SlowDown) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "slow_down",
                        "polled sooner than the interval",
                    );
                }
                Ok(Poll::Denied) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "access_denied",
                        "the sign-in was refused",
                    );
                }
                Ok(Poll::Expired) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "expired_token",
                        "the code expired; sign in again",
                    );
                }
                Ok(Poll::Invalid) => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "unknown or used device code",
                    );
                }
                Err(error) => return unavailable(error),
            };
            signin::issue(&state.db, &key, None, access, refresh)
                .await
                .map(Some)
        }
        Some("refresh_token") => {
            let Some(presented) = form.get("refresh_token") else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                );
            };
            signin::refresh(&state.db, presented, access, refresh).await
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use the device_code or refresh_token grant",
            );
        }
    };
    let ended = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "the sign-in ended (signed out, expired, or its key was revoked); run /login again",
        )
    };
    let tokens = match issued {
        Ok(Some(tokens)) => tokens,
        Ok(None) => return ended(),
        Err(error) => return unavailable(error),
    };
    // A key revoked meanwhile takes its sign-ins with it: this is the deprovisioning hook.
    let Some(key) = state.access.key_named(&tokens.key_name) else {
        if let Err(error) = signin::revoke(&state.db, &tokens.refresh_token).await {
            tracing::warn!(%error, "could not delete the tokens of a revoked key");
        }
        return ended();
    };
    state.access.add_bearer(
        &tokens.access_token,
        &tokens.key_name,
        tokens.access_expires_at,
    );
    let mut body = json!({
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "refresh_token": tokens.refresh_token,
    });
    if let Some(email) = &key.email {
        body["email"] = json!(email);
    }
    json_answer(StatusCode::OK, &body)
}

/// `POST /oauth/revoke` (RFC 7009): the token ends; an unknown one is no error.
pub async fn revoke(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(token) = form.get("token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is required",
        );
    };
    state.access.remove_bearer(token);
    match signin::revoke(&state.db, token).await {
        Ok(()) => json_answer(StatusCode::OK, &json!({})),
        Err(error) => {
            tracing::error!(%error, "could not revoke a token");
            oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again in a moment",
            )
        }
    }
}

/// Tries of the verification page per address and minute.
const DEVICE_TRIES_PER_MINUTE: u32 = 10;

/// Tries of the verification page, per address, this minute (RFC 8628 §5.1: the user code is
/// short, so guessing must be slow).
#[derive(Default)]
pub struct DeviceTries(Mutex<HashMap<IpAddr, (i64, u32)>>);

impl DeviceTries {
    /// Count a try from `ip`; `false` past the limit.
    fn allow(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return true;
        };
        let minute = Utc::now().timestamp() / 60;
        let mut tries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        tries.retain(|_, (at, _)| *at == minute);
        let entry = tries.entry(ip).or_insert((minute, 0));
        entry.1 += 1;
        entry.1 <= DEVICE_TRIES_PER_MINUTE
    }
}

/// The verification page: the code field (filled in from the link, never sent by itself), the
/// key field, and `message` above them.
fn device_page(user_code: &str, message: Option<(&str, bool)>) -> Markup {
    crate::dashboard::login::form_page(
        "sign in Claude Code",
        html! {
                h1 { "Sign in Claude Code" }
                @match message {
                    Some((text, true)) => p.ok role="status" { (text) },
                    Some((text, false)) => p.error role="alert" { (text) },
                    None => p { "Check that the code below is the one Claude Code shows, then sign in with your claudeflare client key." },
                }
                form method="post" action="/device" {
                    label for="user_code" { "Code shown by Claude Code" }
                    input id="user_code" name="user_code" value=(user_code) autocomplete="off" required;
                    label for="key" { "Your client key" }
                    input id="key" name="key" type="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
        },
    )
}

/// A page that may not be framed.
fn page(status: StatusCode, markup: &Markup) -> Response {
    let mut response = (status, Html(markup.clone().into_string())).into_response();
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'; form-action 'self'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /device[?user_code=…]`.
pub async fn show_device(Query(query): Query<HashMap<String, String>>) -> Response {
    let code = query
        .get("user_code")
        .map(|c| signin::normalize_user_code(c))
        .unwrap_or_default();
    page(StatusCode::OK, &device_page(&code, None))
}

/// `POST /device`: approve the sign-in of the code for the key typed.
pub async fn approve_device(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form
        .get("user_code")
        .map(|c| signin::normalize_user_code(c))
        .unwrap_or_default();
    let refused = |status, text: &str| page(status, &device_page(&code, Some((text, false))));
    if !state.device_tries.allow(peer.map(|p| p.0.0.ip())) {
        return refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many tries from this address; wait a minute.",
        );
    }
    let typed_key = form.get("key").map(|k| k.trim()).unwrap_or_default();
    let Some(key) = state
        .access
        .find(typed_key)
        .filter(|_| !typed_key.is_empty())
    else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "That is not a client key of this server.",
        );
    };
    match signin::decide(&state.db, &code, Some(&key.name)).await {
        Ok(true) => {
            tracing::info!(key = %key.name, "a Claude Code sign-in was approved");
            let done = format!(
                "Signed in as the key “{}”. You can close this page and go back to Claude Code.",
                key.name
            );
            page(StatusCode::OK, &device_page("", Some((&done, true))))
        }
        Ok(false) => refused(
            StatusCode::BAD_REQUEST,
            "No sign-in is waiting for that code (it may have expired: run /login again).",
        ),
        Err(error) => {
            tracing::error!(%error, "could not approve a sign-in");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in could not be stored; try again in a moment.",
            )
        }
    }
}

/// The checksum of Claude Code's managed settings: `sha256:` and the hex SHA-256 of the JSON
/// with keys sorted at every level and no whitespace.
pub fn settings_checksum(settings: &Value) -> String {
    // serde_json's maps are sorted (no `preserve_order`), and `to_string` writes no whitespace.
    let canonical = serde_json::to_string(settings).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `GET /managed/settings`: the caller's key's policy (`managed_settings.keys.NAME`, else
/// `managed_settings.default`) in the protocol's wrapper, with its checksum as `ETag`; `304`
/// only to a matching `If-None-Match`; `404` when there is no policy.
pub async fn managed_settings(
    State(state): State<AppState>,
    caller: Option<axum::Extension<CallerKey>>,
    headers: HeaderMap,
) -> Response {
    let config = state.config.get();
    let policy = config.managed_settings.as_ref().and_then(|all| {
        caller
            .as_ref()
            .and_then(|key| all.pointer(&format!("/keys/{}", pointer_escape(&key.0.0.name))))
            .or_else(|| all.get("default"))
            .filter(|settings| !settings.is_null())
            .cloned()
    });
    let Some(settings) = policy else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no managed policy"})),
        )
            .into_response();
    };
    let checksum = settings_checksum(&settings);
    let etag = format!("\"{checksum}\"");
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag);
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        // A stable id of this policy: the first 128 bits of its checksum.
        let digest = Sha256::digest(checksum.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let uuid = uuid::Uuid::from_bytes(bytes);
        axum::Json(json!({"uuid": uuid.to_string(), "checksum": checksum, "settings": settings}))
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// A key name as one step of a JSON pointer (RFC 6901).
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_over_sorted_keys_without_whitespace() {
        let settings =
            json!({"permissions": {"deny": ["Bash(rm:*)"]}, "env": {"B": "2", "A": "1"}});
        let canonical = r#"{"env":{"A":"1","B":"2"},"permissions":{"deny":["Bash(rm:*)"]}}"#;
        let expected = format!("sha256:{:x}", Sha256::digest(canonical.as_bytes()));
        assert_eq!(settings_checksum(&settings), expected);
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
    }
}

/// `GET /api/signins` (admin): the sign-ins waiting for an approval.
pub async fn pending_signins(
    State(state): State<AppState>,
) -> Result<axum::Json<Value>, crate::api::ApiError> {
    let waiting = signin::all_pending(&state.db).await?;
    let list: Vec<Value> = waiting
        .iter()
        .map(|s| {
            json!({
                "user_code": s.user_code,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
                "user_agent": s.user_agent,
                "surface": s.surface,
            })
        })
        .collect();
    Ok(axum::Json(json!(list)))
}

/// The body of `POST /api/signins/{code}/approve`: an existing key, or the name of a new one.
#[derive(serde::Deserialize)]
pub struct ApproveBody {
    key: Option<String>,
    new_key: Option<String>,
}

/// `POST /api/signins/{code}/approve` (admin): approve a waiting sign-in for `{"key": NAME}`,
/// or for a new key `{"new_key": NAME}` made for it (its secret is never shown: the sign-in is
/// its only way in).
pub async fn approve_signin(
    State(state): State<AppState>,
    crate::api::extract::ApiPath(code): crate::api::extract::ApiPath<String>,
    crate::api::extract::JsonObject(body): crate::api::extract::JsonObject<ApproveBody>,
) -> Result<axum::Json<Value>, crate::api::ApiError> {
    use crate::api::ApiError;
    let name = match (body.key, body.new_key) {
        (Some(key), None) => {
            if state.access.key_named(&key).is_none() {
                return Err(ApiError::NotFound(format!("no client key named `{key}`")));
            }
            key
        }
        (None, Some(name)) => {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(ApiError::BadRequest(
                    "a key needs a name of visible characters".into(),
                ));
            }
            crate::db::keys::create(
                &state.db,
                &name,
                false,
                crate::db::keys::Limits::default(),
                &[],
                &[],
                None,
            )
            .await?;
            // Known here at once, so the client's next poll gets its tokens.
            state.access.load(&state.db).await?;
            name
        }
        _ => {
            return Err(ApiError::BadRequest(
                "send {\"key\": NAME} or {\"new_key\": NAME}".into(),
            ));
        }
    };
    if !signin::decide(&state.db, &code, Some(&name)).await? {
        return Err(ApiError::NotFound(format!(
            "no sign-in waits for the code {code}"
        )));
    }
    tracing::info!(key = %name, "a Claude Code sign-in was approved on the dashboard");
    Ok(axum::Json(json!({"user_code": code, "key": name})))
}

/// `POST /api/signins/{code}/deny` (admin): the client's next poll gets `access_denied`.
pub async fn deny_signin(
    State(state): State<AppState>,
    crate::api::extract::ApiPath(code): crate::api::extract::ApiPath<String>,
) -> Result<axum::Json<Value>, crate::api::ApiError> {
    if !signin::decide(&state.db, &code, None).await? {
        return Err(crate::api::ApiError::NotFound(format!(
            "no sign-in waits for the code {code}"
        )));
    }
    Ok(axum::Json(json!({"user_code": code, "denied": true})))
}

//! What Claude Code's gateway protocol asks of a gateway beyond the proxy: the model list of a
//! key that may use only some models, a key's own spend (`GET /api/oauth/usage`), and a place
//! for Claude Code's telemetry (`POST /v1/metrics`, `/v1/logs`, `/v1/traces`).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, TimeDelta, Utc};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::access::ClientKey;
use crate::budget;
use crate::db::keys;
use crate::state::AppState;

/// The models a request may ask for (a key's `--models`, else the config file's `models`), put
/// in the request by the access rules.
#[derive(Debug, Clone)]
pub struct AllowedModels(pub Arc<[String]>);

/// The client key a request came with, put in the request by the access rules.
#[derive(Debug, Clone)]
pub struct CallerKey(pub Arc<ClientKey>);

/// The signals of OpenTelemetry's protocol over HTTP.
pub const TELEMETRY: [&str; 3] = ["/v1/metrics", "/v1/logs", "/v1/traces"];

/// `GET /v1/models` for a request limited to some models: those, in Anthropic's shape, without
/// asking the upstream.
pub async fn models(Extension(AllowedModels(models)): Extension<AllowedModels>) -> Response {
    let data: Vec<Value> = models
        .iter()
        .map(|id| {
            json!({
                "type": "model",
                "id": id,
                "display_name": display_name(id),
                "created_at": "1970-01-01T00:00:00Z",
            })
        })
        .collect();
    axum::Json(json!({
        "data": data,
        "has_more": false,
        "first_id": models.first(),
        "last_id": models.last(),
    }))
    .into_response()
}

/// `Claude Opus 5.5` for `claude-opus-5-5` (a date and `-latest` left out).
fn display_name(id: &str) -> String {
    let mut words = Vec::new();
    let mut version = Vec::new();
    for part in id.split('-') {
        if part.len() == 8 && part.bytes().all(|b| b.is_ascii_digit()) || part == "latest" {
            continue;
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            version.push(part);
            continue;
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            words.push(first.to_uppercase().chain(chars).collect::<String>());
        }
    }
    if !version.is_empty() {
        words.push(version.join("."));
    }
    words.join(" ")
}

/// `GET /api/oauth/usage` with a client key: that key's spend, in the protocol's shape (what
/// Claude Code adds to `/usage` and its status line).
pub async fn usage(State(state): State<AppState>, key: Option<Extension<CallerKey>>) -> Response {
    let Some(Extension(CallerKey(key))) = key else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no client key: there is no per-user usage to report"})),
        )
            .into_response();
    };
    let now = Utc::now();
    let day = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let week = day - TimeDelta::days(i64::from(now.weekday().num_days_from_monday()));
    let mut spent = [state.access.spent_by(&key.name), 0.0, 0.0];
    for (slot, since) in [(1, day), (2, week)] {
        match keys::usage_since(&state.db, since).await {
            Ok(rows) => {
                spent[slot] = rows
                    .into_iter()
                    .find(|(name, _, _)| **name == *key.name)
                    .map_or(0.0, |(_, _, cost)| cost);
            }
            Err(error) => return crate::api::error::ApiError::from(error).into_response(),
        }
    }
    let body = budget::usage_json(state.access.standing(&key), spent);
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// One client for every forwarded export (its connections are kept).
fn collector() -> &'static reqwest::Client {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default()
    });
    &CLIENT
}

/// `POST /v1/metrics`, `/v1/logs`, `/v1/traces`: 200 always (a 404 makes Claude Code's
/// exporter log an error on every flush). Forwarded to `otlp_endpoint` when it is set, without
/// the client's credential (its own headers are not sent on), and dropped otherwise.
pub async fn telemetry(
    State(state): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf")
        .to_owned();
    if let Some(endpoint) = state.config.get().otlp_endpoint.clone() {
        let url = format!("{}{}", endpoint.trim_end_matches('/'), uri.path());
        let content_type = content_type.clone();
        tokio::spawn(async move {
            let sent = collector()
                .post(&url)
                .header(header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
                .await
                .map(|response| response.status());
            match sent {
                Ok(status) if status.is_success() => {}
                Ok(status) => tracing::debug!(%status, "the OTLP collector refused telemetry"),
                Err(error) => {
                    tracing::debug!(error = %error.without_url(), "could not forward telemetry")
                }
            }
        });
    }
    // An empty export response: `{}` in JSON, no bytes in protobuf.
    let json = content_type.starts_with("application/json");
    let body = if json { "{}" } else { "" };
    let content_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn display_names() {
        for (id, name) in [
            ("claude-opus-5-5", "Claude Opus 5.5"),
            ("claude-sonnet-4-20250514", "Claude Sonnet 4"),
            ("claude-3-7-sonnet-latest", "Claude Sonnet 3.7"),
            ("claude-haiku-5-5", "Claude Haiku 5.5"),
        ] {
            assert_eq!(super::display_name(id), name);
        }
    }
}

//! Handlers of the JSON API. Errors are `{"error": "…"}` with 400, 404 or 500.

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use claudeflare_tower::{AccountStatus, Mode, Tier};
use serde_json::{Value, json};

use crate::config::{self, StrategyName};
use crate::db::{accounts, requests, rollups};
use crate::state::AppState;
pub mod error;
pub(crate) mod extract;

pub use error::ApiError;
use extract::{ApiPath, ApiQuery, JsonObject};

pub mod gateway;

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// The routes of the JSON API and the metrics.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .route("/api/stats/hourly", get(hourly))
        .route("/api/accounts", get(accounts))
        .route("/api/accounts/{id}/tier", post(set_tier))
        .route("/api/accounts/{id}/pause", post(pause))
        .route("/api/accounts/{id}/resume", post(resume))
        .route("/api/requests", get(requests))
        .route("/api/config", get(config))
        .route("/api/keys", get(keys))
        .route("/api/keys/{name}/revoke", post(revoke_key))
        .route("/api/config/strategy", get(strategy).post(set_strategy))
        .route("/api/strategies", get(strategies))
        .route("/api/oauth/usage", get(gateway::usage))
        .route("/v1/models", get(gateway::models))
        .route(
            "/.well-known/oauth-authorization-server",
            get(crate::signin::discovery),
        )
        .route(
            "/oauth/device_authorization",
            post(crate::signin::device_authorization),
        )
        .route("/oauth/token", post(crate::signin::token))
        .route("/oauth/revoke", post(crate::signin::revoke))
        .route(
            "/device",
            get(crate::signin::show_device).post(crate::signin::approve_device),
        )
        .route("/managed/settings", get(crate::signin::managed_settings))
        .route("/api/signins", get(crate::signin::pending_signins))
        .route(
            "/api/signins/{code}/approve",
            post(crate::signin::approve_signin),
        )
        .route("/api/signins/{code}/deny", post(crate::signin::deny_signin))
        .route("/v1/metrics", post(gateway::telemetry))
        .route("/v1/logs", post(gateway::telemetry))
        .route("/v1/traces", post(gateway::telemetry))
}

/// `GET /health`.
///
/// `"degraded"` with the `problems` when the server found something wrong while running (it
/// still serves): its database file gone, request records that cannot be stored or were
/// dropped, a write that stalls.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let mut problems = state.health.problems();
    let dropped = state.dropped.load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        problems.push(format!(
            "{dropped} request records could not be stored and were dropped since the server started (see the log)"
        ));
    }
    let mut answer = json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "accounts": state.pool.len(),
        "strategy": state.strategy.get().name(),
    });
    if !problems.is_empty() {
        answer["problems"] = json!(problems);
    }
    Json(answer)
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /api/stats`.
pub async fn stats(State(state): State<AppState>) -> ApiResult {
    let totals = rollups::totals(&state.db, None).await?;
    let unpriced = rollups::unpriced(&state.db).await?;
    let now = Utc::now();
    let active = state
        .pool
        .snapshot()
        .iter()
        .filter(|a| a.status(now) == AccountStatus::Active)
        .count();
    let success_rate = if totals.total_requests == 0 {
        0.0
    } else {
        (totals.successful_requests as f64 * 10_000.0 / totals.total_requests as f64).round()
            / 100.0
    };
    Ok(Json(json!({
        "total_requests": totals.total_requests,
        "successful_requests": totals.successful_requests,
        "success_rate": success_rate,
        "active_accounts": active,
        "avg_response_time_ms": (totals.avg_response_time_ms * 10.0).round() / 10.0,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_input_tokens": totals.cache_read_input_tokens,
        "cache_creation_input_tokens": totals.cache_creation_input_tokens,
        "total_cost_usd": totals.total_cost_usd,
        "unpriced_models": unpriced,
        "dropped_records": state.dropped.load(std::sync::atomic::Ordering::Relaxed),
    })))
}

/// `GET /api/stats/hourly`: the last 24 hours that saw requests, oldest first, each with the
/// totals of `/api/stats` (every instance's requests).
pub async fn hourly(State(state): State<AppState>) -> ApiResult {
    let since = Utc::now() - chrono::TimeDelta::hours(23);
    let series = rollups::series(&state.db, since, rollups::By::Hour).await?;
    Ok(Json(Value::Array(
        series
            .into_iter()
            .map(|(hour, totals)| {
                let mut entry = json!(totals);
                entry["hour"] = json!(hour);
                entry
            })
            .collect(),
    )))
}

/// `GET /api/accounts`: each account with `usage` (subscription usage; null when unknown).
pub async fn accounts(State(state): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = crate::views::accounts(&state.pool, Utc::now())
        .iter()
        .map(|view| crate::views::account_json(view, state.usage.get(&view.id).as_ref()))
        .collect();
    Json(Value::Array(list))
}

/// The query of `GET /api/requests`.
#[derive(serde::Deserialize)]
pub struct RequestsQuery {
    limit: Option<u64>,
    account: Option<String>,
    api_key: Option<String>,
    status: Option<String>,
    provider: Option<String>,
}

/// `GET /api/requests?limit=N[&account=NAME][&api_key=NAME][&provider=NAME]
/// [&status=ok|error|CODE]`: newest first, 50 by default, at most 1000.
pub async fn requests(
    State(state): State<AppState>,
    ApiQuery(RequestsQuery {
        limit,
        account,
        api_key,
        status,
        provider,
    }): ApiQuery<RequestsQuery>,
) -> ApiResult {
    let limit = match limit {
        None => 50,
        Some(0) => {
            return Err(ApiError::BadRequest(
                "limit must be a whole number from 1 to 1000, not 0".into(),
            ));
        }
        Some(limit) => limit.min(1000),
    };
    if let Some(status) = status.as_deref()
        && !matches!(status, "ok" | "error")
        && status.parse::<u16>().is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "status must be ok, error or an HTTP status code, not {status:?}"
        )));
    }
    let filter = requests::Filter {
        account,
        api_key,
        status,
        provider,
    };
    Ok(Json(json!(
        requests::newest(&state.db, limit, &filter).await?
    )))
}

/// `POST /api/keys/:name/revoke`: requests with the key are refused from then on (within a
/// second on every instance).
pub async fn revoke_key(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    crate::db::keys::revoke(&state.db, &name).await?;
    state.access.load(&state.db).await?;
    Ok(Json(json!({ "name": name, "revoked": true })))
}

/// `GET /api/keys`: the client keys as `keys list --json` shows them (never a key).
pub async fn keys(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::views::KeyView>>, ApiError> {
    Ok(Json(crate::views::keys(&state.db).await?))
}

/// `GET /api/config`: the effective settings (none of them secret).
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    let mut config = json!(*state.config.get());
    // A catalogue's URL may carry a token (in its query, or as a password): it is shown without.
    if let Some(url) = config.get_mut("pricing_url") {
        if let Some(shown) = url.as_str().map(crate::pricing::shown) {
            *url = Value::String(shown);
        }
    }
    Json(config)
}

/// `GET /api/config/strategy`.
pub async fn strategy(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "strategy": state.strategy.get().name() }))
}

/// `GET /api/strategies`.
pub async fn strategies() -> Json<Value> {
    Json(json!(StrategyName::ALL))
}

/// The body of `POST /api/config/strategy`.
#[derive(serde::Deserialize)]
pub struct StrategyBody {
    strategy: String,
}

/// `POST /api/config/strategy`: switch now, and write the choice to the config file.
pub async fn set_strategy(
    State(state): State<AppState>,
    JsonObject(StrategyBody { strategy }): JsonObject<StrategyBody>,
) -> ApiResult {
    let name = StrategyName::parse(&strategy).map_err(ApiError::BadRequest)?;
    let mut config = (*state.config.get()).clone();
    let chosen = config.strategy_named(name);
    let path = state.config_path.as_ref().clone();
    let written =
        tokio::task::spawn_blocking(move || config::write_key(&path, "lb_strategy", json!(name)))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    written.map_err(|e| ApiError::Internal(e.to_string()))?;
    config.lb_strategy = name;
    state.config.set(config);
    let mut overrides = (*state.overrides.get()).clone();
    overrides.lb_strategy = Some(name);
    state.overrides.set(overrides);
    state.strategy.set(chosen);
    let mut answer = json!({ "strategy": name });
    if name != StrategyName::Session && state.pool.snapshot().iter().any(|a| a.mode() == Mode::Max)
    {
        let warning = "subscription accounts are best served by the session strategy: prompt caching is per account, and switching accounts on every request looks unlike a normal user to Anthropic";
        tracing::warn!(strategy = %name, "{warning}");
        answer["warning"] = json!(warning);
    }
    tracing::info!(strategy = %name, "strategy changed through the API");
    Ok(Json(answer))
}

/// The body of `POST /api/accounts/{id}/tier`.
#[derive(serde::Deserialize)]
pub struct TierBody {
    tier: Value,
}

/// `POST /api/accounts/{id}/tier`.
pub async fn set_tier(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonObject(TierBody { tier }): JsonObject<TierBody>,
) -> ApiResult {
    let tier = tier
        .as_u64()
        .and_then(|t| u8::try_from(t).ok())
        .and_then(|t| Tier::try_from(t).ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("invalid tier {tier}: expected one of 1, 5, 20"))
        })?;
    let model = accounts::find(&state.db, &id).await?;
    accounts::set_tier(&state.db, &model.id, tier).await?;
    if let Some(entry) = state.pool.get(&model.id) {
        entry.set_tier(tier);
    }
    Ok(Json(
        json!({ "id": model.id, "name": model.name, "tier": tier }),
    ))
}

async fn set_paused(state: &AppState, id: &str, paused: bool) -> ApiResult {
    let model = accounts::find(&state.db, id).await?;
    accounts::set_paused(&state.db, &model.id, paused).await?;
    if let Some(entry) = state.pool.get(&model.id) {
        entry.set_paused(paused);
        if !paused {
            // A person decided to try an account the upstream refused again.
            entry.clear_forbidden();
        }
    }
    Ok(Json(
        json!({ "id": model.id, "name": model.name, "paused": paused }),
    ))
}

/// `POST /api/accounts/{id}/pause`.
pub async fn pause(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult {
    set_paused(&state, &id, true).await
}

/// `POST /api/accounts/{id}/resume`.
pub async fn resume(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult {
    set_paused(&state, &id, false).await
}

/// A method a route does not take: `{"error"}` with 405.
pub async fn method_not_allowed(method: http::Method, uri: Uri) -> ApiError {
    ApiError::Status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Unknown paths: `{"error"}` under `/api`, Anthropic's envelope under `/v1`, plain 404 elsewhere.
pub async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/v1") {
        let message = format!("no route for {path}");
        return error::envelope(StatusCode::NOT_FOUND, "not_found_error", &message);
    }
    ApiError::NotFound(format!("no route for {path}")).into_response()
}

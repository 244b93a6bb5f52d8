//! The dashboard: one server-rendered page (maud) that shows everything without JavaScript; a
//! little inline script refreshes its sections every 5 seconds and sends the actions to the API.
//!
//! Every aggregate comes from the hourly rollups and every list from an indexed query, so the page
//! renders in milliseconds with any amount of history (see `benches/dashboard.rs`).

mod assets;
mod charts;
mod format;
pub(crate) mod login;
mod view;

pub use login::login_page;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use claudeflare_tower::{AccountStatus, Mode};

use crate::views::AccountView;
use http::{HeaderValue, StatusCode, header};

use crate::db::DbError;
use crate::db::entities::request::Model as RequestRow;
use crate::db::requests::{self, Filter};
use crate::db::rollups::{self, By, Totals};
use crate::state::AppState;
use crate::usage::Usage;

/// The dashboard's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/login", get(login::show).post(login::log_in))
        .route("/logout", axum::routing::post(login::log_out))
}

/// Requests listed in the history.
const HISTORY: u64 = 100;

/// An account and what the page shows beside it.
pub struct AccountRow {
    /// The API's view.
    pub view: AccountView,
    /// Subscription usage, if known.
    pub usage: Option<Usage>,
}

/// Everything the page shows.
pub struct Data {
    /// When it was gathered.
    pub now: DateTime<Utc>,
    /// The strategy in use.
    pub strategy: String,
    /// Whether any subscription account exists (for the session-strategy advice).
    pub has_max: bool,
    /// Length of a sticky session.
    pub session: TimeDelta,
    /// The whole history.
    pub all: Totals,
    /// Since midnight UTC.
    pub today: Totals,
    /// Records not stored.
    pub dropped: u64,
    /// The models of the history that found no price.
    pub unpriced: Vec<rollups::Unpriced>,
    /// Accounts taking traffic.
    pub active: usize,
    /// Every account.
    pub accounts: Vec<AccountRow>,
    /// The last 24 hours, by hour (every hour present).
    pub hourly: Vec<(String, Totals)>,
    /// The last 7 days, by day (every day present).
    pub daily: Vec<(String, Totals)>,
    /// The last 7 days, by account.
    pub by_account: Vec<(String, Totals)>,
    /// The last 7 days, by model.
    pub by_model: Vec<(String, Totals)>,
    /// The newest requests matching the filter.
    pub requests: Vec<RequestRow>,
    /// The history filter.
    pub filter: Filter,
    /// The client keys (as `/api/keys` shows them); empty when there are none.
    pub keys: Vec<crate::views::KeyView>,
    /// Sign-ins from Claude Code's `/login` waiting for an approval.
    pub signins: Vec<crate::db::entities::device_authorization::Model>,
}

/// Fill the gaps of a series so every key in `keys` has a value.
fn complete(
    keys: impl Iterator<Item = String>,
    series: Vec<(String, Totals)>,
) -> Vec<(String, Totals)> {
    let mut found: HashMap<String, Totals> = series.into_iter().collect();
    keys.map(|key| {
        let totals = found.remove(&key).unwrap_or_default();
        (key, totals)
    })
    .collect()
}

/// Gather the page's data.
pub async fn gather(state: &AppState, filter: Filter) -> Result<Data, DbError> {
    let now = Utc::now();
    let db = &state.db;
    let this_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now);
    let day_start = this_hour - TimeDelta::hours(i64::from(now.hour()));
    let hours_from = this_hour - TimeDelta::hours(23);
    let days_from = day_start - TimeDelta::days(6);
    let hourly = rollups::series(db, hours_from, By::Hour).await?;
    let daily = rollups::series(db, days_from, By::Day).await?;
    let views = crate::views::accounts(&state.pool, now);
    let config = state.config.get();
    Ok(Data {
        now,
        strategy: state.strategy.get().name().to_owned(),
        has_max: views.iter().any(|v| v.mode == Mode::Max),
        session: config.session_duration(),
        all: rollups::totals(db, None).await?,
        today: rollups::totals(db, Some(day_start)).await?,
        dropped: state.dropped.load(std::sync::atomic::Ordering::Relaxed),
        unpriced: rollups::unpriced(db).await?,
        active: views
            .iter()
            .filter(|v| v.status == AccountStatus::Active)
            .count(),
        accounts: views
            .into_iter()
            .map(|view| AccountRow {
                usage: state.usage.get(&view.id),
                view,
            })
            .collect(),
        hourly: complete(
            (0..24).map(|h| rollups::hour_key(hours_from + TimeDelta::hours(h))),
            hourly,
        ),
        daily: complete(
            (0..7).map(|d| {
                (days_from + TimeDelta::days(d))
                    .format("%Y-%m-%d")
                    .to_string()
            }),
            daily,
        ),
        by_account: rollups::series(db, days_from, By::Account).await?,
        by_model: rollups::series(db, days_from, By::Model).await?,
        requests: requests::newest(db, HISTORY, &filter).await?,
        keys: crate::views::keys(db).await?,
        signins: crate::db::signin::all_pending(db).await?,
        filter,
    })
}

/// The history filter from the query string (`account`, `status`, `api_key`, `provider`; empty
/// means all).
fn filter_of(query: &HashMap<String, String>) -> Filter {
    let get = |key: &str| {
        query
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Filter {
        account: get("account"),
        status: get("status"),
        api_key: get("api_key"),
        provider: get("provider"),
    }
}

/// `GET /` and `GET /dashboard`.
pub async fn page(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut response = match gather(&state, filter_of(&query)).await {
        Ok(data) => Html(view::page(&data).into_string()).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot render the dashboard");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(view::error_page(&error.to_string()).into_string()),
            )
                .into_response()
        }
    };
    // No other site may frame the page (clickjacking its buttons).
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    response
}

/// Render the page for `data` (for tests and the benchmark).
pub fn render(data: &Data) -> String {
    view::page(data).into_string()
}

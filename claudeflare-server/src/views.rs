//! Accounts as the API, the CLI and the dashboard show them: one place that turns the pool's or
//! the database's view into what a person reads.

use chrono::{DateTime, Utc};
use claudeflare_tower::MapEntry;
use claudeflare_tower::{AccountEntry, AccountPool, AccountStatus, Backend, Mode, Tier};
use serde::Serialize;
use serde_json::{Value, json};

use crate::usage::Usage;

/// What `/api/accounts` and `list` show for an account. Holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountView {
    /// Stable identifier.
    pub id: String,
    /// Name.
    pub name: String,
    /// "anthropic", "anthropic-compatible", "bedrock" or "vertex".
    pub provider: String,
    /// A compatible backend's or a cloud's base URL; null for Anthropic.
    pub base_url: Option<String>,
    /// A cloud account's region; null otherwise.
    pub region: Option<String>,
    /// A Vertex AI account's project; null otherwise.
    pub project: Option<String>,
    /// Lower goes first.
    pub priority: u32,
    /// The models it serves and the name each goes upstream as; empty: every model.
    pub model_map: Vec<MapEntry>,
    /// The egress proxy, its password shown as `***`.
    pub proxy: Option<String>,
    /// The group it belongs to.
    pub group: Option<String>,
    /// "max" or "console".
    pub mode: Mode,
    /// 1, 5 or 20.
    pub tier: Tier,
    /// Paused by the user.
    pub paused: bool,
    /// "active", "paused", "rate_limited", "needs_reauth" or "forbidden".
    pub status: AccountStatus,
    /// Why it is out of rotation until a person acts, in words (`needs_reauth`, `forbidden`).
    pub status_reason: Option<String>,
    /// Out of rotation until then.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// Last unified status seen.
    pub rate_limit_status: Option<String>,
    /// Start of the sticky session.
    pub session_start: Option<DateTime<Utc>>,
    /// Requests in the session.
    pub session_request_count: u64,
    /// Requests since the last counter reset.
    pub request_count: u64,
    /// Lifetime requests.
    pub total_requests: u64,
    /// Last request.
    pub last_used: Option<DateTime<Utc>>,
    /// Access token expiry (max accounts).
    pub token_expires_at: Option<DateTime<Utc>>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// Last 5-hour utilization seen in the rate-limit headers.
    pub utilization_5h: Option<f64>,
    /// Last 7-day utilization seen in the rate-limit headers.
    pub utilization_7d: Option<f64>,
}

impl AccountView {
    /// The view of `entry` at `now`.
    pub fn of(entry: &AccountEntry, now: DateTime<Utc>) -> Self {
        let live = entry.live();
        let route = entry.route();
        Self {
            id: entry.id().to_owned(),
            name: entry.name().to_owned(),
            provider: route.backend.name().to_owned(),
            base_url: route.backend.base_url().map(ToString::to_string),
            region: route.backend.region().map(str::to_owned),
            project: match &route.backend {
                Backend::Vertex { project, .. } => Some(project.clone()),
                _ => None,
            },
            priority: route.priority,
            model_map: route.model_map.entries(),
            proxy: route.proxy.as_ref().map(ToString::to_string),
            group: route.group.clone(),
            mode: entry.mode(),
            tier: entry.tier(),
            paused: entry.paused(),
            status: entry.status(now),
            status_reason: live.status_reason,
            rate_limited_until: live.rate_limited_until.filter(|until| *until > now),
            rate_limit_status: live.rate_limit_status,
            session_start: live.session_start,
            session_request_count: live.session_request_count,
            request_count: live.request_count,
            total_requests: live.total_requests,
            last_used: live.last_used,
            token_expires_at: entry.token_expires_at(),
            created_at: entry.created_at(),
            utilization_5h: live.utilization_5h,
            utilization_7d: live.utilization_7d,
        }
    }
}

/// The command that signs an account in again.
pub fn reauth_command(name: &str) -> String {
    format!("claudeflare-server reauth {name}")
}

/// Complete a view for people: an account that needs re-authentication says which command to
/// run, after why.
pub fn finish(mut view: AccountView) -> AccountView {
    if view.status == AccountStatus::NeedsReauth {
        let reason = view
            .status_reason
            .take()
            .unwrap_or_else(|| "its credential was refused".to_owned());
        view.status_reason = Some(format!(
            "{reason}; run `{}` to sign in again",
            reauth_command(&view.name)
        ));
    }
    view
}

/// Every account of the pool at `now`, finished.
pub fn accounts(pool: &AccountPool, now: DateTime<Utc>) -> Vec<AccountView> {
    pool.snapshot()
        .iter()
        .map(|entry| finish(AccountView::of(entry, now)))
        .collect()
}

/// The account object of `/api/accounts` and `list --json`.
pub fn account_json(view: &AccountView, usage: Option<&Usage>) -> Value {
    let mut value = json!(view);
    value["usage"] = json!(usage);
    value
}

/// What `GET /api/keys`, `keys list` and the dashboard show of a client key: never the key,
/// only its first characters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyView {
    /// Its name.
    pub name: String,
    /// May use the API, the metrics and the dashboard.
    pub admin: bool,
    /// The key's first characters.
    pub hint: String,
    /// Requests per minute, at most.
    pub rpm: Option<i64>,
    /// Requests in flight, at most.
    pub concurrency: Option<i64>,
    /// Estimated cost per calendar month, at most.
    pub monthly_budget_usd: Option<f64>,
    /// The models it may ask for; `None`: any.
    pub models: Option<Vec<String>>,
    /// The accounts its requests may use; `None`: all.
    pub accounts: Option<Vec<String>>,
    /// The person's email.
    pub email: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its requests this calendar month (UTC).
    pub requests_this_month: i64,
    /// Their estimated cost.
    pub cost_this_month_usd: f64,
}

impl KeyView {
    /// The view of a stored key with its requests and cost this month.
    pub fn of(model: &crate::db::entities::client_key::Model, requests: i64, cost: f64) -> Self {
        Self {
            name: model.name.clone(),
            admin: model.admin,
            hint: model.hint.clone(),
            rpm: model.rpm,
            concurrency: model.concurrency,
            monthly_budget_usd: model.monthly_budget_usd,
            models: crate::db::keys::allowed_models(model),
            accounts: crate::db::keys::allowed_accounts(model),
            email: model.email.clone(),
            created_at: model.created_at,
            last_used_at: model.last_used_at,
            requests_this_month: requests,
            cost_this_month_usd: cost,
        }
    }
}

/// Every stored key's view.
pub async fn keys(db: &impl sea_orm::ConnectionTrait) -> Result<Vec<KeyView>, crate::db::DbError> {
    Ok(crate::db::keys::with_usage(db)
        .await?
        .iter()
        .map(|(model, requests, cost)| KeyView::of(model, *requests, *cost))
        .collect())
}

/// The view `list` shows of a stored account; one whose secrets cannot be decrypted shows as
/// needing re-authentication.
pub fn stored_account(
    model: &crate::db::entities::account::Model,
    cipher: &crate::secrets::Cipher,
    now: DateTime<Utc>,
) -> Result<AccountView, crate::db::DbError> {
    let account = crate::db::accounts::to_account_or_blocked(model, cipher)?;
    Ok(AccountView::of(&AccountEntry::new(account), now))
}

//! Accounts in the database: what the CLI, the API and the running server read and change.

use chrono::{DateTime, Utc};
use claudeflare_tower::AuthStyle;
use claudeflare_tower::{
    Account, Backend, Credentials, EgressProxy, LiveState, Mode, ModelMap, OAuthTokens, Route, Tier,
};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set, SqlErr,
};
use secrecy::ExposeSecret;

use super::DbError;
use super::entities::account::{ActiveModel, Column, Entity, Model};
use crate::secrets::Cipher;

/// Every account, oldest first (the pool's fallback order).
pub async fn all(db: &impl ConnectionTrait) -> Result<Vec<Model>, DbError> {
    Ok(Entity::find()
        .order_by_asc(Column::CreatedAt)
        .order_by_asc(Column::Name)
        .all(db)
        .await?)
}

/// The account with this id, or else this name.
pub async fn find(db: &impl ConnectionTrait, id_or_name: &str) -> Result<Model, DbError> {
    let found = Entity::find()
        .filter(Column::Id.eq(id_or_name).or(Column::Name.eq(id_or_name)))
        .all(db)
        .await?;
    let by_id = found.iter().find(|m| m.id == id_or_name).cloned();
    by_id
        .or_else(|| found.into_iter().next())
        .ok_or_else(|| DbError::UnknownAccount(id_or_name.to_owned()))
}

/// Where a Bedrock account's AWS credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsSource {
    /// Keys given to `add`, stored encrypted.
    Keys,
    /// A Bedrock API key, stored encrypted.
    ApiKey,
    /// A profile of the AWS credentials file, read when the server loads the account.
    Profile(String),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` of the server.
    Environment,
}

impl AwsSource {
    fn column(&self) -> String {
        match self {
            AwsSource::Keys => "keys".to_owned(),
            AwsSource::ApiKey => "api-key".to_owned(),
            AwsSource::Profile(name) => format!("profile:{name}"),
            AwsSource::Environment => "environment".to_owned(),
        }
    }

    fn parse(column: &str) -> Option<Self> {
        match column {
            "keys" => Some(AwsSource::Keys),
            "api-key" => Some(AwsSource::ApiKey),
            "environment" => Some(AwsSource::Environment),
            other => other
                .strip_prefix("profile:")
                .map(|name| AwsSource::Profile(name.to_owned())),
        }
    }
}

/// Store a new account; its name must be free. A Bedrock account says where its credentials
/// come from (`aws`): only keys given to `add` are stored (encrypted); a profile's or the
/// environment's are read when the server loads the account.
pub async fn insert(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    account: &Account,
    aws: Option<&AwsSource>,
) -> Result<(), DbError> {
    let stored = match aws {
        Some(AwsSource::Profile(_) | AwsSource::Environment) => None,
        _ => Some(&account.credentials),
    };
    let (api_key, access_token, refresh_token, expires_at) =
        stored.map_or((None, None, None, None), |c| credential_columns(cipher, c));
    let live = &account.live;
    let route = RouteColumns::of(&account.route, cipher);
    let model = ActiveModel {
        id: Set(account.id.clone()),
        name: Set(account.name.clone()),
        provider: Set(route.provider),
        base_url: Set(route.base_url),
        region: Set(route.region),
        project: Set(route.project),
        aws_credentials: Set(aws.map(AwsSource::column)),
        auth_header: Set(route.auth_header),
        priority: Set(route.priority),
        model_map: Set(route.model_map),
        proxy: Set(route.proxy),
        account_group: Set(route.group),
        mode: Set(account.mode.as_str().into()),
        tier: Set(i32::from(account.tier.weight())),
        paused: Set(account.paused),
        api_key: Set(api_key),
        access_token: Set(access_token),
        refresh_token: Set(refresh_token),
        token_expires_at: Set(expires_at),
        created_at: Set(account.created_at),
        version: Set(0),
        counters_epoch: Set(0),
        rate_limited_until: Set(live.rate_limited_until),
        rate_limit_status: Set(live.rate_limit_status.clone()),
        rate_limit_reset: Set(live.rate_limit_reset),
        utilization_5h: Set(live.utilization_5h),
        utilization_7d: Set(live.utilization_7d),
        utilization_5h_reset: Set(live.utilization_5h_reset),
        utilization_7d_reset: Set(live.utilization_7d_reset),
        session_start: Set(live.session_start),
        session_request_count: Set(count(live.session_request_count)),
        request_count: Set(count(live.request_count)),
        total_requests: Set(count(live.total_requests)),
        last_used: Set(live.last_used),
        needs_reauth: Set(live.needs_reauth),
        forbidden: Set(live.forbidden),
        status_reason: Set(live.status_reason.clone()),
        token_version: Set(0),
        refresh_lease_until: Set(None),
        usage: Set(None),
        live_version: Set(0),
    };
    match model.insert(db).await {
        Ok(_) => Ok(()),
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(DbError::DuplicateName(account.name.clone()))
        }
        Err(error) => Err(error.into()),
    }
}

/// An account's route as it is stored.
struct RouteColumns {
    provider: String,
    base_url: Option<String>,
    region: Option<String>,
    project: Option<String>,
    auth_header: Option<String>,
    priority: i32,
    model_map: Option<String>,
    proxy: Option<String>,
    group: Option<String>,
}

impl RouteColumns {
    fn of(route: &Route, cipher: &Cipher) -> Self {
        let (auth_header, project) = match &route.backend {
            Backend::Compatible { auth, .. } => (Some(auth.as_str().to_owned()), None),
            Backend::Vertex { project, .. } => (None, Some(project.clone())),
            _ => (None, None),
        };
        Self {
            provider: route.backend.name().to_owned(),
            base_url: route.backend.base_url().map(ToString::to_string),
            region: route.backend.region().map(str::to_owned),
            project,
            auth_header,
            priority: i32::try_from(route.priority).unwrap_or(i32::MAX),
            model_map: (!route.model_map.is_empty()).then(|| route.model_map.to_string()),
            proxy: route
                .proxy
                .as_ref()
                .map(|proxy| cipher.encrypt(proxy.expose_url())),
            group: route.group.clone(),
        }
    }
}

/// The route stored in a row, its proxy as `proxy` (decrypted by the caller, or none).
fn route_of(model: &Model, proxy: Option<EgressProxy>) -> Result<Route, DbError> {
    let corrupt = |what| DbError::Corrupt {
        account: model.name.clone(),
        what,
    };
    let backend = match model.provider.as_str() {
        "anthropic" => Backend::Anthropic,
        claudeflare_tower::Compatible::NAME => Backend::Compatible {
            base_url: model
                .base_url
                .as_deref()
                .and_then(|url| url.parse().ok())
                .ok_or_else(|| corrupt("base URL"))?,
            auth: model
                .auth_header
                .as_deref()
                .map_or(Ok(AuthStyle::default()), str::parse)
                .map_err(|_| corrupt("auth header"))?,
        },
        claudeflare_tower::Bedrock::NAME => Backend::bedrock(
            model.region.as_deref().ok_or_else(|| corrupt("region"))?,
            Some(base_url(model).ok_or_else(|| corrupt("base URL"))?),
        )
        .map_err(|_| corrupt("region"))?,
        claudeflare_tower::Vertex::NAME => Backend::vertex(
            model.project.as_deref().ok_or_else(|| corrupt("project"))?,
            model.region.as_deref().ok_or_else(|| corrupt("region"))?,
            Some(base_url(model).ok_or_else(|| corrupt("base URL"))?),
        )
        .map_err(|_| corrupt("project or region"))?,
        _ => return Err(corrupt("provider")),
    };
    let model_map: ModelMap = model
        .model_map
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| corrupt("model map"))?;
    let mut route = Route::default();
    route.backend = backend;
    route.priority = u32::try_from(model.priority).unwrap_or(0);
    route.model_map = model_map;
    route.proxy = proxy;
    route.group.clone_from(&model.account_group);
    Ok(route)
}

fn base_url(model: &Model) -> Option<http::Uri> {
    model.base_url.as_deref().and_then(|url| url.parse().ok())
}

/// The egress proxy of a row, decrypted.
fn proxy_of(model: &Model, cipher: &Cipher) -> Result<Option<EgressProxy>, DbError> {
    let Some(stored) = &model.proxy else {
        return Ok(None);
    };
    let url = cipher
        .decrypt(stored)
        .map_err(|_| DbError::Undecryptable(model.name.clone()))?;
    url.parse().map(Some).map_err(|_| DbError::Corrupt {
        account: model.name.clone(),
        what: "proxy",
    })
}

/// Change an account's route (`edit`): provider settings, priority, model map, proxy.
pub async fn set_route(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    id: &str,
    route: &Route,
) -> Result<(), DbError> {
    let columns = RouteColumns::of(route, cipher);
    let result = Entity::update_many()
        .col_expr(Column::Provider, Expr::value(columns.provider))
        .col_expr(Column::BaseUrl, Expr::value(columns.base_url))
        .col_expr(Column::Region, Expr::value(columns.region))
        .col_expr(Column::Project, Expr::value(columns.project))
        .col_expr(Column::AuthHeader, Expr::value(columns.auth_header))
        .col_expr(Column::Priority, Expr::value(columns.priority))
        .col_expr(Column::ModelMap, Expr::value(columns.model_map))
        .col_expr(Column::Proxy, Expr::value(columns.proxy))
        .col_expr(Column::AccountGroup, Expr::value(columns.group))
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    changed(result.rows_affected, id)
}

type CredentialColumns = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
);

fn credential_columns(cipher: &Cipher, credentials: &Credentials) -> CredentialColumns {
    match credentials {
        Credentials::ApiKey(key) => (Some(cipher.encrypt(key.expose_secret())), None, None, None),
        Credentials::Aws(keys) => (
            Some(cipher.encrypt(&StoredAwsKeys::of(keys).to_json())),
            None,
            None,
            None,
        ),
        Credentials::OAuth(tokens) => (
            None,
            Some(cipher.encrypt(tokens.access_token.expose_secret())),
            Some(cipher.encrypt(tokens.refresh_token.expose_secret())),
            Some(tokens.expires_at),
        ),
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn uncount(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The balancer's view of a stored account, with its secrets decrypted.
pub fn to_account(model: &Model, cipher: &Cipher) -> Result<Account, DbError> {
    let mut account = shell(model)?;
    let corrupt = |what| DbError::Corrupt {
        account: model.name.clone(),
        what,
    };
    let open = |value: &Option<String>, what| {
        let stored = value.as_deref().ok_or_else(|| corrupt(what))?;
        cipher
            .decrypt(stored)
            .map_err(|_| DbError::Undecryptable(model.name.clone()))
    };
    account.route.proxy = proxy_of(model, cipher)?;
    let oauth =
        account.mode == Mode::Max || matches!(account.route.backend, Backend::Vertex { .. });
    account.credentials = match &account.route.backend {
        Backend::Bedrock { .. } => {
            let source = model
                .aws_credentials
                .as_deref()
                .and_then(AwsSource::parse)
                .ok_or_else(|| corrupt("AWS credentials"))?;
            match source {
                AwsSource::ApiKey => Credentials::ApiKey(open(&model.api_key, "API key")?.into()),
                AwsSource::Keys => Credentials::Aws(
                    StoredAwsKeys::parse(&open(&model.api_key, "AWS keys")?)
                        .ok_or_else(|| corrupt("AWS keys"))?,
                ),
                AwsSource::Profile(name) => loaded(&mut account, crate::aws::from_profile(&name)),
                AwsSource::Environment => loaded(&mut account, crate::aws::from_environment()),
            }
        }
        _ if !oauth => Credentials::ApiKey(open(&model.api_key, "API key")?.into()),
        _ => Credentials::OAuth(OAuthTokens {
            access_token: open(&model.access_token, "access token")?.into(),
            refresh_token: open(&model.refresh_token, "refresh token")?.into(),
            expires_at: model
                .token_expires_at
                .ok_or_else(|| corrupt("token expiry"))?,
        }),
    };
    Ok(account)
}

/// AWS keys read from a profile or the environment; when they cannot be read, the account is
/// out of rotation until they can (it is loaded again on the next start or change), saying why.
fn loaded(account: &mut Account, keys: anyhow::Result<claudeflare_tower::AwsKeys>) -> Credentials {
    match keys {
        Ok(keys) => Credentials::Aws(keys),
        Err(error) => {
            account.live.needs_reauth = true;
            account.live.status_reason = Some(format!("{error:#}"));
            Credentials::ApiKey(String::new().into())
        }
    }
}

/// AWS keys as stored (encrypted): JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAwsKeys {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_token: Option<String>,
}

impl StoredAwsKeys {
    fn of(keys: &claudeflare_tower::AwsKeys) -> Self {
        Self {
            access_key_id: keys.access_key_id.expose_secret().to_owned(),
            secret_access_key: keys.secret_access_key.expose_secret().to_owned(),
            session_token: keys
                .session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn parse(text: &str) -> Option<claudeflare_tower::AwsKeys> {
        let keys: Self = serde_json::from_str(text).ok()?;
        Some(claudeflare_tower::AwsKeys::new(
            keys.access_key_id,
            keys.secret_access_key,
            keys.session_token,
        ))
    }
}

/// A stored account with empty credentials: enough for views, which show no secret.
fn shell(model: &Model) -> Result<Account, DbError> {
    let corrupt = |what| DbError::Corrupt {
        account: model.name.clone(),
        what,
    };
    let mode: Mode = model.mode.parse().map_err(|_| corrupt("mode"))?;
    let tier = u8::try_from(model.tier)
        .ok()
        .and_then(|t| Tier::try_from(t).ok())
        .ok_or_else(|| corrupt("tier"))?;
    let credentials = match mode {
        Mode::Console if model.provider != claudeflare_tower::Vertex::NAME => {
            Credentials::ApiKey(String::new().into())
        }
        _ => Credentials::OAuth(OAuthTokens {
            access_token: String::new().into(),
            refresh_token: String::new().into(),
            expires_at: model.token_expires_at.unwrap_or(model.created_at),
        }),
    };
    let mut account = Account::new(model.name.clone(), mode, credentials).with_tier(tier);
    account.id.clone_from(&model.id);
    account.paused = model.paused;
    account.created_at = model.created_at;
    account.live = live(model);
    account.route = route_of(model, None)?;
    Ok(account)
}

/// The live state stored in a row.
pub fn live(model: &Model) -> LiveState {
    let mut live = LiveState::default();
    live.rate_limited_until = model.rate_limited_until;
    live.rate_limit_status = model.rate_limit_status.clone();
    live.rate_limit_reset = model.rate_limit_reset;
    live.utilization_5h = model.utilization_5h;
    live.utilization_5h_reset = model.utilization_5h_reset;
    live.utilization_7d = model.utilization_7d;
    live.utilization_7d_reset = model.utilization_7d_reset;
    live.session_start = model.session_start;
    live.session_request_count = uncount(model.session_request_count);
    live.request_count = uncount(model.request_count);
    live.total_requests = uncount(model.total_requests);
    live.last_used = model.last_used;
    live.needs_reauth = model.needs_reauth;
    live.forbidden = model.forbidden;
    live.status_reason = model.status_reason.clone();
    live
}

/// `Ok` when a row was changed, else the account does not exist.
fn changed(rows_affected: u64, id: &str) -> Result<(), DbError> {
    if rows_affected == 0 {
        return Err(DbError::UnknownAccount(id.to_owned()));
    }
    Ok(())
}

/// Remove an account (its request history stays).
pub async fn remove(db: &impl ConnectionTrait, id: &str) -> Result<(), DbError> {
    let result = Entity::delete_by_id(id.to_owned()).exec(db).await?;
    changed(result.rows_affected, id)
}

/// Change a user setting of an account and bump its version, so running servers pick it up.
async fn change(
    db: &impl ConnectionTrait,
    id: &str,
    column: Column,
    value: Expr,
) -> Result<(), DbError> {
    let result = Entity::update_many()
        .col_expr(column, value)
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    changed(result.rows_affected, id)
}

/// Pause or resume. Resuming also puts an account the upstream refused (`forbidden`) back into
/// rotation: a person decided to try it again.
pub async fn set_paused(db: &impl ConnectionTrait, id: &str, paused: bool) -> Result<(), DbError> {
    let mut update = Entity::update_many()
        .col_expr(Column::Paused, Expr::value(paused))
        .col_expr(Column::Version, Expr::col(Column::Version).add(1));
    if !paused {
        update = update
            .col_expr(Column::Forbidden, Expr::value(false))
            // The reason of a needs-reauth account stays: resuming does not revive its token.
            .col_expr(
                Column::StatusReason,
                Expr::case(
                    Expr::col(Column::NeedsReauth),
                    Expr::col(Column::StatusReason),
                )
                .finally(Expr::value(Option::<String>::None))
                .into(),
            );
    }
    let result = update.filter(Column::Id.eq(id)).exec(db).await?;
    changed(result.rows_affected, id)
}

/// Change the tier.
pub async fn set_tier(db: &impl ConnectionTrait, id: &str, tier: Tier) -> Result<(), DbError> {
    change(db, id, Column::Tier, Expr::value(i32::from(tier.weight()))).await
}

/// Zero every account's counters (`reset-stats`).
pub async fn reset_counters(db: &impl ConnectionTrait) -> Result<u64, DbError> {
    let result = Entity::update_many()
        .col_expr(Column::RequestCount, Expr::value(0i64))
        .col_expr(Column::SessionRequestCount, Expr::value(0i64))
        .col_expr(
            Column::CountersEpoch,
            Expr::col(Column::CountersEpoch).add(1),
        )
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// How [`share_live`] went.
pub enum Shared {
    /// Nothing to write: the account is gone, or `next` said so.
    Nothing,
    /// Another process wrote the live state between the read and the write: nothing written;
    /// read it again and fold again.
    Raced,
    /// Written: what was written, and the new live version.
    Written(LiveState, i64),
}

/// Change the shared live state of account `id`: read the row, let `next` decide what to store
/// from it (`None`: nothing), and write that with the live version bumped, only if no other
/// process wrote it meanwhile (a compare-and-set on `live_version`, so two instances never
/// overwrite each other's changes).
///
/// No transaction spans the read and the write: on SQLite in WAL mode, a transaction that read
/// and then writes after another connection's commit fails at once with "database is locked"
/// (the busy timeout does not apply), which the record writer's commits made happen every few
/// seconds under load.
///
/// The blocks (`needs_reauth`, `forbidden` and their reason) are not part of it: they are written
/// at once by [`set_block`] and cleared by a person (`reauth`, `resume`), so a live state taken
/// before either can never undo it.
pub async fn share_live(
    db: &DatabaseConnection,
    id: &str,
    next: impl FnOnce(&Model) -> Option<LiveState>,
) -> Result<Shared, DbError> {
    let Some(row) = Entity::find_by_id(id.to_owned()).one(db).await? else {
        return Ok(Shared::Nothing);
    };
    let Some(live) = next(&row) else {
        return Ok(Shared::Nothing);
    };
    let version = row.live_version + 1;
    let written = Entity::update_many()
        .col_expr(
            Column::RateLimitedUntil,
            Expr::value(live.rate_limited_until),
        )
        .col_expr(
            Column::RateLimitStatus,
            Expr::value(live.rate_limit_status.clone()),
        )
        .col_expr(Column::RateLimitReset, Expr::value(live.rate_limit_reset))
        .col_expr(Column::Utilization5h, Expr::value(live.utilization_5h))
        .col_expr(Column::Utilization7d, Expr::value(live.utilization_7d))
        .col_expr(Column::SessionStart, Expr::value(live.session_start))
        .col_expr(
            Column::SessionRequestCount,
            Expr::value(count(live.session_request_count)),
        )
        .col_expr(Column::RequestCount, Expr::value(count(live.request_count)))
        .col_expr(
            Column::TotalRequests,
            Expr::value(count(live.total_requests)),
        )
        .col_expr(Column::LastUsed, Expr::value(live.last_used))
        .col_expr(
            Column::Utilization5hReset,
            Expr::value(live.utilization_5h_reset),
        )
        .col_expr(
            Column::Utilization7dReset,
            Expr::value(live.utilization_7d_reset),
        )
        .col_expr(Column::LiveVersion, Expr::value(version))
        .filter(Column::Id.eq(id))
        .filter(Column::LiveVersion.eq(row.live_version))
        .exec(db)
        .await?;
    if written.rows_affected == 0 {
        return Ok(Shared::Raced);
    }
    Ok(Shared::Written(live, version))
}

/// Store refreshed OAuth tokens (bumping the token version, releasing the refresh lease).
pub async fn save_tokens(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    id: &str,
    tokens: &OAuthTokens,
) -> Result<(), DbError> {
    store_credentials(db, cipher, id, &Credentials::OAuth(tokens.clone()), false).await
}

/// Replace an account's credentials after re-authentication: it leaves `needs_reauth`, keeps its
/// id, tier, counters and history, and running servers pick the change up.
pub async fn set_credentials(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    id: &str,
    credentials: &Credentials,
) -> Result<(), DbError> {
    store_credentials(db, cipher, id, credentials, true).await
}

/// Write `credentials` (encrypted), bump the token version and release the refresh lease; with
/// `announce`, bump the account's version too, so running servers reload it.
async fn store_credentials(
    db: &impl ConnectionTrait,
    cipher: &Cipher,
    id: &str,
    credentials: &Credentials,
    announce: bool,
) -> Result<(), DbError> {
    let (api_key, access_token, refresh_token, expires_at) =
        credential_columns(cipher, credentials);
    let mode = match credentials {
        Credentials::OAuth(_) => Mode::Max,
        _ => Mode::Console,
    };
    let mut update = Entity::update_many()
        .col_expr(Column::Mode, Expr::value(mode.as_str()))
        .col_expr(Column::ApiKey, Expr::value(api_key))
        .col_expr(Column::AccessToken, Expr::value(access_token))
        .col_expr(Column::RefreshToken, Expr::value(refresh_token))
        .col_expr(Column::TokenExpiresAt, Expr::value(expires_at))
        .col_expr(Column::NeedsReauth, Expr::value(false))
        .col_expr(Column::Forbidden, Expr::value(false))
        .col_expr(Column::StatusReason, Expr::value(Option::<String>::None))
        .col_expr(Column::TokenVersion, Expr::col(Column::TokenVersion).add(1))
        .col_expr(
            Column::RefreshLeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        );
    if announce {
        update = update.col_expr(Column::Version, Expr::col(Column::Version).add(1));
    }
    let result = update.filter(Column::Id.eq(id)).exec(db).await?;
    changed(result.rows_affected, id)
}

/// Take the refresh lease of an account until `until`, unless another process holds it.
pub async fn take_refresh_lease(
    db: &impl ConnectionTrait,
    id: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool, DbError> {
    let result = Entity::update_many()
        .col_expr(Column::RefreshLeaseUntil, Expr::value(until))
        .filter(Column::Id.eq(id))
        .filter(
            Column::RefreshLeaseUntil
                .is_null()
                .or(Column::RefreshLeaseUntil.lt(now)),
        )
        .exec(db)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Give the refresh lease back without new tokens.
pub async fn release_refresh_lease(db: &impl ConnectionTrait, id: &str) -> Result<(), DbError> {
    Entity::update_many()
        .col_expr(
            Column::RefreshLeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Take an account out of rotation until it is re-authenticated, saying why.
pub async fn mark_needs_reauth(
    db: &impl ConnectionTrait,
    id: &str,
    reason: &str,
) -> Result<(), DbError> {
    let mut blocked = LiveState::default();
    blocked.needs_reauth = true;
    blocked.status_reason = Some(reason.to_owned());
    if set_block(db, id, &blocked, None).await? {
        Ok(())
    } else {
        Err(DbError::UnknownAccount(id.to_owned()))
    }
}

/// Store the block flags of `live` (`needs_reauth`, `forbidden`) and their reason at once, and
/// bump the account's version so every process reloads it.
///
/// With `seen_version`, only if the account is still at that version: a block decided on what a
/// process knew then must not undo what a person did since (a `reauth`, a `resume`). Returns
/// whether it was stored.
pub async fn set_block(
    db: &impl ConnectionTrait,
    id: &str,
    live: &LiveState,
    seen_version: Option<i64>,
) -> Result<bool, DbError> {
    let mut update = Entity::update_many()
        .col_expr(Column::NeedsReauth, Expr::value(live.needs_reauth))
        .col_expr(Column::Forbidden, Expr::value(live.forbidden))
        .col_expr(
            Column::StatusReason,
            Expr::value(live.status_reason.clone()),
        )
        .col_expr(Column::Version, Expr::col(Column::Version).add(1))
        .filter(Column::Id.eq(id));
    if let Some(version) = seen_version {
        update = update.filter(Column::Version.eq(version));
    }
    Ok(update.exec(db).await?.rows_affected > 0)
}

/// Store the last subscription usage fetched (JSON).
pub async fn save_usage(db: &impl ConnectionTrait, id: &str, usage: &str) -> Result<(), DbError> {
    Entity::update_many()
        .col_expr(Column::Usage, Expr::value(usage.to_owned()))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Encrypt secrets still stored in plain text (written before encryption, or by hand).
pub async fn seal_plaintext(db: &impl ConnectionTrait, cipher: &Cipher) -> Result<(), DbError> {
    for model in all(db).await? {
        let plain = [&model.api_key, &model.access_token, &model.refresh_token]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| !v.starts_with("enc:")));
        if !plain {
            continue;
        }
        let seal = |v: &Option<String>| {
            v.as_deref().map(|v| {
                if v.starts_with("enc:") {
                    v.to_owned()
                } else {
                    cipher.encrypt(v)
                }
            })
        };
        Entity::update_many()
            .col_expr(Column::ApiKey, Expr::value(seal(&model.api_key)))
            .col_expr(Column::AccessToken, Expr::value(seal(&model.access_token)))
            .col_expr(
                Column::RefreshToken,
                Expr::value(seal(&model.refresh_token)),
            )
            .filter(Column::Id.eq(&model.id))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// The account of a row, or, when its secrets cannot be decrypted, its shell needing
/// re-authentication (for views, which show no secret).
pub fn to_account_or_blocked(model: &Model, cipher: &Cipher) -> Result<Account, DbError> {
    match to_account(model, cipher) {
        Ok(account) => Ok(account),
        Err(DbError::Undecryptable(_)) => {
            let mut account = shell(model)?;
            account.live.needs_reauth = true;
            Ok(account)
        }
        Err(error) => Err(error),
    }
}

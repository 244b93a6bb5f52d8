//! Client keys: created, listed and revoked by the CLI (and listed by the API); read by every
//! running server, which checks requests against them in memory.
//!
//! A key is `cfk_` and 43 characters of URL-safe base64 (32 random bytes, 256 bits). Only its
//! SHA-256 is stored: a key this random needs no slow hash (there is nothing to guess from a
//! dictionary), so checking one costs a hash of 47 bytes and a map lookup.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::DbError;
use super::entities::client_key::{ActiveModel, Column, Entity, Model};

/// What every client key starts with, so one is recognisable in a config file or a log.
pub const PREFIX: &str = "cfk_";

/// Per-key limits (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Requests in flight.
    pub concurrency: Option<u32>,
    /// Estimated cost per calendar month (UTC), in USD.
    pub monthly_budget_usd: Option<f64>,
}

/// A fresh random key.
fn generate() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of `key`: its SHA-256, hex.
pub fn hash(key: &str) -> String {
    hex(&digest(key))
}

/// The SHA-256 of `key`.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Create a key named `name`; the key itself, to show once (only its hash is stored).
pub async fn create(
    db: &impl ConnectionTrait,
    name: &str,
    admin: bool,
    limits: Limits,
    models: &[String],
    accounts: &[String],
    email: Option<&str>,
) -> Result<String, DbError> {
    if Entity::find()
        .filter(Column::Name.eq(name))
        .one(db)
        .await?
        .is_some()
    {
        return Err(DbError::DuplicateKey(name.to_owned()));
    }
    let key = generate();
    ActiveModel {
        id: Set(uuid::Uuid::new_v4().to_string()),
        name: Set(name.to_owned()),
        hash: Set(hash(&key)),
        hint: Set(key.chars().take(PREFIX.len() + 4).collect()),
        admin: Set(admin),
        rpm: Set(limits.rpm.map(i64::from)),
        concurrency: Set(limits.concurrency.map(i64::from)),
        monthly_budget_usd: Set(limits.monthly_budget_usd),
        models: Set((!models.is_empty()).then(|| models.join(","))),
        accounts: Set((!accounts.is_empty()).then(|| accounts.join(","))),
        email: Set(email.map(str::to_owned)),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok(key)
}

/// Every key, oldest first.
pub async fn all(db: &impl ConnectionTrait) -> Result<Vec<Model>, DbError> {
    Ok(Entity::find()
        .order_by_asc(Column::CreatedAt)
        .all(db)
        .await?)
}

/// Revoke (delete) the key named `name`.
pub async fn revoke(db: &impl ConnectionTrait, name: &str) -> Result<(), DbError> {
    let deleted = Entity::delete_many()
        .filter(Column::Name.eq(name))
        .exec(db)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(DbError::UnknownKey(name.to_owned()));
    }
    Ok(())
}

/// Store a dashboard login: the SHA-256 (hex) of its cookie, the admin key's name, its end.
pub async fn add_session(
    db: &impl ConnectionTrait,
    digest: &str,
    key_name: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    use super::entities::dashboard_session::ActiveModel;
    ActiveModel {
        digest: Set(digest.to_owned()),
        key_name: Set(key_name.to_owned()),
        expires_at: Set(expires_at),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// End a dashboard login.
pub async fn end_session(db: &impl ConnectionTrait, digest: &str) -> Result<(), DbError> {
    use super::entities::dashboard_session::Entity;
    Entity::delete_by_id(digest.to_owned()).exec(db).await?;
    Ok(())
}

/// The dashboard logins that have not ended at `now`.
pub async fn sessions(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<Vec<super::entities::dashboard_session::Model>, DbError> {
    use super::entities::dashboard_session::{Column, Entity};
    Ok(Entity::find()
        .filter(Column::ExpiresAt.gt(now))
        .all(db)
        .await?)
}

/// Delete the dashboard logins that ended before `now`.
pub async fn drop_ended_sessions(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    use super::entities::dashboard_session::{Column, Entity};
    Entity::delete_many()
        .filter(Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    Ok(())
}

/// Note that the keys with these ids were used at `at`.
pub async fn touch(
    db: &impl ConnectionTrait,
    ids: &[String],
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    Entity::update_many()
        .col_expr(Column::LastUsedAt, sea_orm::sea_query::Expr::value(at))
        .filter(Column::Id.is_in(ids.iter().map(String::as_str)))
        .exec(db)
        .await?;
    Ok(())
}

/// The start of the calendar month (UTC) of `now`.
pub fn month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

/// Requests and estimated cost of each key (by name) from the day of `since` on (UTC), from
/// every instance's records (the daily spending the record writer keeps: see
/// [`rollups::key_spending_since`](super::rollups::key_spending_since)).
pub async fn usage_since(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
) -> Result<Vec<(String, i64, f64)>, DbError> {
    super::rollups::key_spending_since(db, since).await
}

/// The models the key may ask for; `None`: any.
pub fn allowed_models(model: &Model) -> Option<Vec<String>> {
    model
        .models
        .as_deref()
        .map(|list| list.split(',').map(str::to_owned).collect())
}

/// The accounts the key's requests may use, by name; `None`: all.
pub fn allowed_accounts(model: &Model) -> Option<Vec<String>> {
    model
        .accounts
        .as_deref()
        .map(|list| list.split(',').map(str::to_owned).collect())
}

/// Every key, with its requests and cost this month.
pub async fn with_usage(db: &impl ConnectionTrait) -> Result<Vec<(Model, i64, f64)>, DbError> {
    let usage = usage_since(db, month_start(Utc::now())).await?;
    let keys = all(db).await?;
    Ok(keys
        .into_iter()
        .map(|key| {
            let (requests, cost) = usage
                .iter()
                .find(|(name, ..)| *name == key.name)
                .map_or((0, 0.0), |(_, requests, cost)| (*requests, *cost));
            (key, requests, cost)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_recognisable() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43, "32 bytes of base64");
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn a_month_starts_on_the_first_at_midnight_utc() {
        let now = Utc.with_ymd_and_hms(2026, 11, 29, 21, 5, 3).unwrap();
        assert_eq!(
            month_start(now),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
    }
}

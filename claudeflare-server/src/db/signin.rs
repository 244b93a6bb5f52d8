//! Sign-ins from Claude Code's `/login` (RFC 8628) and the bearer tokens they become, stored so
//! that every instance of a shared database honours them. Only SHA-256 digests of device codes
//! and tokens are stored.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, SqlErr,
};

use super::DbError;
use super::entities::{device_authorization, oauth_token};
use super::keys;

/// How long a device code may wait for its approval.
pub const DEVICE_CODE_LIFETIME: TimeDelta = TimeDelta::minutes(10);
/// The least time between two polls of one device code.
pub const POLL_INTERVAL_SECONDS: i32 = 5;
/// RFC 8628 §6.1: a base-20 alphabet, no vowels (no words) and no look-alikes.
const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// `bytes` random bytes, URL-safe base64.
fn random(bytes: usize) -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut buffer = vec![0u8; bytes];
    aes_gcm::aead::OsRng.fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// A user code: 8 letters of the base-20 alphabet as `XXXX-XXXX` (about 34 bits).
fn user_code() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut code = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            code.push('-');
        }
        // 256 is not a multiple of 20: draw again past the last whole multiple (240), so every
        // letter is as likely.
        let letter = loop {
            let byte = (aes_gcm::aead::OsRng.next_u32() & 0xff) as u8;
            if byte < 240 {
                break USER_CODE_ALPHABET[usize::from(byte % 20)];
            }
        };
        code.push(char::from(letter));
    }
    code
}

/// What a person types, as stored: upper case, the dash put back, spaces and other dashes gone.
pub fn normalize_user_code(typed: &str) -> String {
    let letters: String = typed
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}

/// A new sign-in: its device code (shown once, to the client) and user code.
pub struct NewSignIn {
    /// 256 random bits, URL-safe base64.
    pub device_code: String,
    /// `XXXX-XXXX`.
    pub user_code: String,
    /// Seconds it stays usable.
    pub expires_in: i64,
    /// Seconds between polls.
    pub interval: i32,
}

/// Start a sign-in for a client that says it is `user_agent` / `surface`.
pub async fn start(
    db: &impl ConnectionTrait,
    user_agent: Option<&str>,
    surface: Option<&str>,
) -> Result<NewSignIn, DbError> {
    let now = Utc::now();
    let device_code = random(32);
    // A user code already pending is drawn again (the column is unique).
    for _ in 0..5 {
        let code = user_code();
        let inserted = device_authorization::ActiveModel {
            device_digest: Set(keys::hash(&device_code)),
            user_code: Set(code.clone()),
            created_at: Set(now),
            expires_at: Set(now + DEVICE_CODE_LIFETIME),
            interval_seconds: Set(POLL_INTERVAL_SECONDS),
            state: Set("pending".into()),
            key_name: Set(None),
            user_agent: Set(user_agent.map(|s| s.chars().take(200).collect())),
            surface: Set(surface.map(|s| s.chars().take(100).collect())),
            last_poll_at: Set(None),
        }
        .insert(db)
        .await;
        match inserted {
            Ok(_) => {
                return Ok(NewSignIn {
                    device_code,
                    user_code: code,
                    expires_in: DEVICE_CODE_LIFETIME.num_seconds(),
                    interval: POLL_INTERVAL_SECONDS,
                });
            }
            Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(DbError::Query(sea_orm::DbErr::Custom(
        "no free user code was found".into(),
    )))
}

/// The pending sign-in of `user_code`, if it has not expired.
#[cfg(test)]
pub async fn pending(
    db: &impl ConnectionTrait,
    user_code: &str,
) -> Result<Option<device_authorization::Model>, DbError> {
    let found = device_authorization::Entity::find()
        .filter(device_authorization::Column::UserCode.eq(normalize_user_code(user_code)))
        .filter(device_authorization::Column::State.eq("pending"))
        .filter(device_authorization::Column::ExpiresAt.gt(Utc::now()))
        .one(db)
        .await?;
    Ok(found)
}

/// Every pending sign-in that has not expired, newest first (for the dashboard).
pub async fn all_pending(
    db: &impl ConnectionTrait,
) -> Result<Vec<device_authorization::Model>, DbError> {
    use sea_orm::QueryOrder;
    Ok(device_authorization::Entity::find()
        .filter(device_authorization::Column::State.eq("pending"))
        .filter(device_authorization::Column::ExpiresAt.gt(Utc::now()))
        .order_by_desc(device_authorization::Column::CreatedAt)
        .all(db)
        .await?)
}

/// Approve the pending sign-in of `user_code` for the client key `key_name` (or deny it);
/// `false` when there is no such pending sign-in.
pub async fn decide(
    db: &impl ConnectionTrait,
    user_code: &str,
    key_name: Option<&str>,
) -> Result<bool, DbError> {
    let state = if key_name.is_some() {
        "approved"
    } else {
        "denied"
    };
    let result = device_authorization::Entity::update_many()
        .col_expr(device_authorization::Column::State, Expr::value(state))
        .col_expr(
            device_authorization::Column::KeyName,
            Expr::value(key_name.map(str::to_owned)),
        )
        .filter(device_authorization::Column::UserCode.eq(normalize_user_code(user_code)))
        .filter(device_authorization::Column::State.eq("pending"))
        .filter(device_authorization::Column::ExpiresAt.gt(Utc::now()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// What a poll of the token endpoint with a device code gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Approved for this key: issue its tokens (the sign-in is now used).
    Approved(String),
    /// `authorization_pending`.
    Pending,
    /// `slow_down`: polled sooner than the interval.
    SlowDown,
    /// `access_denied`.
    Denied,
    /// `expired_token`.
    Expired,
    /// `invalid_grant`: unknown, or already used.
    Invalid,
}

/// Poll the sign-in of `device_code` at `now`.
pub async fn poll(
    db: &impl ConnectionTrait,
    device_code: &str,
    now: DateTime<Utc>,
) -> Result<Poll, DbError> {
    let digest = keys::hash(device_code);
    let Some(found) = device_authorization::Entity::find_by_id(digest.clone())
        .one(db)
        .await?
    else {
        return Ok(Poll::Invalid);
    };
    if found.expires_at <= now && found.state != "used" {
        return Ok(Poll::Expired);
    }
    let too_soon = found.last_poll_at.is_some_and(|at| {
        now - at
            < TimeDelta::seconds(i64::from(found.interval_seconds)) - TimeDelta::milliseconds(500)
    });
    device_authorization::Entity::update_many()
        .col_expr(device_authorization::Column::LastPollAt, Expr::value(now))
        .filter(device_authorization::Column::DeviceDigest.eq(digest.clone()))
        .exec(db)
        .await?;
    match found.state.as_str() {
        "pending" if too_soon => Ok(Poll::SlowDown),
        "pending" => Ok(Poll::Pending),
        "denied" => Ok(Poll::Denied),
        "approved" => {
            // Used once: of two polls at the same moment, one gets the tokens.
            let used = device_authorization::Entity::update_many()
                .col_expr(device_authorization::Column::State, Expr::value("used"))
                .filter(device_authorization::Column::DeviceDigest.eq(digest))
                .filter(device_authorization::Column::State.eq("approved"))
                .exec(db)
                .await?;
            match (used.rows_affected, found.key_name) {
                (1, Some(key)) => Ok(Poll::Approved(key)),
                _ => Ok(Poll::Invalid),
            }
        }
        _ => Ok(Poll::Invalid),
    }
}

/// A pair of bearer tokens.
pub struct Tokens {
    /// The client key they act as.
    pub key_name: String,
    /// The bearer.
    pub access_token: String,
    /// What renews it.
    pub refresh_token: String,
    /// Seconds the bearer lasts.
    pub expires_in: i64,
    /// When the bearer ends.
    pub access_expires_at: DateTime<Utc>,
}

/// Issue a pair for `key_name`, of the sign-in `grant` (a new one when `None`).
pub async fn issue(
    db: &impl ConnectionTrait,
    key_name: &str,
    grant: Option<&str>,
    access_lifetime: TimeDelta,
    refresh_lifetime: TimeDelta,
) -> Result<Tokens, DbError> {
    let now = Utc::now();
    let grant = grant.map_or_else(|| random(16), str::to_owned);
    let access_token = format!("cfa_{}", random(32));
    let refresh_token = format!("cfr_{}", random(32));
    for (token, kind, lifetime) in [
        (&access_token, "access", access_lifetime),
        (&refresh_token, "refresh", refresh_lifetime),
    ] {
        oauth_token::ActiveModel {
            digest: Set(keys::hash(token)),
            kind: Set(kind.into()),
            key_name: Set(key_name.to_owned()),
            grant: Set(grant.clone()),
            created_at: Set(now),
            expires_at: Set(now + lifetime),
        }
        .insert(db)
        .await?;
    }
    Ok(Tokens {
        key_name: key_name.to_owned(),
        access_token,
        refresh_token,
        expires_in: access_lifetime.num_seconds(),
        access_expires_at: now + access_lifetime,
    })
}

/// Trade `refresh_token` for a new pair (it is used up); `None` when it is unknown, expired
/// or revoked.
pub async fn refresh(
    db: &impl ConnectionTrait,
    refresh_token: &str,
    access_lifetime: TimeDelta,
    refresh_lifetime: TimeDelta,
) -> Result<Option<Tokens>, DbError> {
    let digest = keys::hash(refresh_token);
    let Some(found) = oauth_token::Entity::find_by_id(digest.clone())
        .filter(oauth_token::Column::Kind.eq("refresh"))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    // Deleted first: of two refreshes with one token, one wins.
    let deleted = oauth_token::Entity::delete_by_id(digest).exec(db).await?;
    if deleted.rows_affected != 1 || found.expires_at <= Utc::now() {
        return Ok(None);
    }
    issue(
        db,
        &found.key_name,
        Some(&found.grant),
        access_lifetime,
        refresh_lifetime,
    )
    .await
    .map(Some)
}

/// Revoke `token` (RFC 7009): an access token alone; a refresh token with every token of its
/// sign-in. Unknown tokens are no error.
pub async fn revoke(db: &impl ConnectionTrait, token: &str) -> Result<(), DbError> {
    let digest = keys::hash(token);
    let Some(found) = oauth_token::Entity::find_by_id(digest.clone())
        .one(db)
        .await?
    else {
        return Ok(());
    };
    if found.kind == "refresh" {
        oauth_token::Entity::delete_many()
            .filter(oauth_token::Column::Grant.eq(found.grant))
            .exec(db)
            .await?;
    } else {
        oauth_token::Entity::delete_by_id(digest).exec(db).await?;
    }
    Ok(())
}

/// The live bearer tokens (digest, key name, end), for every instance's memory.
pub async fn live_bearers(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
) -> Result<Vec<oauth_token::Model>, DbError> {
    Ok(oauth_token::Entity::find()
        .filter(oauth_token::Column::Kind.eq("access"))
        .filter(oauth_token::Column::ExpiresAt.gt(now))
        .all(db)
        .await?)
}

/// Delete what has ended: tokens past their end, sign-ins a day past theirs.
pub async fn trim(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<(), DbError> {
    oauth_token::Entity::delete_many()
        .filter(oauth_token::Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    device_authorization::Entity::delete_many()
        .filter(device_authorization::Column::ExpiresAt.lte(now - TimeDelta::days(1)))
        .exec(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_base_20_and_typed_loosely() {
        for _ in 0..50 {
            let code = user_code();
            assert_eq!(code.len(), 9);
            assert_eq!(&code[4..5], "-");
            assert!(
                code.bytes()
                    .filter(|b| *b != b'-')
                    .all(|b| USER_CODE_ALPHABET.contains(&b)),
                "{code}"
            );
        }
        assert_eq!(normalize_user_code(" wdjb mjht "), "WDJB-MJHT");
        assert_eq!(normalize_user_code("wdjb-mjht"), "WDJB-MJHT");
    }

    #[tokio::test]
    async fn a_sign_in_is_pending_then_approved_once_then_its_tokens_refresh_and_revoke() {
        let db = crate::db::open("sqlite::memory:").await.unwrap();
        let started = start(&db, Some("claude-code/2.1.332"), Some("claude_code"))
            .await
            .unwrap();
        let now = Utc::now();
        assert_eq!(
            poll(&db, &started.device_code, now).await.unwrap(),
            Poll::Pending
        );
        assert_eq!(
            poll(&db, &started.device_code, now + TimeDelta::seconds(1))
                .await
                .unwrap(),
            Poll::SlowDown
        );
        assert!(
            pending(&db, &started.user_code.to_lowercase())
                .await
                .unwrap()
                .is_some()
        );
        assert!(decide(&db, &started.user_code, Some("team")).await.unwrap());
        assert!(
            !decide(&db, &started.user_code, Some("other"))
                .await
                .unwrap(),
            "once"
        );
        let later = now + TimeDelta::seconds(10);
        assert_eq!(
            poll(&db, &started.device_code, later).await.unwrap(),
            Poll::Approved("team".into())
        );
        assert_eq!(
            poll(&db, &started.device_code, later + TimeDelta::seconds(10))
                .await
                .unwrap(),
            Poll::Invalid,
            "a device code gives its tokens once"
        );
        assert_eq!(poll(&db, "made-up", later).await.unwrap(), Poll::Invalid);

        let hours = TimeDelta::hours(8);
        let days = TimeDelta::days(30);
        let tokens = issue(&db, "team", None, hours, days).await.unwrap();
        assert_eq!(live_bearers(&db, Utc::now()).await.unwrap().len(), 1);
        let renewed = refresh(&db, &tokens.refresh_token, hours, days)
            .await
            .unwrap()
            .unwrap();
        assert!(
            refresh(&db, &tokens.refresh_token, hours, days)
                .await
                .unwrap()
                .is_none(),
            "a refresh token is used up"
        );
        assert_eq!(live_bearers(&db, Utc::now()).await.unwrap().len(), 2);
        revoke(&db, &renewed.refresh_token).await.unwrap();
        assert!(
            live_bearers(&db, Utc::now()).await.unwrap().is_empty(),
            "revoking the refresh token ends the sign-in's bearers"
        );
    }
}

//! Who may use the server (README, "Running it for a team").
//!
//! - With no client key, the server is for the machine it runs on: only loopback `Host` names
//!   (and `allowed_hosts`) are answered, so a web page cannot reach it through DNS rebinding.
//! - Once a key exists, `/v1/*` needs one (`x-api-key` or `authorization: Bearer`), and the API,
//!   the metrics and the dashboard need an admin key, or the session cookie of a dashboard login.
//! - A state-changing request a browser marks as cross-site is refused, whatever it carries, and
//!   `/api/*` takes bodies only as JSON: a cross-site page can neither read nor change anything
//!   (no CORS header is ever sent).
//!
//! Every check runs on the HTTP thread from memory: the keys are read from the database every
//! second (so a new or revoked key reaches every instance on a shared database within about
//! that), stored by their SHA-256, and found with one hash of the presented key and one map
//! lookup.
//!
//! Here: the key store and its reload loop. By concern: `limits` (a key's place in flight, its
//! requests per minute, its budget), `sessions` (dashboard logins), `bearers` (sign-ins from
//! Claude Code's `/login`), `browser` (loopback `Host` names, cross-site requests).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use claudeflare_tower::Setting;
use headers::authorization::Bearer;
use headers::{Authorization, HeaderMapExt, Host, Origin};
use http::{HeaderMap, Method, StatusCode, header};
use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::keys::{self, Limits};
use crate::db::{DbError, entities::client_key, signin};

mod bearers;
mod browser;
mod limits;
mod sessions;

use bearers::SignedIn;
pub use limits::InFlight;
use limits::Spent;
use sessions::Session;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "claudeflare_session";
/// How long a dashboard login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A client key as the server checks it.
#[derive(Debug)]
pub struct ClientKey {
    /// Its id (for `last_used_at`).
    pub id: String,
    /// Its name, which names its requests.
    pub name: Arc<str>,
    /// May use the API and the dashboard.
    pub admin: bool,
    /// Its limits.
    pub limits: Limits,
    /// The models it may ask for; `None`: any (or the config file's `models`).
    pub models: Option<Arc<[String]>>,
    /// The accounts its requests may use, by name; `None`: the whole pool.
    pub accounts: Option<Arc<[String]>>,
    /// The person's email, which Claude Code shows at sign-in.
    pub email: Option<String>,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// Its `--rpm` limit.
    per_minute: Option<crate::rpm::PerMinute>,
}

/// The keys, by the SHA-256 of the key.
#[derive(Debug, Default)]
struct KeySet {
    by_digest: HashMap<[u8; 32], Arc<ClientKey>>,
}

/// Why a request is refused, and how to say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// `error.type` of Anthropic's envelope, on `/v1`.
    pub kind: &'static str,
    /// What to say.
    pub message: String,
    /// `retry-after`, in seconds.
    pub retry_after: Option<u64>,
    /// Whether retrying can help; when not, the answer says `x-should-retry: false`, and
    /// Claude Code and the SDKs show it at once instead of retrying for minutes.
    pub retry: bool,
    /// More headers (a budget's usage-limit headers).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// 403, saying `message`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// `status`, saying `message`, in the error type of the gateway protocol's table for it.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let (kind, retry) = match status.as_u16() {
            400 | 415 => ("invalid_request_error", false),
            // A missing, wrong or revoked key: only a new one helps.
            401 => ("authentication_error", false),
            403 => ("permission_error", false),
            429 => ("rate_limit_error", true),
            _ => ("api_error", true),
        };
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            retry,
            headers: Vec::new(),
        }
    }
}

/// Keys, sessions and the access rules. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Setting<KeySet>,
    config: Setting<Config>,
    /// Dashboard logins by the SHA-256 (hex) of their cookie: this instance's and, reloaded
    /// from the database, every other instance's.
    sessions: Mutex<HashMap<String, Session>>,
    /// Ids of keys used since the last write of `last_used_at`.
    used: Mutex<HashSet<String>>,
    /// This month's estimated cost per key name: every instance's stored records, and this
    /// instance's own requests as they are recorded.
    spent: Mutex<Spent>,
    /// Bearer tokens of sign-ins from Claude Code's `/login`, by their SHA-256: this
    /// instance's and, reloaded from the database, every other instance's. Each acts as its
    /// client key.
    bearers: Mutex<HashMap<[u8; 32], SignedIn>>,
}

impl Access {
    /// No key yet; [`run`](Self::run) loads them.
    pub fn new(config: Setting<Config>) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: Setting::new(KeySet::default()),
                config,
                sessions: Mutex::default(),
                used: Mutex::default(),
                spent: Mutex::default(),
                bearers: Mutex::default(),
            }),
        }
    }

    /// Whether any client key exists.
    pub fn keys_exist(&self) -> bool {
        !self.inner.keys.current().by_digest.is_empty()
    }

    /// Load the keys from `db` now.
    pub async fn load(&self, db: &DatabaseConnection) -> Result<(), DbError> {
        let models = keys::all(db).await?;
        let current = self.inner.keys.current();
        let mut by_digest = HashMap::with_capacity(models.len());
        for model in models {
            let digest = decode_hash(&model.hash);
            let Some(digest) = digest else {
                tracing::warn!(
                    key = model.name,
                    "a client key's stored hash is not valid; it is ignored"
                );
                continue;
            };
            // An unchanged key keeps its entry, with its in-flight count and its rpm limit.
            let kept = current
                .by_digest
                .get(&digest)
                .filter(|k| same(k, &model))
                .cloned();
            by_digest.insert(digest, kept.unwrap_or_else(|| Arc::new(entry(&model))));
        }
        drop(current);
        self.inner.keys.set(KeySet { by_digest });
        Ok(())
    }

    /// Reload the keys twice a second (a key made or revoked on another instance of a shared
    /// database is honoured here within a second) and this month's spending every 2 s (this
    /// instance's own counts at once, see [`spend`](Self::spend)), and store when keys were
    /// last used every 10 s, until `stop`.
    pub async fn run(self, db: DatabaseConnection, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            if let Err(error) = self.load(&db).await {
                tracing::warn!(%error, "could not read the client keys; keeping the ones known");
            }
            // Logins need an admin key, bearers a key: without keys there is nothing to read.
            if self.keys_exist()
                && let Err(error) = self.load_sessions(&db).await
            {
                tracing::warn!(%error, "could not read the dashboard logins; keeping the ones known");
            }
            if self.keys_exist()
                && let Err(error) = self.load_bearers(&db).await
            {
                tracing::warn!(%error, "could not read the sign-ins' bearer tokens; keeping the ones known");
            }
            if ticks % 4 == 0 && self.keys_exist() {
                self.refresh_spending(&db).await;
            }
            if ticks % 20 == 0 {
                self.store_last_used(&db).await;
                if let Err(error) = keys::drop_ended_sessions(&db, Utc::now()).await {
                    tracing::warn!(%error, "could not delete the dashboard logins that ended");
                }
                if let Err(error) = signin::trim(&db, Utc::now()).await {
                    tracing::warn!(%error, "could not delete the sign-ins and tokens that ended");
                }
            }
            ticks += 1;
        }
        self.store_last_used(&db).await;
    }

    async fn store_last_used(&self, db: &DatabaseConnection) {
        let ids: Vec<String> = std::mem::take(
            &mut *self
                .inner
                .used
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if let Err(error) = keys::touch(db, &ids, Utc::now()).await {
            tracing::warn!(%error, "could not store when client keys were last used");
        }
    }

    /// The key `presented` is, if it is one: a client key, or a live bearer token of a
    /// sign-in, which acts as its key (a revoked key takes its bearers with it).
    pub fn find(&self, presented: &str) -> Option<Arc<ClientKey>> {
        let digest = keys::digest(presented);
        let keys = self.inner.keys.current();
        if let Some(key) = keys.by_digest.get(&digest) {
            return Some(Arc::clone(key));
        }
        let bearers = self.bearers();
        let bearer = bearers.get(&digest).filter(|b| b.until > Utc::now())?;
        keys.by_digest
            .values()
            .find(|key| key.name == bearer.key)
            .cloned()
    }

    /// The key named `name`, if it exists (not revoked).
    pub fn key_named(&self, name: &str) -> Option<Arc<ClientKey>> {
        self.inner
            .keys
            .current()
            .by_digest
            .values()
            .find(|key| &*key.name == name)
            .cloned()
    }

    /// The key a request presents: `x-api-key`, or `authorization: Bearer`.
    pub fn presented(headers: &HeaderMap) -> Option<Cow<'_, str>> {
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return Some(Cow::Borrowed(key.trim()));
        }
        let bearer = headers.typed_get::<Authorization<Bearer>>()?;
        Some(Cow::Owned(bearer.token().to_owned()))
    }
}

fn entry(model: &client_key::Model) -> ClientKey {
    let count = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    ClientKey {
        id: model.id.clone(),
        name: Arc::from(model.name.as_str()),
        admin: model.admin,
        limits: Limits {
            rpm: count(model.rpm),
            concurrency: count(model.concurrency),
            monthly_budget_usd: model.monthly_budget_usd,
        },
        models: keys::allowed_models(model).map(Arc::from),
        accounts: keys::allowed_accounts(model).map(Arc::from),
        email: model.email.clone(),
        in_flight: AtomicU64::new(0),
        per_minute: count(model.rpm).map(crate::rpm::PerMinute::new),
    }
}

/// Whether an entry still says what the stored key says.
fn same(key: &ClientKey, model: &client_key::Model) -> bool {
    let fresh = entry(model);
    key.id == fresh.id
        && key.name == fresh.name
        && key.admin == fresh.admin
        && key.limits == fresh.limits
        && key.models == fresh.models
        && key.accounts == fresh.accounts
        && key.email == fresh.email
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip() {
        let hash = keys::hash("cfk_x");
        assert_eq!(decode_hash(&hash), Some(keys::digest("cfk_x")));
        assert_eq!(decode_hash("zz"), None);
    }
}

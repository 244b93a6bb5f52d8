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

/// A dashboard login.
struct Session {
    key: Arc<str>,
    until: chrono::DateTime<Utc>,
    /// When this instance started it: a reload that was reading the database meanwhile must not
    /// drop it.
    started_here: Option<Instant>,
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

/// A bearer token: the key it acts as, until when.
struct SignedIn {
    key: Arc<str>,
    until: chrono::DateTime<Utc>,
    /// Issued by this instance then (kept across a reload that may have missed it).
    issued_here: Option<Instant>,
}

/// What each key spent in one calendar month (UTC).
#[derive(Default)]
struct Spent {
    month: Option<chrono::DateTime<Utc>>,
    by_key: HashMap<Arc<str>, f64>,
}

impl Spent {
    /// The map of `now`'s month, emptied when a new month began.
    fn of(&mut self, now: chrono::DateTime<Utc>) -> &mut HashMap<Arc<str>, f64> {
        let month = keys::month_start(now);
        if self.month != Some(month) {
            self.month = Some(month);
            self.by_key.clear();
        }
        &mut self.by_key
    }
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

    async fn refresh_spending(&self, db: &DatabaseConnection) {
        let now = Utc::now();
        match keys::usage_since(db, keys::month_start(now)).await {
            Ok(usage) => {
                let mut spent = self.spent();
                let by_key = spent.of(now);
                // The stored total, or this instance's count when it is ahead (its last
                // requests not stored yet).
                for (name, _, cost) in usage {
                    let entry = by_key.entry(Arc::from(name)).or_default();
                    *entry = entry.max(cost);
                }
            }
            Err(error) => tracing::warn!(%error, "could not read this month's spending per key"),
        }
    }

    fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.inner
            .spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Count `usd` to the key `name` at once: the request after the one that spent a budget is
    /// refused on this instance, whatever the database writer is doing.
    pub fn spend(&self, name: &str, usd: f64) {
        if usd <= 0.0 {
            return;
        }
        let mut spent = self.spent();
        let by_key = spent.of(Utc::now());
        match by_key.get_mut(name) {
            Some(total) => *total += usd,
            None => {
                by_key.insert(Arc::from(name), usd);
            }
        }
    }

    /// What the key `name` spent this month, as far as this instance knows.
    pub fn spent_by(&self, name: &str) -> f64 {
        self.spent()
            .of(Utc::now())
            .get(name)
            .copied()
            .unwrap_or(0.0)
    }

    /// Where `key` stands against its monthly budget, if it has one.
    pub fn standing(&self, key: &ClientKey) -> Option<crate::budget::Standing> {
        let budget = key.limits.monthly_budget_usd?;
        Some(crate::budget::Standing::new(
            self.spent_by(&key.name),
            budget,
            Utc::now(),
        ))
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

    /// A bearer token this instance just issued, usable here at once (the others read it
    /// from the database within a second).
    pub fn add_bearer(&self, token: &str, key: &str, until: chrono::DateTime<Utc>) {
        self.bearers().insert(
            keys::digest(token),
            SignedIn {
                key: Arc::from(key),
                until,
                issued_here: Some(Instant::now()),
            },
        );
    }

    /// Forget a bearer token (revoked here; the others drop it at their next reload).
    pub fn remove_bearer(&self, token: &str) {
        self.bearers().remove(&keys::digest(token));
    }

    fn bearers(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], SignedIn>> {
        self.inner
            .bearers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the stored bearer tokens: every instance's, and no more those revoked anywhere.
    async fn load_bearers(&self, db: &DatabaseConnection) -> Result<(), DbError> {
        let read_at = Instant::now();
        let stored = signin::live_bearers(db, Utc::now()).await?;
        let mut bearers: HashMap<[u8; 32], SignedIn> = stored
            .into_iter()
            .filter_map(|t| {
                let digest = decode_hash(&t.digest)?;
                let bearer = SignedIn {
                    key: Arc::from(t.key_name),
                    until: t.expires_at,
                    issued_here: None,
                };
                Some((digest, bearer))
            })
            .collect();
        let mut current = self.bearers();
        for (digest, bearer) in current.drain() {
            // Issued while the database was being read: it may not be in what was read.
            if bearer.issued_here.is_some_and(|at| at >= read_at) {
                bearers.entry(digest).or_insert(bearer);
            }
        }
        *current = bearers;
        Ok(())
    }

    /// The key a request presents: `x-api-key`, or `authorization: Bearer`.
    pub fn presented(headers: &HeaderMap) -> Option<Cow<'_, str>> {
        if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            return Some(Cow::Borrowed(key.trim()));
        }
        let bearer = headers.typed_get::<Authorization<Bearer>>()?;
        Some(Cow::Owned(bearer.token().to_owned()))
    }

    /// Whether a request's `Host` may be answered while no key exists: a loopback name, or one
    /// in `allowed_hosts`.
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.typed_get::<Host>() else {
            return false;
        };
        is_loopback(host.hostname()) || self.listed(&host)
    }

    /// Whether `host` is in `allowed_hosts` (by name, or name and port).
    fn listed(&self, host: &Host) -> bool {
        let config = self.inner.config.current();
        let with_port = host.to_string();
        config.allowed_hosts.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(host.hostname())
                || allowed.eq_ignore_ascii_case(&with_port)
        })
    }

    /// Whether a browser marks this state-changing request as cross-site: `Sec-Fetch-Site:
    /// cross-site`, or an `Origin` that is neither the request's `Host` nor in `allowed_hosts`.
    pub fn cross_site(&self, method: &Method, headers: &HeaderMap) -> bool {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return false;
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return true;
        }
        if !headers.contains_key(header::ORIGIN) {
            return false;
        }
        // `Origin: null` (a sandboxed frame, a file) or garbage: not this site.
        let Some(origin) = headers.typed_get::<Origin>().filter(|o| !o.is_null()) else {
            return true;
        };
        let authority = match origin.port() {
            Some(port) => format!("{}:{port}", origin.hostname()),
            None => origin.hostname().to_owned(),
        };
        let Ok(origin_host) = authority.parse::<http::uri::Authority>().map(Host::from) else {
            return true;
        };
        let same = headers
            .typed_get::<Host>()
            .is_some_and(|host| same_host(&host, &origin_host));
        !same && !self.listed(&origin_host)
    }

    /// Take a request of `key` in, or say which limit it is over. The guard ends it.
    pub fn admit(&self, key: &Arc<ClientKey>) -> Result<InFlight, Refusal> {
        let limits = key.limits;
        if let Some(standing) = self.standing(key) {
            if standing.spent_out() {
                return Err(standing.refusal(&key.name, Utc::now()));
            }
        }
        let before = key.in_flight.fetch_add(1, Ordering::AcqRel);
        // Counted in from here: dropping the guard (refused below, or at the response's end)
        // counts it out.
        let guard = InFlight(Arc::clone(key));
        if let Some(limit) = limits.concurrency {
            if before >= u64::from(limit) {
                return Err(Refusal {
                    retry_after: Some(1),
                    ..Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "the key `{}` is over its limit of {limit} requests in flight",
                            key.name
                        ),
                    )
                });
            }
        }
        if let (Some(rpm), Some(per_minute)) = (limits.rpm, &key.per_minute) {
            if let Err(wait) = per_minute.take() {
                return Err(Refusal {
                    retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                    ..Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "the key `{}` is over its limit of {rpm} requests per minute",
                            key.name
                        ),
                    )
                });
            }
        }
        let mut used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Copied once per key between two writes of `last_used_at`, not once per request.
        if !used.contains(&key.id) {
            used.insert(key.id.clone());
        }
        drop(used);
        Ok(guard)
    }

    /// Start a dashboard session for admin key `key`, stored so that every instance of the
    /// database honours it; returns the cookie's value (random, not the key; only its SHA-256
    /// is stored).
    pub async fn start_session(
        &self,
        db: &DatabaseConnection,
        key: &ClientKey,
    ) -> Result<String, DbError> {
        use aes_gcm::aead::rand_core::RngCore;
        let mut bytes = [0u8; 32];
        aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let digest = keys::hash(&token);
        let until = Utc::now() + SESSION_LIFETIME;
        keys::add_session(db, &digest, &key.name, until).await?;
        self.sessions().insert(
            digest,
            Session {
                key: Arc::clone(&key.name),
                until,
                started_here: Some(Instant::now()),
            },
        );
        Ok(token)
    }

    /// End the session `token`, on every instance.
    pub async fn end_session(&self, db: &DatabaseConnection, token: &str) -> Result<(), DbError> {
        let digest = keys::hash(token);
        self.sessions().remove(&digest);
        keys::end_session(db, &digest).await
    }

    /// Whether `token` is a live session of a key that still exists and is still admin.
    pub fn session_is_admin(&self, token: &str) -> bool {
        let digest = keys::hash(token);
        let sessions = self.sessions();
        let Some(session) = sessions.get(&digest).filter(|s| s.until > Utc::now()) else {
            return false;
        };
        self.inner
            .keys
            .current()
            .by_digest
            .values()
            .any(|k| k.admin && k.name == session.key)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the stored sessions: every instance's logins, and no more those ended anywhere.
    async fn load_sessions(&self, db: &DatabaseConnection) -> Result<(), DbError> {
        let read_at = Instant::now();
        let stored = keys::sessions(db, Utc::now()).await?;
        let mut sessions: HashMap<String, Session> = stored
            .into_iter()
            .map(|s| {
                let session = Session {
                    key: Arc::from(s.key_name),
                    until: s.expires_at,
                    started_here: None,
                };
                (s.digest, session)
            })
            .collect();
        let mut current = self.sessions();
        for (digest, session) in current.drain() {
            // Started while the database was being read: it may not be in what was read.
            if session.started_here.is_some_and(|at| at >= read_at) {
                sessions.entry(digest).or_insert(session);
            }
        }
        *current = sessions;
        Ok(())
    }

    /// The session token of a request's cookie, if it has one.
    pub fn session_token(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == SESSION_COOKIE)
            .map(|c| c.value().to_owned())
    }

    /// Whether a request carries admin rights: an admin key as `Bearer` (or `x-api-key`), or a
    /// dashboard session. `Err` says why not: 401 (nothing usable) or 403 (a key, not admin).
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(presented) = Self::presented(headers) {
            return match self.find(&presented) {
                Some(key) if key.admin => Ok(()),
                Some(key) => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("the key `{}` is not an admin key", key.name),
                )),
                None => Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid key")),
            };
        }
        if Self::session_token(headers).is_some_and(|t| self.session_is_admin(&t)) {
            return Ok(());
        }
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "an admin key is required (authorization: Bearer KEY, or log in on the dashboard)",
        ))
    }
}

/// A request of a key in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlight(Arc<ClientKey>);

impl InFlight {
    /// The key.
    pub fn key(&self) -> &Arc<ClientKey> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
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

/// Whether two hosts are the same name and port (an absent port being the scheme's default on
/// both sides: a browser leaves it out of `Origin` exactly when the `Host` leaves it out).
fn same_host(a: &Host, b: &Host) -> bool {
    a.hostname().eq_ignore_ascii_case(b.hostname()) && a.port() == b.port()
}

fn is_loopback(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &'static str) -> Host {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, http::HeaderValue::from_static(value));
        headers.typed_get::<Host>().unwrap()
    }

    #[test]
    fn loopback_names_with_any_port() {
        for value in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "127.1.2.3",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(is_loopback(host(value).hostname()), "{value}");
        }
        for value in [
            "example.com",
            "evil.localhost.example.com:80",
            "10.0.0.1:8080",
            "[::2]:1",
        ] {
            assert!(!is_loopback(host(value).hostname()), "{value}");
        }
    }

    #[test]
    fn hashes_round_trip() {
        let hash = keys::hash("cfk_x");
        assert_eq!(decode_hash(&hash), Some(keys::digest("cfk_x")));
        assert_eq!(decode_hash("zz"), None);
    }
}

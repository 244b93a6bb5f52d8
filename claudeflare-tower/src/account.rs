//! Accounts: what they are (name, mode, tier, credentials) and their live state.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, TimeDelta, Utc};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::egress::EgressProxy;
use crate::provider::{Backend, ModelMap};

/// How an account authenticates: a subscription's OAuth tokens, or an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// A Claude Pro/Max subscription: OAuth bearer token plus the `oauth-2025-04-20` beta flag.
    Max,
    /// An API key (a console key, or a compatible backend's), sent in the provider's header.
    Console,
}

impl Mode {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Max => "max",
            Mode::Console => "console",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max" => Ok(Mode::Max),
            "console" => Ok(Mode::Console),
            _ => Err(InvalidValue::new("mode", s, "max, console")),
        }
    }
}

/// Relative capacity of an account: Pro = 1, Max 5x = 5, Max 20x = 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Tier {
    /// Pro, or an API key of ordinary capacity.
    One,
    /// Max 5x.
    Five,
    /// Max 20x.
    Twenty,
}

impl Tier {
    /// The multiplier (1, 5 or 20).
    pub fn weight(self) -> u8 {
        match self {
            Tier::One => 1,
            Tier::Five => 5,
            Tier::Twenty => 20,
        }
    }
}

impl TryFrom<u8> for Tier {
    type Error = InvalidValue;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Tier::One),
            5 => Ok(Tier::Five),
            20 => Ok(Tier::Twenty),
            other => Err(InvalidValue::new("tier", &other.to_string(), "1, 5, 20")),
        }
    }
}

impl From<Tier> for u8 {
    fn from(tier: Tier) -> u8 {
        tier.weight()
    }
}

impl FromStr for Tier {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u8>()
            .map_err(|_| InvalidValue::new("tier", s, "1, 5, 20"))
            .and_then(Tier::try_from)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.weight())
    }
}

/// A value that is not one of the accepted ones, e.g. tier 3.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid {what} `{value}`: expected one of {expected}")]
pub struct InvalidValue {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl InvalidValue {
    fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        Self {
            what,
            value: value.to_owned(),
            expected,
        }
    }
}

/// The secret an account authenticates with. `Debug` never shows the secret.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A console API key (`sk-ant-api03-…`).
    ApiKey(SecretString),
    /// OAuth tokens of a subscription, or a cloud provider's access token with what gets the
    /// next one (Vertex AI: a service account's key).
    OAuth(OAuthTokens),
    /// AWS access keys, which sign each request (Bedrock's SigV4).
    Aws(AwsKeys),
}

/// AWS access keys: an access key id and its secret, and the session token of temporary
/// credentials. `Debug` shows none of them.
#[derive(Clone)]
pub struct AwsKeys {
    /// `AKIA…` (long-term) or `ASIA…` (temporary).
    pub access_key_id: SecretString,
    /// The secret access key.
    pub secret_access_key: SecretString,
    /// The session token of temporary credentials.
    pub session_token: Option<SecretString>,
}

impl fmt::Debug for AwsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKeys").finish_non_exhaustive()
    }
}

impl AwsKeys {
    /// Keys `access_key_id` and `secret_access_key`, with the session token of temporary ones.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: SecretString::from(access_key_id.into()),
            secret_access_key: SecretString::from(secret_access_key.into()),
            session_token: session_token.map(SecretString::from),
        }
    }

    fn same(&self, other: &Self) -> bool {
        let token = |keys: &Self| {
            keys.session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
        };
        self.access_key_id.expose_secret() == other.access_key_id.expose_secret()
            && self.secret_access_key.expose_secret() == other.secret_access_key.expose_secret()
            && token(self) == token(other)
    }
}

impl Credentials {
    /// A Google service account's key file (its JSON), for a [Vertex AI](crate::Vertex)
    /// account: the access token comes from it at the first request, and again before it
    /// expires.
    pub fn service_account(key: impl Into<String>) -> Self {
        Credentials::OAuth(OAuthTokens {
            access_token: SecretString::from(String::new()),
            refresh_token: SecretString::from(key.into()),
            expires_at: DateTime::<Utc>::UNIX_EPOCH,
        })
    }
}

/// An OAuth token pair and the access token's expiry.
#[derive(Debug, Clone)]
pub struct OAuthTokens {
    /// The bearer token (`sk-ant-oat01-…`).
    pub access_token: SecretString,
    /// The refresh token; it rotates on every refresh.
    pub refresh_token: SecretString,
    /// When the access token stops working.
    pub expires_at: DateTime<Utc>,
}

/// What an account is, as configured and stored.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Account {
    /// Stable identifier.
    pub id: String,
    /// Unique, human-chosen name.
    pub name: String,
    /// Subscription (OAuth) or API key.
    pub mode: Mode,
    /// Relative capacity.
    pub tier: Tier,
    /// Taken out of rotation by the user.
    pub paused: bool,
    /// The secret.
    pub credentials: Credentials,
    /// Its provider, priority, model map and egress proxy.
    pub route: Route,
    /// When the account was added.
    pub created_at: DateTime<Utc>,
    /// Live state to resume from (after a restart); default for a new account.
    pub live: LiveState,
}

/// Where an account's requests go and in which turn: its provider, its priority, the map of
/// the models it serves, and the proxy its traffic leaves through. Changed as a whole (the
/// server's `edit`), read on the request path without a lock.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Route {
    /// The provider that serves it, and what that provider needs of it (a base URL, a header
    /// style).
    pub backend: Backend,
    /// Lower goes first: strategies choose among the available accounts of the best priority
    /// that has one (0 by default).
    pub priority: u32,
    /// The models it serves and the name each goes upstream as; empty: every model, unchanged.
    pub model_map: ModelMap,
    /// The proxy all its traffic (requests, token refreshes, usage polls) goes through.
    pub proxy: Option<EgressProxy>,
    /// A group it belongs to, which a client can be bound to by name like an account (see
    /// [`RequestContext::allow_accounts`](crate::RequestContext::allow_accounts)).
    pub group: Option<String>,
}

impl Account {
    /// A console account using `api_key`, tier 1, with a fresh id.
    pub fn api_key(name: impl Into<String>, api_key: impl Into<String>) -> Self {
        Self::new(
            name,
            Mode::Console,
            Credentials::ApiKey(SecretString::from(api_key.into())),
        )
    }

    /// An account with a fresh id, tier 1, not paused.
    pub fn new(name: impl Into<String>, mode: Mode, credentials: Credentials) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            mode,
            tier: Tier::One,
            paused: false,
            credentials,
            route: Route::default(),
            created_at: Utc::now(),
            live: LiveState::default(),
        }
    }

    /// Set the tier.
    pub fn with_tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// Served by `backend` (Anthropic by default).
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.route.backend = backend;
        self
    }

    /// Set the priority (lower goes first; 0 by default).
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.route.priority = priority;
        self
    }

    /// Serve only the models `map` matches, under the names it gives them.
    pub fn with_model_map(mut self, map: ModelMap) -> Self {
        self.route.model_map = map;
        self
    }

    /// Send all of its traffic through `proxy`.
    pub fn with_proxy(mut self, proxy: EgressProxy) -> Self {
        self.route.proxy = Some(proxy);
        self
    }

    /// Put it in the group `name`.
    pub fn with_group(mut self, name: impl Into<String>) -> Self {
        self.route.group = Some(name.into());
        self
    }
}

/// The part of an account's state that changes with traffic and must survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LiveState {
    /// Out of rotation until then.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// The last `anthropic-ratelimit-unified-status` seen.
    pub rate_limit_status: Option<String>,
    /// The last unified reset time seen.
    pub rate_limit_reset: Option<DateTime<Utc>>,
    /// Last 5-hour window utilization seen (0–1 as sent by Anthropic).
    pub utilization_5h: Option<f64>,
    /// When the 5-hour window of `utilization_5h` resets.
    pub utilization_5h_reset: Option<DateTime<Utc>>,
    /// Last 7-day window utilization seen.
    pub utilization_7d: Option<f64>,
    /// When the 7-day window of `utilization_7d` resets.
    pub utilization_7d_reset: Option<DateTime<Utc>>,
    /// Start of the current sticky session, if any.
    pub session_start: Option<DateTime<Utc>>,
    /// Requests served in the current session.
    pub session_request_count: u64,
    /// Requests since the counters were last reset.
    pub request_count: u64,
    /// Requests over the account's lifetime.
    pub total_requests: u64,
    /// Time of the last request.
    pub last_used: Option<DateTime<Utc>>,
    /// Refresh failed definitively: the user must authenticate again.
    pub needs_reauth: bool,
    /// The upstream refused the account itself (a 403 `permission_error`: disabled or banned).
    /// It stays out of rotation until a person resumes or re-authenticates it.
    pub forbidden: bool,
    /// Why the account is out of rotation until a person acts (`needs_reauth` or `forbidden`),
    /// in words: the upstream's message or the refresh failure.
    pub status_reason: Option<String>,
}

impl LiveState {
    /// How much of its binding window the account has used (0–1): the larger of the 5-hour and
    /// 7-day utilization whose window has not reset by `now`. `None` when nothing is known.
    pub fn utilization(&self, now: DateTime<Utc>) -> Option<f64> {
        let current = |value: Option<f64>, reset: Option<DateTime<Utc>>| {
            value.filter(|_| reset.is_none_or(|reset| reset > now))
        };
        let five = current(self.utilization_5h, self.utilization_5h_reset);
        let seven = current(self.utilization_7d, self.utilization_7d_reset);
        match (five, seven) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Whether an account takes traffic, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AccountStatus {
    /// In rotation.
    Active,
    /// Paused by the user.
    Paused,
    /// Limited until `rate_limited_until`.
    RateLimited,
    /// Refresh failed definitively, or the API key was refused.
    NeedsReauth,
    /// The upstream refused the account (disabled or banned) until a person acts.
    Forbidden,
}

impl AccountStatus {
    /// The status as the API spells it (`rate_limited`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Paused => "paused",
            AccountStatus::RateLimited => "rate_limited",
            AccountStatus::NeedsReauth => "needs_reauth",
            AccountStatus::Forbidden => "forbidden",
        }
    }
}

/// An account in the pool: fixed identity plus mutable state behind a short-lived lock.
///
/// The lock is a `std::sync::Mutex` held for a few field reads or writes and never across an
/// `.await`.
pub struct AccountEntry {
    id: Arc<str>,
    name: Arc<str>,
    /// The name as a response header value (`None` if it cannot be one), made once.
    name_header: Option<HeaderValue>,
    mode: Mode,
    created_at: DateTime<Utc>,
    route: ArcSwap<Route>,
    state: Mutex<State>,
    /// Serialises token refreshes of this account (single flight).
    pub(crate) refresh_lock: tokio::sync::Mutex<()>,
}

pub(crate) struct State {
    pub(crate) tier: Tier,
    pub(crate) paused: bool,
    pub(crate) credentials: Credentials,
    /// The credential as its provider puts it in a header, made once per credential so the hot
    /// path does not format it per request (the provider formats it: see
    /// [`AccountEntry::credential`]).
    pub(crate) credential_value: Option<HeaderValue>,
    /// Bumped on every credential change, so a 401 for an old token does not void a new one.
    pub(crate) token_generation: u64,
    pub(crate) token_rejected: bool,
    pub(crate) live: LiveState,
}

impl fmt::Debug for AccountEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountEntry")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl AccountEntry {
    /// Wrap an account for the pool.
    pub fn new(account: Account) -> Self {
        Self {
            name_header: HeaderValue::from_str(&account.name).ok(),
            id: account.id.into(),
            name: account.name.into(),
            mode: account.mode,
            created_at: account.created_at,
            route: ArcSwap::from_pointee(account.route),
            state: Mutex::new(State {
                tier: account.tier,
                paused: account.paused,
                credentials: account.credentials,
                credential_value: None,
                token_generation: 0,
                token_rejected: false,
                live: account.live,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Stable identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shared name, cheap to clone into records.
    pub fn name_arc(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// The name as a header value, if it can be one.
    pub(crate) fn name_header(&self) -> Option<&HeaderValue> {
        self.name_header.as_ref()
    }

    /// Subscription or API key.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Its provider, priority, model map and proxy, as of now (lock-free).
    pub fn route(&self) -> arc_swap::Guard<Arc<Route>> {
        self.route.load()
    }

    /// Its priority (lower goes first).
    pub fn priority(&self) -> u32 {
        self.route.load().priority
    }

    /// The name of its provider (`anthropic`, `anthropic-compatible`, …).
    pub fn provider_name(&self) -> String {
        self.route.load().backend.name().to_owned()
    }

    /// Change its provider, priority, model map or proxy; requests in flight keep the route
    /// they started with.
    pub fn set_route(&self, route: Route) {
        if **self.route.load() != route {
            // Another provider or header style formats the credential its own way.
            self.lock().credential_value = None;
            self.route.store(Arc::new(route));
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind, still consistent field by
        // field, so carrying on with it is better than taking the account down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tier.
    pub fn tier(&self) -> Tier {
        self.lock().tier
    }

    /// Change the tier.
    pub fn set_tier(&self, tier: Tier) {
        self.lock().tier = tier;
    }

    /// Paused by the user.
    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    /// Pause or resume.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
    }

    /// Requests since the counters were last reset (without copying the whole live state).
    pub fn request_count(&self) -> u64 {
        self.lock().live.request_count
    }

    /// Whether the user must authenticate it again.
    pub fn needs_reauth(&self) -> bool {
        self.lock().live.needs_reauth
    }

    /// Whether it is out of rotation until a person acts (needs re-authentication or forbidden).
    pub fn blocked(&self) -> bool {
        let state = self.lock();
        state.live.needs_reauth || state.live.forbidden
    }

    /// A copy of the live state.
    pub fn live(&self) -> LiveState {
        self.lock().live.clone()
    }

    /// Whether it can take a request at `now`.
    pub fn is_available(&self, now: DateTime<Utc>) -> bool {
        let state = self.lock();
        !state.paused
            && !state.live.needs_reauth
            && !state.live.forbidden
            && !limited_at(&state.live, now)
    }

    /// When its rate limit ends, if it is limited at `now`.
    pub fn limited_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let state = self.lock();
        state.live.rate_limited_until.filter(|until| *until > now)
    }

    /// Its status at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> AccountStatus {
        status_of(&self.lock(), now)
    }

    /// When the access token expires (subscription accounts).
    pub fn token_expires_at(&self) -> Option<DateTime<Utc>> {
        match &self.lock().credentials {
            Credentials::OAuth(tokens) => Some(tokens.expires_at),
            _ => None,
        }
    }

    /// When it was added.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// Start of the sticky session if it is still open at `now`.
    pub fn session_open(&self, now: DateTime<Utc>, duration: TimeDelta) -> Option<DateTime<Utc>> {
        self.lock()
            .live
            .session_start
            .filter(|start| *start <= now && now - *start < duration)
    }

    /// Open a new sticky session at `now`.
    pub fn start_session(&self, now: DateTime<Utc>) {
        let mut state = self.lock();
        state.live.session_start = Some(now);
        state.live.session_request_count = 0;
    }

    /// Take it out of rotation until `until`.
    #[cfg(test)]
    pub(crate) fn mark_rate_limited(&self, until: DateTime<Utc>) {
        self.lock().live.rate_limited_until = Some(until);
    }

    /// Mark that the user must authenticate it again, saying why. Returns the live state after
    /// the change, for the store.
    pub(crate) fn mark_needs_reauth(&self, reason: impl Into<String>) -> LiveState {
        let mut state = self.lock();
        state.live.needs_reauth = true;
        state.live.status_reason = Some(reason.into());
        state.live.clone()
    }

    /// Take it out of rotation because the upstream refused the account itself, with the
    /// upstream's message. Returns the live state after the change, for the store.
    pub(crate) fn mark_forbidden(&self, reason: impl Into<String>) -> LiveState {
        let mut state = self.lock();
        state.live.forbidden = true;
        state.live.status_reason = Some(reason.into());
        state.live.clone()
    }

    /// Put a forbidden account back into rotation (a person resumed it).
    pub fn clear_forbidden(&self) {
        let mut state = self.lock();
        if state.live.forbidden {
            state.live.forbidden = false;
            if !state.live.needs_reauth {
                state.live.status_reason = None;
            }
        }
    }

    /// Record utilization of the 5-hour and 7-day windows (fractions, 0–1) and when they reset;
    /// `None` leaves a window as it was.
    pub fn set_utilization(
        &self,
        five_hour: Option<(f64, Option<DateTime<Utc>>)>,
        seven_day: Option<(f64, Option<DateTime<Utc>>)>,
    ) -> LiveState {
        let mut state = self.lock();
        let live = &mut state.live;
        if let Some((value, reset)) = five_hour {
            live.utilization_5h = Some(value);
            live.utilization_5h_reset = reset;
        }
        if let Some((value, reset)) = seven_day {
            live.utilization_7d = Some(value);
            live.utilization_7d_reset = reset;
        }
        live.clone()
    }

    /// How much of its binding window it has used at `now` (0–1), if known.
    pub fn utilization(&self, now: DateTime<Utc>) -> Option<f64> {
        self.lock().live.utilization(now)
    }

    /// Replace the credentials (after a refresh or re-authentication); clears `needs_reauth`.
    pub fn set_credentials(&self, credentials: Credentials) {
        let mut state = self.lock();
        state.credential_value = None;
        state.credentials = credentials;
        state.token_generation += 1;
        state.token_rejected = false;
        state.live.needs_reauth = false;
        state.live.forbidden = false;
        state.live.status_reason = None;
    }

    /// Update identity-independent fields from a stored account (see
    /// [`StoreSync::update_from`](crate::StoreSync::update_from)).
    pub(crate) fn adopt_settings(&self, account: &Account) {
        self.set_route(account.route.clone());
        let mut state = self.lock();
        state.tier = account.tier;
        state.paused = account.paused;
        if !same_credentials(&state.credentials, &account.credentials) {
            state.credential_value = None;
            state.credentials = account.credentials.clone();
            state.token_generation += 1;
            state.token_rejected = false;
        }
        state.live.needs_reauth = account.live.needs_reauth;
        state.live.forbidden = account.live.forbidden;
        state.live.status_reason = account.live.status_reason.clone();
    }

    /// Account name, mode and proxy, for logs and the token refresher.
    pub fn info(&self) -> AccountInfo {
        AccountInfo {
            id: self.id.to_string(),
            name: self.name.to_string(),
            mode: self.mode,
            backend: self.route.load().backend.clone(),
            proxy: self.route.load().proxy.clone(),
        }
    }

    /// The generation of its credential, if that credential is usable at `now` with `margin`
    /// to spare (not refused, not expiring).
    pub(crate) fn usable(&self, now: DateTime<Utc>, margin: TimeDelta) -> Option<u64> {
        let state = self.lock();
        if state.token_rejected {
            return None;
        }
        if let Credentials::OAuth(tokens) = &state.credentials {
            if tokens.expires_at - margin <= now {
                return None;
            }
        }
        Some(state.token_generation)
    }

    /// Call `f` with its credentials, unless the upstream refused them: for a provider that
    /// derives each request's credential from them (a signature over the request).
    pub fn with_credentials<R>(&self, f: impl FnOnce(&Credentials) -> R) -> Option<R> {
        let state = self.lock();
        (!state.token_rejected).then(|| f(&state.credentials))
    }

    /// Its credential as a header value, formatted by `format` (the provider's header style:
    /// see [`provider::bearer`](Credentials::bearer)) the first time and kept until the
    /// credential or the route changes. `None` once the upstream refused it, or when `format`
    /// cannot make a header of it. For a provider's `prepare`, and for calls of your own on the
    /// account's behalf (the usage endpoint, say).
    pub fn credential(
        &self,
        format: impl FnOnce(&Credentials) -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        let mut state = self.lock();
        if state.token_rejected {
            return None;
        }
        if state.credential_value.is_none() {
            state.credential_value = format(&state.credentials).map(|mut value| {
                value.set_sensitive(true);
                value
            });
        }
        state.credential_value.clone()
    }

    /// Upstream answered 401 to the credential of `generation`: do not use it again.
    pub(crate) fn reject_credential(&self, generation: u64) {
        let mut state = self.lock();
        if state.token_generation == generation {
            state.token_rejected = true;
        }
    }

    pub(crate) fn refresh_token(&self) -> Option<SecretString> {
        match &self.lock().credentials {
            Credentials::OAuth(tokens) => Some(tokens.refresh_token.clone()),
            _ => None,
        }
    }
}

fn same_credentials(a: &Credentials, b: &Credentials) -> bool {
    match (a, b) {
        (Credentials::ApiKey(a), Credentials::ApiKey(b)) => a.expose_secret() == b.expose_secret(),
        (Credentials::OAuth(a), Credentials::OAuth(b)) => {
            a.access_token.expose_secret() == b.access_token.expose_secret()
                && a.refresh_token.expose_secret() == b.refresh_token.expose_secret()
                && a.expires_at == b.expires_at
        }
        (Credentials::Aws(a), Credentials::Aws(b)) => a.same(b),
        _ => false,
    }
}

fn limited_at(live: &LiveState, now: DateTime<Utc>) -> bool {
    live.rate_limited_until.is_some_and(|until| until > now)
}

fn status_of(state: &State, now: DateTime<Utc>) -> AccountStatus {
    if state.live.needs_reauth {
        AccountStatus::NeedsReauth
    } else if state.live.forbidden {
        AccountStatus::Forbidden
    } else if state.paused {
        AccountStatus::Paused
    } else if limited_at(&state.live, now) {
        AccountStatus::RateLimited
    } else {
        AccountStatus::Active
    }
}

/// Identity of an account, without secrets.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AccountInfo {
    /// Stable identifier.
    pub id: String,
    /// Name.
    pub name: String,
    /// Subscription or API key.
    pub mode: Mode,
    /// Its provider, whose refresh grant renews its tokens.
    pub backend: Backend,
    /// The proxy its traffic goes through, which a refresh must use too.
    pub proxy: Option<EgressProxy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_accepts_only_1_5_20() {
        assert_eq!("5".parse::<Tier>().unwrap(), Tier::Five);
        assert_eq!(Tier::try_from(20).unwrap(), Tier::Twenty);
        let err = "3".parse::<Tier>().unwrap_err().to_string();
        assert_eq!(err, "invalid tier `3`: expected one of 1, 5, 20");
        assert!("x".parse::<Tier>().is_err());
        assert!("console".parse::<Mode>().is_ok());
        assert!("pro".parse::<Mode>().is_err());
    }

    #[test]
    fn status_prefers_reauth_then_pause_then_limit() {
        let now = Utc::now();
        let entry = AccountEntry::new(Account::api_key("a", "sk-secret"));
        assert_eq!(entry.status(now), AccountStatus::Active);
        entry.mark_rate_limited(now + TimeDelta::seconds(30));
        assert_eq!(entry.status(now), AccountStatus::RateLimited);
        assert_eq!(
            entry.status(now + TimeDelta::seconds(31)),
            AccountStatus::Active
        );
        entry.set_paused(true);
        assert_eq!(entry.status(now), AccountStatus::Paused);
        entry
            .mark_forbidden("OAuth authentication is currently not allowed for this organization.");
        assert_eq!(entry.status(now), AccountStatus::Forbidden);
        entry.mark_needs_reauth("the refresh token was rejected");
        assert_eq!(entry.status(now), AccountStatus::NeedsReauth);
        assert!(!entry.is_available(now + TimeDelta::hours(1)));
        assert_eq!(
            entry.live().status_reason.as_deref(),
            Some("the refresh token was rejected")
        );
    }

    #[test]
    fn forbidden_stays_out_of_rotation_until_cleared() {
        let now = Utc::now();
        let entry = AccountEntry::new(Account::api_key("a", "k"));
        let live = entry.mark_forbidden("banned");
        assert!(live.forbidden);
        assert!(
            !entry.is_available(now + TimeDelta::days(30)),
            "no cooldown heals it"
        );
        assert_eq!(entry.live().status_reason.as_deref(), Some("banned"));
        entry.clear_forbidden();
        assert!(entry.is_available(now));
        assert_eq!(entry.live().status_reason, None);
    }

    #[test]
    fn utilization_is_the_binding_window_until_it_resets() {
        let now = Utc::now();
        let entry = AccountEntry::new(Account::api_key("a", "k"));
        assert_eq!(entry.utilization(now), None);
        entry.set_utilization(
            Some((0.5, Some(now + TimeDelta::hours(1)))),
            Some((0.9, Some(now + TimeDelta::days(2)))),
        );
        assert_eq!(entry.utilization(now), Some(0.9));
        // The 5-hour window resets; the 7-day one still binds.
        entry.set_utilization(Some((0.99, Some(now + TimeDelta::minutes(5)))), None);
        assert_eq!(entry.utilization(now), Some(0.99));
        assert_eq!(entry.utilization(now + TimeDelta::minutes(6)), Some(0.9));
        assert_eq!(entry.utilization(now + TimeDelta::days(3)), None);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let entry = AccountEntry::new(Account::api_key("a", "sk-ant-api03-topsecret"));
        let debug = format!("{entry:?} {:?}", entry.lock().credentials);
        assert!(!debug.contains("topsecret"), "{debug}");
        let header = entry.credential(Credentials::plain).unwrap();
        assert!(header.is_sensitive());
    }

    #[test]
    fn a_401_for_an_old_token_does_not_void_a_new_one() {
        let now = Utc::now();
        let tokens = |access: &str| {
            Credentials::OAuth(OAuthTokens {
                access_token: access.to_owned().into(),
                refresh_token: "rt".to_owned().into(),
                expires_at: now + TimeDelta::hours(8),
            })
        };
        let entry = AccountEntry::new(Account::new("m", Mode::Max, tokens("old")));
        let old_generation = entry.usable(now, TimeDelta::zero()).unwrap();
        entry.set_credentials(tokens("new"));
        entry.reject_credential(old_generation);
        assert!(entry.usable(now, TimeDelta::zero()).is_some());
        let header = entry.credential(Credentials::bearer).unwrap();
        assert_eq!(header, "Bearer new", "the new token, formatted anew");
        let generation = entry.usable(now, TimeDelta::zero()).unwrap();
        entry.reject_credential(generation);
        assert!(entry.usable(now, TimeDelta::zero()).is_none());
        assert!(entry.credential(Credentials::bearer).is_none());
        // Expiring within the margin counts as unusable.
        entry.set_credentials(tokens("newer"));
        assert!(entry.usable(now, TimeDelta::hours(9)).is_none());
    }
}

//! Table models (see the `migrations` crate for the schema).

/// `accounts`: identity, credentials and live state of each account.
pub mod account {
    use sea_orm::entity::prelude::*;

    /// One account.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        /// Stable id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Unique name.
        #[sea_orm(unique)]
        pub name: String,
        /// "anthropic", "anthropic-compatible", "bedrock" or "vertex".
        pub provider: String,
        /// A compatible backend's or a cloud's base URL; null for Anthropic.
        pub base_url: Option<String>,
        /// A cloud account's region.
        pub region: Option<String>,
        /// A Vertex AI account's Google Cloud project.
        pub project: Option<String>,
        /// Where a Bedrock account's credentials come from: `keys` (AWS keys, encrypted in
        /// `api_key`), `api-key` (a Bedrock API key there), `profile:NAME`, `environment`.
        pub aws_credentials: Option<String>,
        /// The header a compatible backend's key goes in (`x-api-key`, `bearer`).
        pub auth_header: Option<String>,
        /// Lower goes first.
        pub priority: i32,
        /// `PATTERN=MODEL,…`; null for none.
        pub model_map: Option<String>,
        /// The egress proxy URL, encrypted (it may hold a password).
        pub proxy: Option<String>,
        /// The group it belongs to (a client key can be bound to it by name).
        pub account_group: Option<String>,
        /// "max" or "console".
        pub mode: String,
        /// 1, 5 or 20.
        pub tier: i32,
        /// Paused by the user.
        pub paused: bool,
        /// Console API key.
        pub api_key: Option<String>,
        /// OAuth access token.
        pub access_token: Option<String>,
        /// OAuth refresh token.
        pub refresh_token: Option<String>,
        /// Access token expiry.
        pub token_expires_at: Option<DateTimeUtc>,
        /// Added at.
        pub created_at: DateTimeUtc,
        /// Bumped by every change from the CLI or API, so running servers pick it up.
        pub version: i64,
        /// Bumped by `reset-stats`, so a running server zeroes its counters too.
        pub counters_epoch: i64,
        /// Out of rotation until.
        pub rate_limited_until: Option<DateTimeUtc>,
        /// Last unified status.
        pub rate_limit_status: Option<String>,
        /// Last unified reset.
        pub rate_limit_reset: Option<DateTimeUtc>,
        /// Last 5-hour utilization.
        pub utilization_5h: Option<f64>,
        /// Last 7-day utilization.
        pub utilization_7d: Option<f64>,
        /// Sticky session start.
        pub session_start: Option<DateTimeUtc>,
        /// Requests in the session.
        pub session_request_count: i64,
        /// Requests since the last reset.
        pub request_count: i64,
        /// Lifetime requests.
        pub total_requests: i64,
        /// Last request.
        pub last_used: Option<DateTimeUtc>,
        /// Refresh failed definitively.
        pub needs_reauth: bool,
        /// Bumped by every change of the tokens.
        pub token_version: i64,
        /// A process is refreshing the tokens until then.
        pub refresh_lease_until: Option<DateTimeUtc>,
        /// The last subscription usage fetched (JSON).
        pub usage: Option<String>,
        /// The upstream refused the account (403 `permission_error`) until a person acts.
        pub forbidden: bool,
        /// Why the account is out of rotation until a person acts, in words.
        pub status_reason: Option<String>,
        /// When the window of `utilization_5h` resets.
        pub utilization_5h_reset: Option<DateTimeUtc>,
        /// When the window of `utilization_7d` resets.
        pub utilization_7d_reset: Option<DateTimeUtc>,
        /// Bumped by every write of the live state, so other instances see it changed.
        pub live_version: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `requests`: the request history.
pub mod request {
    use sea_orm::entity::prelude::*;

    /// One client request, serialised as the request object of `/api/requests`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
    #[sea_orm(table_name = "requests")]
    pub struct Model {
        /// claudeflare's request id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Arrival.
        pub timestamp: DateTimeUtc,
        /// Method.
        pub method: String,
        /// Path and query.
        pub path: String,
        /// Serving account id.
        #[serde(skip)]
        pub account_id: Option<String>,
        /// Serving account name.
        #[serde(rename = "account")]
        pub account_name: Option<String>,
        /// The serving account's provider (`anthropic`, `anthropic-compatible`, …).
        pub provider: Option<String>,
        /// Status sent.
        pub status: Option<i32>,
        /// Succeeded.
        pub success: bool,
        /// Error.
        pub error: Option<String>,
        /// Total time.
        pub response_time_ms: i64,
        /// Time to first byte.
        pub first_byte_ms: Option<i64>,
        /// Time the upstream took to answer.
        pub upstream_ms: Option<i64>,
        /// Account switches.
        pub failover_attempts: i32,
        /// The model that served it.
        pub model: Option<String>,
        /// The model the client asked for.
        pub requested_model: Option<String>,
        /// Streaming request.
        pub stream: bool,
        /// Input tokens.
        pub input_tokens: i64,
        /// Output tokens.
        pub output_tokens: i64,
        /// Cache reads.
        pub cache_read_input_tokens: i64,
        /// Cache writes.
        pub cache_creation_input_tokens: i64,
        /// Estimated cost.
        pub cost_usd: f64,
        /// Whether a price was found for its model (else `cost_usd` counts it as 0).
        pub price_known: bool,
        /// The name of the client key the request came with (null when none was required).
        pub api_key: Option<String>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `client_keys`: who may use the balancer (and, with `admin`, its API and dashboard).
pub mod client_key {
    use sea_orm::entity::prelude::*;

    /// One client key; the key itself is never stored, only its SHA-256.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "client_keys")]
    pub struct Model {
        /// Stable id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Unique name.
        #[sea_orm(unique)]
        pub name: String,
        /// SHA-256 of the key, hex.
        #[sea_orm(unique)]
        pub hash: String,
        /// The key's first characters.
        pub hint: String,
        /// May use the API and the dashboard.
        pub admin: bool,
        /// Requests per minute, at most.
        pub rpm: Option<i64>,
        /// Requests in flight, at most.
        pub concurrency: Option<i64>,
        /// Estimated cost per calendar month (UTC), at most.
        pub monthly_budget_usd: Option<f64>,
        /// The models it may ask for, comma-separated; `None`: any.
        pub models: Option<String>,
        /// The accounts its requests may use (account or group names, comma-separated);
        /// `None`: all.
        pub accounts: Option<String>,
        /// The email its sign-ins from Claude Code show (`keys add … --email`).
        pub email: Option<String>,
        /// Created at.
        pub created_at: DateTimeUtc,
        /// Last request with it.
        pub last_used_at: Option<DateTimeUtc>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `dashboard_sessions`: the dashboard's logins, shared by every instance of a database.
pub mod dashboard_session {
    use sea_orm::entity::prelude::*;

    /// One login; the cookie's value is never stored, only its SHA-256.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "dashboard_sessions")]
    pub struct Model {
        /// SHA-256 of the cookie's value, hex.
        #[sea_orm(primary_key, auto_increment = false)]
        pub digest: String,
        /// The admin key that logged in.
        pub key_name: String,
        /// Ends then.
        pub expires_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `pricing_catalogues`: the price catalogues installed by `pricing update` or `pricing_url`;
/// the newest is in force.
pub mod pricing_catalogue {
    use sea_orm::entity::prelude::*;

    /// One installed catalogue.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "pricing_catalogues")]
    pub struct Model {
        /// Grows with each installation.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// When it was installed.
        pub installed_at: DateTimeUtc,
        /// The file or URL it was read from.
        pub origin: String,
        /// Its `as_of`.
        pub as_of: String,
        /// The catalogue, as JSON.
        pub catalogue: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `device_authorizations`: sign-ins from Claude Code's `/login` (RFC 8628), pending until a
/// person approves them.
pub mod device_authorization {
    use sea_orm::entity::prelude::*;

    /// One sign-in; the device code is never stored, only its SHA-256.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "device_authorizations")]
    pub struct Model {
        /// SHA-256 of the device code, hex.
        #[sea_orm(primary_key, auto_increment = false)]
        pub device_digest: String,
        /// What the person types on `/device` (`WDJB-MJHT`).
        #[sea_orm(unique)]
        pub user_code: String,
        /// Asked for then.
        pub created_at: DateTimeUtc,
        /// Unusable after.
        pub expires_at: DateTimeUtc,
        /// The least time between two polls.
        pub interval_seconds: i32,
        /// `pending`, `approved`, `denied` or `used`.
        pub state: String,
        /// The client key it was approved for.
        pub key_name: Option<String>,
        /// The client's `User-Agent` (`claude-code/2.1.332`).
        pub user_agent: Option<String>,
        /// The client's `surface` (`claude_code`).
        pub surface: Option<String>,
        /// The last poll of the token endpoint.
        pub last_poll_at: Option<DateTimeUtc>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `oauth_tokens`: the bearer tokens sign-ins became (access and refresh), each acting as a
/// client key; only their SHA-256 is stored.
pub mod oauth_token {
    use sea_orm::entity::prelude::*;

    /// One token.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "oauth_tokens")]
    pub struct Model {
        /// SHA-256 of the token, hex.
        #[sea_orm(primary_key, auto_increment = false)]
        pub digest: String,
        /// `access` or `refresh`.
        pub kind: String,
        /// The client key it acts as.
        pub key_name: String,
        /// The sign-in it comes from (shared by the pair, and by the pairs its refreshes made).
        pub grant: String,
        /// Issued then.
        pub created_at: DateTimeUtc,
        /// Ends then.
        pub expires_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

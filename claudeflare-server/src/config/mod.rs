//! Configuration: defaults < JSON file < environment < CLI flags (figment), the file's location,
//! and atomic write-back of changes made through the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeDelta;
use claudeflare_tower as strategy;
use claudeflare_tower::RetryConfig;
use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized};
use serde::{Deserialize, Serialize};

use crate::pricing::Price;

mod names;
mod upgrade;

pub use names::{LogFormat, LogLevel, StrategyName};
use upgrade::{oauth_default, upgraded};
pub use upgrade::{upgrade_file, upgrade_message};

/// Every setting, under the names users write (the README's "Configuration").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Address to listen on.
    pub host: String,
    /// Load-balancing strategy.
    pub lb_strategy: StrategyName,
    /// Length of a sticky session.
    pub session_duration_ms: u64,
    /// Retries per account.
    pub retry_attempts: u32,
    /// First retry delay.
    pub retry_delay_ms: u64,
    /// Delay multiplier per retry.
    pub retry_backoff: f64,
    /// OAuth client id.
    pub client_id: String,
    /// DEBUG, INFO, WARN or ERROR.
    pub log_level: LogLevel,
    /// pretty or json.
    pub log_format: LogFormat,
    /// Where requests go.
    pub upstream_url: String,
    /// OAuth token endpoint.
    pub oauth_token_url: String,
    /// OAuth authorize URL for Pro/Max.
    pub oauth_authorize_url_max: String,
    /// OAuth authorize URL for console.
    pub oauth_authorize_url_console: String,
    /// OAuth redirect URI.
    pub oauth_redirect_uri: String,
    /// Creates an API key for console OAuth accounts.
    pub create_api_key_url: String,
    /// Largest request body accepted.
    pub max_request_body_bytes: usize,
    /// How long a whole request body may take to arrive, in milliseconds (408 past it).
    pub body_read_timeout_ms: u64,
    /// Bytes of request bodies buffered across all connections at most (503 past it).
    pub max_buffered_body_bytes: usize,
    /// Largest size of the spill file, where request records wait while the database takes
    /// none; what is beyond it is dropped.
    pub spill_max_bytes: u64,
    /// Days of request history kept.
    pub request_retention_days: u32,
    /// Subscription usage endpoint.
    pub oauth_usage_url: String,
    /// How often subscription usage is fetched, in seconds; 0 turns it off.
    pub usage_poll_interval_seconds: u64,
    /// Move new sessions off a subscription whose 5-hour or 7-day utilization reached this
    /// (0–1); 1 turns it off.
    pub rotate_at_utilization: f64,
    /// Client connections served at once; more are answered 503 (also held under the process's
    /// file-descriptor limit).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, or leave a keep-alive
    /// connection idle, before it is closed.
    pub header_read_timeout_ms: u64,
    /// On SIGTERM or Ctrl-C, how long requests in flight (streams included) may take to finish
    /// before they are cut.
    pub shutdown_grace_seconds: u64,
    /// Price overrides (USD per million tokens) by whole model id, or a pattern with `*`.
    pub pricing: BTreeMap<String, Price>,
    /// A price catalogue to install at start and every 24 hours (an http(s) URL or a file).
    pub pricing_url: Option<String>,
    /// The models requests may ask for (whole ids); empty: any. A key's own list wins.
    /// (Shared, not copied, by each request it limits.)
    pub models: std::sync::Arc<[String]>,
    /// An OTLP/HTTP collector (base URL) that Claude Code's telemetry is forwarded to;
    /// none: it is dropped.
    pub otlp_endpoint: Option<String>,
    /// How long a bearer token from Claude Code's `/login` lasts (8 hours).
    pub access_token_lifetime_seconds: u64,
    /// How long its refresh token lasts (30 days).
    pub refresh_token_lifetime_seconds: u64,
    /// Claude Code's managed settings (`GET /managed/settings`): `{"default": {...}, "keys":
    /// {"NAME": {...}}}`; none: no policy.
    pub managed_settings: Option<serde_json::Value>,
    /// A PEM certificate chain to serve https with (rustls), with `tls_key`; none: plain http
    /// (for a reverse proxy in front, or loopback).
    pub tls_cert: Option<String>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// `Host` names answered besides the loopback ones while no client key exists.
    pub allowed_hosts: Vec<String>,
    /// Serve on a non-loopback `host` with no client key (anyone who can reach the port may
    /// then use every account).
    pub allow_unauthenticated: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8080,
            host: "127.0.0.1".into(),
            lb_strategy: StrategyName::Session,
            session_duration_ms: 5 * 3600 * 1000,
            retry_attempts: 3,
            retry_delay_ms: 1000,
            retry_backoff: 2.0,
            client_id: claudeflare_tower::Anthropic::DEFAULT_CLIENT_ID.into(),
            log_level: LogLevel::Info,
            log_format: LogFormat::Pretty,
            upstream_url: claudeflare_tower::Anthropic::DEFAULT_UPSTREAM_URL.into(),
            oauth_token_url: oauth_default("oauth_token_url"),
            oauth_authorize_url_max: oauth_default("oauth_authorize_url_max"),
            oauth_authorize_url_console: oauth_default("oauth_authorize_url_console"),
            oauth_redirect_uri: oauth_default("oauth_redirect_uri"),
            create_api_key_url: "https://api.anthropic.com/api/oauth/claude_cli/create_api_key"
                .into(),
            max_request_body_bytes: claudeflare_tower::DEFAULT_BODY_LIMIT,
            body_read_timeout_ms: 60_000,
            max_buffered_body_bytes: claudeflare_tower::DEFAULT_BUFFERED_LIMIT,
            spill_max_bytes: 256 << 20,
            request_retention_days: 30,
            oauth_usage_url: "https://api.anthropic.com/api/oauth/usage".into(),
            usage_poll_interval_seconds: 300,
            rotate_at_utilization: strategy::DEFAULT_ROTATE_AT,
            max_connections: 1024,
            header_read_timeout_ms: 30_000,
            shutdown_grace_seconds: 30,
            pricing: BTreeMap::new(),
            pricing_url: None,
            models: std::sync::Arc::from([]),
            otlp_endpoint: None,
            access_token_lifetime_seconds: 8 * 3600,
            refresh_token_lifetime_seconds: 30 * 24 * 3600,
            managed_settings: None,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: Vec::new(),
            allow_unauthenticated: false,
        }
    }
}

/// File keys, which are also `CLAUDEFLARE_<KEY>` in the environment.
const KEYS: [&str; 38] = [
    "port",
    "host",
    "lb_strategy",
    "session_duration_ms",
    "retry_attempts",
    "retry_delay_ms",
    "retry_backoff",
    "client_id",
    "log_level",
    "log_format",
    "upstream_url",
    "oauth_token_url",
    "oauth_authorize_url_max",
    "oauth_authorize_url_console",
    "oauth_redirect_uri",
    "create_api_key_url",
    "max_request_body_bytes",
    "body_read_timeout_ms",
    "max_buffered_body_bytes",
    "spill_max_bytes",
    "request_retention_days",
    "oauth_usage_url",
    "usage_poll_interval_seconds",
    "rotate_at_utilization",
    "max_connections",
    "header_read_timeout_ms",
    "shutdown_grace_seconds",
    "pricing",
    "pricing_url",
    "models",
    "otlp_endpoint",
    "access_token_lifetime_seconds",
    "refresh_token_lifetime_seconds",
    "managed_settings",
    "tls_cert",
    "tls_key",
    "allowed_hosts",
    "allow_unauthenticated",
];

/// Environment names without the prefix, kept from the original tool.
pub const SEED_ENV: [&str; 10] = [
    "PORT",
    "HOST",
    "LB_STRATEGY",
    "SESSION_DURATION_MS",
    "RETRY_ATTEMPTS",
    "RETRY_DELAY_MS",
    "RETRY_BACKOFF",
    "CLIENT_ID",
    "LOG_LEVEL",
    "LOG_FORMAT",
];

/// Settings given on the command line (highest precedence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `--host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `--tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// `--tls-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Chosen through the API while running: it holds over the environment until the next start
    /// (the file has it too, by then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb_strategy: Option<StrategyName>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but is not valid.
    #[error("configuration error: {0}")]
    Invalid(String),
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where the configuration file is: `$CLAUDEFLARE_CONFIG_PATH`, else the platform's config folder.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CLAUDEFLARE_CONFIG_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    config_dir().join("claudeflare").join("claudeflare.json")
}

fn config_dir() -> PathBuf {
    if cfg!(windows) {
        if let Some(dir) = std::env::var_os("LOCALAPPDATA") {
            return PathBuf::from(dir);
        }
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .unwrap_or_default();
    PathBuf::from(home).join(".config")
}

/// The folder of the configuration file (where the key file lives too).
pub fn config_folder(config_path: &Path) -> &Path {
    config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// The database URL: `$DATABASE_URL`, else `$CLAUDEFLARE_DB_PATH`, else `claude-accounts.db`
/// beside the config file.
pub fn database_url(config_path: &Path) -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    let path = std::env::var_os("CLAUDEFLARE_DB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| config_folder(config_path).join("claude-accounts.db"));
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Create the config file with defaults if it is missing (folder 0700, file 0600).
pub fn ensure_file(path: &Path) -> Result<(), ConfigError> {
    if path.exists() {
        return Ok(());
    }
    let json = serde_json::to_string_pretty(&file_defaults()).unwrap_or_default();
    write_atomically(path, &json)
}

/// What a new config file holds: the defaults, without the empty pricing table.
fn file_defaults() -> serde_json::Value {
    let mut value = serde_json::to_value(Config::default()).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("pricing");
    }
    value
}

/// Load the configuration from `path`, the environment and `overrides`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        action: "cannot read the configuration file",
        path: path.to_owned(),
        source,
    })?;
    // Check the JSON first: figment's error for a syntax error is less precise.
    if let Err(error) = serde_json::from_str::<serde_json::Value>(&text) {
        return Err(ConfigError::Invalid(format!(
            "{} is not valid JSON: {error}",
            path.display()
        )));
    }
    let seed = Env::raw()
        .filter(|key| {
            SEED_ENV
                .iter()
                .any(|seed| key.as_str().eq_ignore_ascii_case(seed))
        })
        .map(|key| key.as_str().to_ascii_lowercase().into());
    let prefixed = Env::prefixed("CLAUDEFLARE_")
        .filter(|key| KEYS.iter().any(|k| key.as_str().eq_ignore_ascii_case(k)));
    let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Json::file_exact(path))
        .merge(seed)
        .merge(prefixed)
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(|error| ConfigError::Invalid(format!("in {}: {error}", path.display())))?;
    for (key, value) in [
        ("oauth_token_url", &mut config.oauth_token_url),
        (
            "oauth_authorize_url_max",
            &mut config.oauth_authorize_url_max,
        ),
        (
            "oauth_authorize_url_console",
            &mut config.oauth_authorize_url_console,
        ),
        ("oauth_redirect_uri", &mut config.oauth_redirect_uri),
    ] {
        if let Some(today) = upgraded(key, value) {
            *value = today.to_owned();
        }
    }
    config
        .validate()
        .map_err(|problem| ConfigError::Invalid(format!("in {}: {problem}", path.display())))?;
    Ok(config)
}

impl Config {
    /// Check values serde cannot: names from a list, URLs, ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !self.retry_backoff.is_finite() || self.retry_backoff < 1.0 {
            return Err(format!(
                "retry_backoff must be a number of at least 1, not {}",
                self.retry_backoff
            ));
        }
        if self.session_duration_ms == 0 {
            return Err("session_duration_ms must be more than 0".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.header_read_timeout_ms == 0 {
            return Err("header_read_timeout_ms must be more than 0".into());
        }
        if !(self.rotate_at_utilization > 0.0 && self.rotate_at_utilization <= 1.0) {
            return Err(format!(
                "rotate_at_utilization must be a fraction above 0 and at most 1 (1 turns rotation off), not {}",
                self.rotate_at_utilization
            ));
        }
        for (key, url) in [
            ("upstream_url", &self.upstream_url),
            ("oauth_token_url", &self.oauth_token_url),
            ("oauth_authorize_url_max", &self.oauth_authorize_url_max),
            (
                "oauth_authorize_url_console",
                &self.oauth_authorize_url_console,
            ),
            ("oauth_redirect_uri", &self.oauth_redirect_uri),
            ("create_api_key_url", &self.create_api_key_url),
            ("oauth_usage_url", &self.oauth_usage_url),
        ]
        .into_iter()
        .chain(
            self.otlp_endpoint
                .as_ref()
                .map(|url| ("otlp_endpoint", url)),
        ) {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("{key} `{url}` is not a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!("{key} `{url}` must be an http:// or https:// URL"));
            }
        }
        if let Some(url) = &self.pricing_url {
            if url.trim().is_empty() {
                return Err(
                    "pricing_url is empty; remove it, or give an http(s) URL or a file".into(),
                );
            }
            if url.contains("://") && !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "pricing_url `{url}` must be an http:// or https:// URL, or a file"
                ));
            }
        }
        crate::pricing::check_overrides(&self.pricing).map_err(|e| e.to_string())?;
        if let Some(model) = self
            .models
            .iter()
            .find(|m| m.trim().is_empty() || m.contains(char::is_whitespace))
        {
            return Err(format!("models: `{model}` is not a model id"));
        }
        Ok(())
    }

    /// The retry policy these settings describe.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            attempts: self.retry_attempts,
            delay: Duration::from_millis(self.retry_delay_ms),
            backoff: self.retry_backoff,
        }
    }

    /// The session length.
    pub fn session_duration(&self) -> TimeDelta {
        TimeDelta::milliseconds(i64::try_from(self.session_duration_ms).unwrap_or(i64::MAX))
    }

    /// The strategy these settings name.
    pub fn strategy(&self) -> Box<dyn strategy::Strategy> {
        self.strategy_named(self.lb_strategy)
    }

    /// The built-in strategy called `name`, with these settings (session length, rotation).
    pub fn strategy_named(&self, name: StrategyName) -> Box<dyn strategy::Strategy> {
        match name {
            StrategyName::Session => Box::new(self.session()),
            StrategyName::LeastRequests => Box::new(strategy::LeastRequests),
            StrategyName::RoundRobin => Box::new(strategy::RoundRobin::default()),
            StrategyName::Weighted => Box::new(strategy::Weighted),
            StrategyName::WeightedRoundRobin => Box::new(strategy::WeightedRoundRobin::default()),
        }
    }

    fn session(&self) -> strategy::Session {
        strategy::Session::new(self.session_duration()).rotate_at(self.rotate_at_utilization)
    }

    /// `upstream_url` as a URI (validated at load).
    pub fn upstream_uri(&self) -> http::Uri {
        self.upstream_url.parse().unwrap_or_else(|_| {
            http::Uri::from_static(claudeflare_tower::Anthropic::DEFAULT_UPSTREAM_URL)
        })
    }
}

/// Serialises the read-modify-write of the config file within this process: two API changes at
/// once must not each write back the file as it was before the other.
static WRITE_BACK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Set `key` to `value` in the config file, keeping everything else as it is.
pub fn write_key(path: &Path, key: &str, value: serde_json::Value) -> Result<(), ConfigError> {
    let _writing = WRITE_BACK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        action: "cannot read the configuration file",
        path: path.to_owned(),
        source,
    })?;
    let mut json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ConfigError::Invalid(format!("{} is not valid JSON: {e}", path.display())))?;
    let Some(map) = json.as_object_mut() else {
        return Err(ConfigError::Invalid(format!(
            "{} does not hold a JSON object",
            path.display()
        )));
    };
    map.insert(key.to_owned(), value);
    let text = serde_json::to_string_pretty(&json).unwrap_or_default();
    write_atomically(path, &text)
}

/// Write through a temporary file of its own in the same folder (created 0600) and a rename, so
/// a reader never sees half a file and two writers never share a temporary file. The folder is
/// created 0700.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), ConfigError> {
    use std::io::Write as _;
    let io = |action: &'static str| {
        move |source| ConfigError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let dir = config_folder(path);
    crate::fsutil::create_private_dir(dir).map_err(io("cannot create the folder of"))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io("cannot write"))?;
    temp.write_all(contents.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io("cannot write"))?;
    temp.persist(path)
        .map(drop)
        .map_err(|error| io("cannot replace")(error.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_write_backs_keep_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("claudeflare.json");
        write_atomically(&path, "{}").unwrap();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        write_key(&path, &format!("key{i}"), serde_json::json!(round)).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for i in 0..8 {
            assert_eq!(json[format!("key{i}")], 9, "{json}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}

//! Command-line interface (clap).

use clap::{Parser, Subcommand, ValueEnum};
use claudeflare_tower::{Mode, Tier};

/// claudeflare: a load balancer for Claude accounts.
///
/// Run without a command to start the server. Commands that change accounts work while the
/// server runs; it picks changes up within 2 seconds.
#[derive(Debug, Parser)]
#[command(name = "claudeflare-server", version, about, long_about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy, API and dashboard.
    Serve {
        /// Port to listen on (overrides `port` / PORT).
        #[arg(long)]
        port: Option<u16>,
        /// Address to listen on (overrides `host` / HOST).
        #[arg(long)]
        host: Option<String>,
        /// Serve https with this PEM certificate chain (overrides `tls_cert`); needs --tls-key.
        #[arg(long)]
        tls_cert: Option<String>,
        /// The PEM private key of --tls-cert (overrides `tls_key`).
        #[arg(long)]
        tls_key: Option<String>,
    },
    /// Add an account through OAuth (prints a URL to open, then asks for the code), from an
    /// existing console API key with --api-key, an Anthropic-compatible backend with
    /// --provider anthropic-compatible --base-url URL --api-key KEY, Claude on AWS Bedrock with
    /// --provider bedrock --region R (and AWS keys, a profile or a Bedrock API key), or on
    /// Vertex AI with --provider vertex --project P --region R --service-account-file F.
    Add {
        /// A unique name for the account.
        name: String,
        /// max (Claude Pro/Max subscription) or console (API key).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Relative capacity: 1 (Pro, API key), 5 (Max 5x) or 20 (Max 20x).
        #[arg(long, value_parser = parse_tier)]
        tier: Option<Tier>,
        /// Use this API key instead of the OAuth flow.
        #[arg(long)]
        api_key: Option<String>,
        /// Who serves it: anthropic (default), anthropic-compatible (a backend that speaks
        /// the Messages API at its own --base-url: z.ai, Moonshot, DeepSeek, MiniMax,
        /// OpenRouter), bedrock or vertex.
        #[arg(long, value_enum, default_value_t = ProviderArg::Anthropic)]
        provider: ProviderArg,
        /// The compatible backend's API, e.g. https://api.z.ai/api/anthropic, or a cloud's own
        /// endpoint in place of the region's (https, or http on loopback).
        #[arg(long)]
        base_url: Option<String>,
        /// The header the compatible backend takes its key in.
        #[arg(long, value_enum)]
        auth_header: Option<AuthHeaderArg>,
        /// `--priority`, `--model-map`, `--proxy`.
        #[command(flatten)]
        route: RouteArgs,
        /// `--region`, `--project`, and the cloud's credentials.
        #[command(flatten)]
        cloud: Box<CloudArgs>,
    },
    /// Change an account's priority, model map, egress proxy or (compatible backends and
    /// clouds) base URL.
    Edit {
        /// The account's name (or id).
        name: String,
        /// The compatible backend's or the cloud's new base URL.
        #[arg(long)]
        base_url: Option<String>,
        /// `--priority`, `--model-map`, `--proxy`.
        #[command(flatten)]
        route: RouteArgs,
    },
    /// List accounts.
    List {
        /// As JSON (the objects of /api/accounts).
        #[arg(long)]
        json: bool,
        /// Only the accounts of this provider (anthropic, anthropic-compatible, bedrock, vertex).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Remove an account.
    Remove {
        /// The account's name (or id).
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Take an account out of rotation.
    Pause {
        /// The account's name (or id).
        name: String,
    },
    /// Put a paused account back into rotation.
    Resume {
        /// The account's name (or id).
        name: String,
    },
    /// Change an account's tier.
    SetTier {
        /// The account's name (or id).
        name: String,
        /// 1, 5 or 20.
        #[arg(value_parser = parse_tier)]
        tier: Tier,
    },
    /// Zero every account's request counters.
    ResetStats,
    /// Delete the request history.
    ClearHistory,
    /// Sign an account in again (after its refresh token was refused, or the secret key was
    /// lost), keeping its id, tier, counters and history.
    Reauth {
        /// The account's name (or id).
        name: String,
        /// For a console account: use this API key instead of the OAuth flow.
        #[arg(long)]
        api_key: Option<String>,
    },
    /// Refresh the OAuth tokens of subscription accounts now (all, or the one named).
    Refresh {
        /// The account's name (or id).
        name: Option<String>,
    },
    /// Client keys: who may use the balancer, and (admin keys) its API and dashboard.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prices: what is in force, and installing a new catalogue without a release.
    Pricing {
        /// What to do.
        #[command(subcommand)]
        command: PricingCommand,
    },
    /// The terminal dashboard, over the HTTP API of a running server.
    Tui {
        /// The server (default: this machine, on the configured port).
        #[arg(long)]
        url: Option<String>,
        /// An admin key, needed once client keys exist.
        #[arg(long, env = "CLAUDEFLARE_ADMIN_KEY", hide_env_values = true)]
        key: Option<String>,
    },
}

/// The settings every account takes, on `add` and `edit`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RouteArgs {
    /// Lower goes first: the next priority serves only when none of this one is available
    /// (default 0).
    #[arg(long)]
    pub priority: Option<u32>,
    /// The models it serves and the name each goes upstream as: PATTERN=MODEL pairs, globs,
    /// the first match wins (`claude-opus-*=glm-4.6,claude-*=glm-4.5-air`); `none` to remove.
    #[arg(long)]
    pub model_map: Option<String>,
    /// Send all its traffic (requests, token refreshes, usage polls) through this proxy:
    /// http://, https:// or socks5:// (user:password@ allowed); `none` to remove.
    #[arg(long)]
    pub proxy: Option<String>,
    /// Put it in this group, which `keys add --accounts` can name; `none` to remove.
    #[arg(long)]
    pub group: Option<String>,
}

/// Where a cloud account is and what it authenticates with, on `add`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CloudArgs {
    /// Bedrock or Vertex AI: the region (`us-east-1`; `us-east5`, `europe-west1`, `global`).
    #[arg(long)]
    pub region: Option<String>,
    /// Vertex AI: the Google Cloud project id.
    #[arg(long)]
    pub project: Option<String>,
    /// Vertex AI: the service account's key file (JSON, from the Cloud console), stored
    /// encrypted.
    #[arg(long)]
    pub service_account_file: Option<std::path::PathBuf>,
    /// Bedrock: an AWS access key id, with --aws-secret-access-key; both stored encrypted.
    #[arg(long)]
    pub aws_access_key_id: Option<String>,
    /// Bedrock: the secret of --aws-access-key-id.
    #[arg(long)]
    pub aws_secret_access_key: Option<String>,
    /// Bedrock: the session token of temporary keys.
    #[arg(long)]
    pub aws_session_token: Option<String>,
    /// Bedrock: read the keys from this profile of ~/.aws/credentials whenever the server
    /// loads the account (nothing is stored). Without keys, a profile or an API key, the
    /// server's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are used.
    #[arg(long)]
    pub aws_profile: Option<String>,
    /// Bedrock: a Bedrock API key (sent as a bearer), stored encrypted.
    #[arg(long)]
    pub bedrock_api_key: Option<String>,
}

impl CloudArgs {
    /// Whether any was given.
    pub fn any(&self) -> bool {
        self.region.is_some()
            || self.project.is_some()
            || self.service_account_file.is_some()
            || self.aws_access_key_id.is_some()
            || self.aws_secret_access_key.is_some()
            || self.aws_session_token.is_some()
            || self.aws_profile.is_some()
            || self.bedrock_api_key.is_some()
    }
}

/// `--provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// Anthropic's API: subscriptions and console keys.
    Anthropic,
    /// A backend that speaks the Messages API at its own base URL.
    AnthropicCompatible,
    /// Claude on AWS Bedrock.
    Bedrock,
    /// Claude on Google Vertex AI.
    Vertex,
}

/// `--auth-header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthHeaderArg {
    /// `x-api-key: KEY` (the default).
    XApiKey,
    /// `authorization: Bearer KEY`.
    Bearer,
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a client key and print it (once: only its hash is stored).
    Add {
        /// A unique name for the key (it names the key's requests in the history).
        name: String,
        /// May also use the API, the metrics and the dashboard.
        #[arg(long)]
        admin: bool,
        /// Requests per minute, at most.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rpm: Option<u32>,
        /// Requests in flight, at most.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
        /// Estimated cost per calendar month (UTC), in USD, at most.
        #[arg(long, value_parser = parse_budget)]
        monthly_budget_usd: Option<f64>,
        /// The only models the key may ask for (whole ids, comma-separated); `GET /v1/models`
        /// then lists them. Default: any (or the config file's `models`).
        #[arg(long, value_delimiter = ',', value_parser = parse_model)]
        models: Vec<String>,
        /// The only accounts the key's requests may use (account or group names,
        /// comma-separated). Default: the whole pool.
        #[arg(long, value_delimiter = ',')]
        accounts: Vec<String>,
        /// The person's email: Claude Code shows it (and asks to confirm it) when they sign in
        /// with `/login` for this key.
        #[arg(long)]
        email: Option<String>,
    },
    /// List the keys (name, admin, limits, created, last used, requests and cost this month;
    /// never the key).
    List {
        /// As JSON (the objects of /api/keys).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it are refused from then on.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// `pricing …`.
#[derive(Debug, Subcommand)]
pub enum PricingCommand {
    /// Check a price catalogue (a JSON file, or an http(s) URL) and install it in the
    /// database: every server on it uses it within 2 seconds, and at every later start.
    Update {
        /// The catalogue: a file, or an http:// or https:// URL.
        source: String,
    },
    /// The prices in force: the catalogue's, and the config file's overrides.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_model(value: &str) -> Result<String, String> {
    let id = value.trim();
    if id.is_empty() || id.contains(char::is_whitespace) || id.contains(',') {
        return Err(format!(
            "`{value}` is not a model id (e.g. claude-opus-5-5)"
        ));
    }
    Ok(id.to_owned())
}

fn parse_budget(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(budget) if budget.is_finite() && budget >= 0.0 => Ok(budget),
        _ => Err(format!(
            "`{value}` is not an amount of US dollars (e.g. 25 or 7.5)"
        )),
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A Claude Pro/Max subscription, through OAuth.
    Max,
    /// A console account: an API key.
    Console,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Max => Mode::Max,
            ModeArg::Console => Mode::Console,
        }
    }
}

fn parse_tier(value: &str) -> Result<Tier, String> {
    value.parse::<Tier>().map_err(|e| e.to_string())
}

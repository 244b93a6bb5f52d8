//! The account commands of the CLI. They work on the database directly, also while the server
//! runs (it picks changes up within 2 seconds).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, bail};
use chrono::{SecondsFormat, Utc};
use claudeflare_tower::RefreshError;
use claudeflare_tower::{Account, AccountStatus, Backend, Credentials, EgressProxy, Mode, Tier};

use crate::views::AccountView;
use sea_orm::DatabaseConnection;

use crate::cli::ModeArg;
use crate::config::{self, Config};
use crate::db::{self, accounts, requests};
use crate::oauth;
use crate::secrets::Cipher;
use crate::usage::{Usage, Window};

mod pricing;
mod route;

pub use pricing::pricing;
pub use route::{Adding, edit};

/// What the commands work with: the server's database, its secret key and configuration.
pub struct Context {
    db: DatabaseConnection,
    cipher: Cipher,
    config: Config,
}

/// Open the database the server uses.
pub async fn open() -> anyhow::Result<Context> {
    let path = config::config_path();
    refuse_to_replace_a_held_database(&config::database_url(&path))?;
    config::ensure_file(&path)?;
    let upgraded = config::upgrade_file(&path)?;
    if !upgraded.is_empty() {
        eprintln!("note: {}", config::upgrade_message(&path, &upgraded));
    }
    let config = config::load(&path, &config::Overrides::default())?;
    let db = db::open(&config::database_url(&path)).await?;
    let cipher = Cipher::load(config::config_folder(&path))?;
    accounts::seal_plaintext(&db, &cipher).await?;
    Ok(Context { db, cipher, config })
}

/// A SQLite database that is missing while a server still has it open was deleted under that
/// server (its configuration folder removed, say). Creating a new, empty one in its place would
/// split the accounts between a file nobody can see and one the server does not use: refuse, and
/// say what happened.
fn refuse_to_replace_a_held_database(url: &str) -> anyhow::Result<()> {
    let Some(path) = db::sqlite_path(url) else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    let holders = crate::health::holders_of_deleted(&path);
    if let Some(pid) = holders.first() {
        bail!(
            "the database {} was deleted while a claudeflare server (pid {pid}) still has it open; \
             refusing to create a new, empty one in its place. Stop that server (it holds the accounts \
             in memory only) or restore the file, then try again",
            path.display()
        );
    }
    Ok(())
}

fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// The mode: given, or asked on a terminal.
fn choose_mode(mode: Option<ModeArg>) -> anyhow::Result<Mode> {
    if let Some(mode) = mode {
        return Ok(mode.into());
    }
    if !on_terminal() {
        bail!(
            "no terminal to ask on: pass --mode max (Claude Pro/Max subscription) or --mode console"
        );
    }
    let choice = dialoguer::Select::new()
        .with_prompt("Account type")
        .items(&[
            "max: a Claude Pro/Max subscription",
            "console: an Anthropic Console account (API key)",
        ])
        .default(0)
        .interact()?;
    Ok(if choice == 0 {
        Mode::Max
    } else {
        Mode::Console
    })
}

/// The tier: given, 1 for console accounts, or asked on a terminal.
fn choose_tier(tier: Option<Tier>, mode: Mode) -> anyhow::Result<Tier> {
    if let Some(tier) = tier {
        return Ok(tier);
    }
    if mode == Mode::Console {
        return Ok(Tier::One);
    }
    if !on_terminal() {
        bail!("no terminal to ask on: pass --tier 1 (Pro), 5 (Max 5x) or 20 (Max 20x)");
    }
    let choice = dialoguer::Select::new()
        .with_prompt("Subscription")
        .items(&["Pro (tier 1)", "Max 5x (tier 5)", "Max 20x (tier 20)"])
        .default(0)
        .interact()?;
    Ok([Tier::One, Tier::Five, Tier::Twenty][choice])
}

/// Run the OAuth flow: print the URL, read `CODE#STATE`, exchange it. Console accounts then get
/// an API key created for them.
async fn authorize(
    config: &Config,
    mode: Mode,
    proxy: Option<&EgressProxy>,
) -> anyhow::Result<Credentials> {
    let flow = oauth::start(config, mode == Mode::Max)?;
    println!("Open this URL in a browser and sign in to authorize claudeflare:");
    println!("{}", flow.url);
    if on_terminal() && webbrowser::open(&flow.url).is_ok() {
        println!("(opened in your browser)");
    }
    print!("Paste the authorization code: ");
    std::io::stdout().flush()?;
    let mut pasted = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut pasted)
        .context("cannot read the authorization code")?;
    if read == 0 || pasted.trim().is_empty() {
        bail!("no authorization code was given");
    }
    let tokens = oauth::exchange(config, flow, &pasted, proxy).await?;
    Ok(match mode {
        Mode::Max => Credentials::OAuth(tokens),
        _ => Credentials::ApiKey(oauth::create_api_key(config, &tokens.access_token, proxy).await?),
    })
}

/// A console key given on the command line.
fn given_key(api_key: &str) -> anyhow::Result<Credentials> {
    let api_key = api_key.trim();
    if api_key.is_empty() {
        bail!("--api-key must not be empty");
    }
    Ok(Credentials::ApiKey(api_key.to_owned().into()))
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), for a terminal.
fn printable(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text.to_owned()
    }
}

/// `add NAME [--mode] [--tier] [--api-key KEY] [--provider … --base-url … --auth-header …]
/// [--priority N] [--model-map MAP] [--proxy URL]`.
pub async fn add(
    name: &str,
    mode: Option<ModeArg>,
    tier: Option<Tier>,
    api_key: Option<String>,
    adding: Adding,
) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() {
        bail!("the account name must not be empty");
    }
    if name.chars().any(char::is_control) {
        // An ESC, CR or LF would be printed as it is by `list` and in the log (a newline forges a
        // log line); the name is shown escaped here.
        bail!(
            "the account name `{}` has control characters; use visible characters only",
            name.escape_default()
        );
    }
    if api_key.is_some() && mode.map(Mode::from) == Some(Mode::Max) {
        bail!("--api-key makes a console account; --mode max needs the OAuth flow");
    }
    let route = adding.route()?;
    if adding.cloud() && (api_key.is_some() || mode.is_some()) {
        bail!(
            "a cloud account takes its cloud's credentials (--aws-…, --bedrock-api-key, --service-account-file), not --api-key or --mode"
        );
    }
    if adding.compatible() && api_key.is_none() {
        bail!("--provider anthropic-compatible needs --api-key (the backend's key)");
    }
    if adding.compatible() && mode.map(Mode::from) == Some(Mode::Max) {
        bail!("an anthropic-compatible backend takes a key: it has no --mode max");
    }
    let context = open().await?;
    // Before any sign-in, so a taken name does not waste one.
    if accounts::find(&context.db, name).await.is_ok() {
        bail!("an account named `{name}` already exists");
    }
    let mut aws = None;
    let (mode, tier, credentials) = match api_key {
        _ if adding.cloud() => {
            let (credentials, source) = adding.cloud_credentials()?;
            aws = source;
            (
                Mode::Console,
                choose_tier(tier, Mode::Console)?,
                credentials,
            )
        }
        Some(key) => (
            Mode::Console,
            choose_tier(tier, Mode::Console)?,
            given_key(&key)?,
        ),
        None => {
            let mode = choose_mode(mode)?;
            let tier = choose_tier(tier, mode)?;
            let credentials = authorize(&context.config, mode, route.proxy.as_ref()).await?;
            (mode, tier, credentials)
        }
    };
    let mut account = Account::new(name, mode, credentials).with_tier(tier);
    account.route = route;
    accounts::insert(&context.db, &context.cipher, &account, aws.as_ref()).await?;
    let kind = match (&account.route.backend, mode) {
        (Backend::Compatible { .. }, _) => "anthropic-compatible",
        (Backend::Bedrock { .. }, _) => "Bedrock",
        (Backend::Vertex { .. }, _) => "Vertex AI",
        (_, Mode::Max) => "subscription",
        _ => "console",
    };
    println!(
        "Added {kind} account `{name}` (tier {tier}): {}.",
        route::describe(&account.route)
    );
    Ok(())
}

/// `reauth NAME [--api-key KEY]`: new credentials, same account.
pub async fn reauth(name: &str, api_key: Option<String>) -> anyhow::Result<()> {
    let context = open().await?;
    let model = accounts::find(&context.db, name).await?;
    if model.provider == claudeflare_tower::Bedrock::NAME
        || model.provider == claudeflare_tower::Vertex::NAME
    {
        bail!(
            "`{}` is a {} account: its credentials come from the cloud; remove it and add it again with new ones",
            model.name,
            model.provider
        );
    }
    let mode: Mode = model
        .mode
        .parse()
        .map_err(|_| anyhow::anyhow!("account `{}` has an unknown mode", model.name))?;
    let credentials = match api_key {
        Some(key) if mode == Mode::Console => given_key(&key)?,
        Some(_) => bail!(
            "`{}` is a subscription account: re-authenticate it through OAuth, without --api-key",
            model.name
        ),
        None => {
            let proxy = accounts::to_account(&model, &context.cipher)
                .ok()
                .and_then(|account| account.route.proxy);
            authorize(&context.config, mode, proxy.as_ref()).await?
        }
    };
    accounts::set_credentials(&context.db, &context.cipher, &model.id, &credentials).await?;
    println!("Re-authenticated `{}`; it is back in rotation.", model.name);
    Ok(())
}

/// `refresh [NAME]`: refresh subscription tokens now, coordinated with running servers.
pub async fn refresh(name: Option<&str>) -> anyhow::Result<()> {
    let context = open().await?;
    let models = match name {
        Some(name) => vec![accounts::find(&context.db, name).await?],
        None => accounts::all(&context.db)
            .await?
            .into_iter()
            .filter(|m| m.mode == "max")
            .collect(),
    };
    if models.is_empty() {
        println!("No subscription accounts.");
        return Ok(());
    }
    let mut failed = 0;
    for model in models {
        let account = accounts::to_account(&model, &context.cipher)?;
        let Credentials::OAuth(tokens) = &account.credentials else {
            bail!(
                "`{}` is a console account: it has no token to refresh",
                model.name
            );
        };
        let info = claudeflare_tower::AccountEntry::new(account.clone()).info();
        let result = oauth::coordinated_refresh(
            &context.db,
            &context.cipher,
            &context.config,
            &info,
            &tokens.refresh_token,
        )
        .await;
        match result {
            Ok(pair) => {
                let until = pair.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true);
                println!("Refreshed `{}`: valid until {until}.", model.name);
            }
            Err(error) => {
                failed += 1;
                eprintln!("error: refreshing `{}` failed: {error}", model.name);
                if let RefreshError::Rejected(_) = error {
                    // `coordinated_refresh` has stored it, with the reason.
                    eprintln!(
                        "run `claudeflare-server reauth {}` to sign in again",
                        model.name
                    );
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} refresh(es) failed");
    }
    Ok(())
}

fn status_text(view: &AccountView) -> String {
    let reason = || view.status_reason.as_deref().unwrap_or_default();
    match view.status {
        AccountStatus::Active => "active".into(),
        AccountStatus::Paused => "paused".into(),
        AccountStatus::NeedsReauth => format!("needs re-auth: {}", reason()),
        AccountStatus::Forbidden => format!("forbidden: {} (resume it to try again)", reason()),
        AccountStatus::RateLimited => match view.rate_limited_until {
            Some(until) => format!(
                "rate-limited until {}",
                until.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            None => "rate-limited".into(),
        },
        other => other.as_str().into(),
    }
}

fn usage_text(usage: Option<&Usage>) -> String {
    let percent = |window: &Option<Window>| {
        window
            .as_ref()
            .and_then(|w| w.utilization)
            .map_or_else(|| "?".to_owned(), |u| format!("{u:.0}%"))
    };
    usage.map_or_else(
        || "-".into(),
        |u| format!("{} / {}", percent(&u.five_hour), percent(&u.seven_day)),
    )
}

/// `list [--json]`.
pub async fn list(json: bool, provider: Option<&str>) -> anyhow::Result<()> {
    let context = open().await?;
    let now = Utc::now();
    let models = accounts::all(&context.db).await?;
    let mut rows = Vec::new();
    for model in models
        .iter()
        .filter(|m| provider.is_none_or(|p| m.provider == p))
    {
        let view = crate::views::finish(crate::views::stored_account(model, &context.cipher, now)?);
        let usage: Option<Usage> = model
            .usage
            .as_deref()
            .and_then(|u| serde_json::from_str(u).ok());
        rows.push((view, usage));
    }
    if json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(view, usage)| crate::views::account_json(view, usage.as_ref()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        warn_unpriced(&context.db).await;
        return Ok(());
    }
    if rows.is_empty() {
        println!("No accounts. Add one with `claudeflare-server add NAME`.");
        warn_unpriced(&context.db).await;
        return Ok(());
    }
    let header = [
        "NAME",
        "PROVIDER",
        "PRIORITY",
        "MODE",
        "TIER",
        "STATUS",
        "REQUESTS",
        "TOKEN EXPIRES",
        "USAGE 5H / 7D",
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(v, usage)| {
            vec![
                // A name stored before control characters were refused is shown escaped.
                printable(&v.name),
                v.provider.clone(),
                v.priority.to_string(),
                v.mode.to_string(),
                v.tier.to_string(),
                status_text(v),
                v.request_count.to_string(),
                v.token_expires_at.map_or_else(
                    || "-".into(),
                    |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
                ),
                usage_text(usage.as_ref()),
            ]
        })
        .collect();
    print_table(&header, &table);
    warn_unpriced(&context.db).await;
    Ok(())
}

/// Print `rows` under `header`, in columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// On stderr: the models of the history that found no price, and how to price them.
async fn warn_unpriced(db: &DatabaseConnection) {
    match db::rollups::unpriced(db).await {
        Ok(unpriced) => {
            if let Some(warning) = db::rollups::unpriced_warning(&unpriced) {
                eprintln!("warning: {warning}");
            }
        }
        Err(error) => eprintln!("warning: could not read which models lack a price: {error}"),
    }
}

/// `remove NAME [--yes]`: asks on a terminal; refuses without one unless --yes.
pub async fn remove(name: &str, yes: bool) -> anyhow::Result<()> {
    let Context { db, .. } = open().await?;
    let account = accounts::find(&db, name).await?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to remove `{}` without confirmation: pass --yes",
                account.name
            );
        }
        print!(
            "Remove account `{}`? Its request history is kept. [y/N] ",
            account.name
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("Kept `{}`.", account.name);
            return Ok(());
        }
    }
    accounts::remove(&db, &account.id).await?;
    println!("Removed `{}`.", account.name);
    Ok(())
}

/// `pause NAME` / `resume NAME`.
pub async fn set_paused(name: &str, paused: bool) -> anyhow::Result<()> {
    let Context { db, .. } = open().await?;
    let account = accounts::find(&db, name).await?;
    accounts::set_paused(&db, &account.id, paused).await?;
    println!(
        "{} `{}`.",
        if paused { "Paused" } else { "Resumed" },
        account.name
    );
    Ok(())
}

/// `set-tier NAME TIER`.
pub async fn set_tier(name: &str, tier: Tier) -> anyhow::Result<()> {
    let Context { db, .. } = open().await?;
    let account = accounts::find(&db, name).await?;
    accounts::set_tier(&db, &account.id, tier).await?;
    println!("`{}` is now tier {tier}.", account.name);
    Ok(())
}

/// `reset-stats`.
pub async fn reset_stats() -> anyhow::Result<()> {
    let Context { db, .. } = open().await?;
    let count = accounts::reset_counters(&db).await?;
    println!("Reset the counters of {count} account(s).");
    Ok(())
}

/// `clear-history`.
pub async fn clear_history() -> anyhow::Result<()> {
    let Context { db, .. } = open().await?;
    let count = requests::clear(&db).await?;
    println!("Deleted {count} request(s) from the history.");
    Ok(())
}

/// `keys add`, `keys list`, `keys revoke`.
pub async fn keys(command: crate::cli::KeysCommand) -> anyhow::Result<()> {
    use crate::cli::KeysCommand;
    use crate::db::keys;
    let Context { db, .. } = open().await?;
    match command {
        KeysCommand::Add {
            name,
            admin,
            rpm,
            concurrency,
            monthly_budget_usd,
            models,
            accounts: bound,
            email,
        } => {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                bail!("a key needs a name of visible characters (it names its requests)");
            }
            let bound: Vec<String> = bound
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            let pool = accounts::all(&db).await?;
            for name in &bound {
                let known = pool
                    .iter()
                    .any(|a| a.name == *name || a.account_group.as_deref() == Some(name.as_str()));
                if !known {
                    bail!("--accounts: there is no account or group named `{name}`");
                }
            }
            let limits = keys::Limits {
                rpm,
                concurrency,
                monthly_budget_usd,
            };
            let email = email.as_deref().map(str::trim).filter(|e| !e.is_empty());
            if email.is_some_and(|e| !e.contains('@') || e.chars().any(char::is_control)) {
                bail!("--email must be an email address");
            }
            let key = keys::create(&db, &name, admin, limits, &models, &bound, email).await?;
            let kind = if admin { "admin key" } else { "key" };
            eprintln!(
                "Created the {kind} `{name}`. It is shown once, here; only its hash is stored:"
            );
            println!("{key}");
            eprintln!(
                "Clients send it as x-api-key or `authorization: Bearer` (ANTHROPIC_API_KEY for Claude Code and the SDKs)."
            );
        }
        KeysCommand::List { json } => {
            let list = crate::views::keys(&db).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!(
                    "No client keys: the server answers only this machine. Create one with `claudeflare-server keys add NAME`."
                );
            } else {
                let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                    at.map_or_else(
                        || "never".to_owned(),
                        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    )
                };
                let limit = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
                println!(
                    "{:<16} {:<5} {:<10} {:>5} {:>6} {:>10} {:<20} {:<20} {:>9} {:>10}  MODELS",
                    "NAME",
                    "ADMIN",
                    "KEY",
                    "RPM",
                    "INFLT",
                    "BUDGET $",
                    "CREATED",
                    "LAST USED",
                    "REQUESTS",
                    "COST $"
                );
                for key in &list {
                    println!(
                        "{:<16} {:<5} {:<10} {:>5} {:>6} {:>10} {:<20} {:<20} {:>9} {:>10.4}  {}",
                        key.name,
                        if key.admin { "yes" } else { "no" },
                        format!("{}…", key.hint),
                        limit(key.rpm.map(|n| n.to_string())),
                        limit(key.concurrency.map(|n| n.to_string())),
                        limit(key.monthly_budget_usd.map(|n| n.to_string())),
                        when(Some(key.created_at)),
                        when(key.last_used_at),
                        key.requests_this_month,
                        key.cost_this_month_usd,
                        key.models
                            .as_ref()
                            .map_or_else(|| "any".to_owned(), |models| models.join(",")),
                    );
                }
            }
        }
        KeysCommand::Revoke { name } => {
            keys::revoke(&db, &name).await?;
            println!("Revoked the key `{name}`; running servers refuse it within 2 seconds.");
        }
    }
    Ok(())
}

/// `tui`: the terminal dashboard of the server at `url`, by default this machine's on the
/// configured port.
pub async fn tui(url: Option<String>, key: Option<String>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "tui draws on a terminal: run it in one (its input and output are not a terminal here)"
        );
    }
    let url = match url {
        Some(url) => url,
        None => {
            let config = config::load(&config::config_path(), &config::Overrides::default())?;
            let host = match config.host.as_str() {
                "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
                host => host,
            };
            format!("http://{host}:{}", config.port)
        }
    };
    crate::tui::run(url, key).await
}

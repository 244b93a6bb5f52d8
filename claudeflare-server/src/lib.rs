//! The claudeflare reference server as a library: what the `claudeflare-server` binary is made
//! of (proxy app, API, dashboard, CLI commands, configuration, persistence). The binary is
//! `main.rs`: the allocator, and [`main`].
//!
//! Only what the binary, the benchmarks and the integration tests need is public: [`main`],
//! [`SEED_ENV`] and [`bench`]. Everything else is the server's own.

use std::process::ExitCode;

use clap::Parser;

mod access;
mod api;
mod app;
mod aws;
mod background;
pub mod bench;
mod budget;
mod cli;
mod commands;
mod config;
mod control;
mod dashboard;
mod db;
mod fsutil;
mod gate;
mod health;
mod logging;
mod metrics;
mod oauth;
mod pricing;
mod recorder;
mod refresher;
mod rpm;
mod secrets;
mod serve;
mod signin;
mod state;
mod store;
mod threads;
mod tls;
mod tui;
mod usage;
mod views;

pub use config::SEED_ENV;

use cli::{Cli, Command};

/// A command's output piped into `head` ends quietly when the pipe closes, as other command-line
/// tools do, rather than with a panic on the failed write. (The server keeps SIGPIPE ignored:
/// a client that goes away must not end it.)
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default disposition of one signal, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The command line: parse it, run the command (the server, by default) and say how it ended.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        None | Some(Command::Serve { .. } | Command::Tui { .. })
    ) {
        end_quietly_on_a_closed_pipe();
    }
    // Proxy traffic runs on threads of its own (`threads`); this runtime has the rest: the
    // database, the API and dashboard, background tasks. One worker is plenty for that.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve {
        port: None,
        host: None,
        tls_cert: None,
        tls_key: None,
    }) {
        Command::Serve {
            port,
            host,
            tls_cert,
            tls_key,
        } => {
            serve::run(config::Overrides {
                port,
                host,
                tls_cert,
                tls_key,
                lb_strategy: None,
            })
            .await
        }
        Command::Add {
            name,
            mode,
            tier,
            api_key,
            provider,
            base_url,
            auth_header,
            route,
            cloud,
        } => {
            let backend = commands::Adding {
                provider,
                base_url,
                auth_header,
                route,
                cloud,
            };
            commands::add(&name, mode, tier, api_key, backend).await
        }
        Command::Edit {
            name,
            base_url,
            route,
        } => commands::edit(&name, base_url, route).await,
        Command::List { json, provider } => commands::list(json, provider.as_deref()).await,
        Command::Remove { name, yes } => commands::remove(&name, yes).await,
        Command::Pause { name } => commands::set_paused(&name, true).await,
        Command::Resume { name } => commands::set_paused(&name, false).await,
        Command::SetTier { name, tier } => commands::set_tier(&name, tier).await,
        Command::ResetStats => commands::reset_stats().await,
        Command::ClearHistory => commands::clear_history().await,
        Command::Reauth { name, api_key } => commands::reauth(&name, api_key).await,
        Command::Refresh { name } => commands::refresh(name.as_deref()).await,
        Command::Keys { command } => commands::keys(command).await,
        Command::Pricing { command } => commands::pricing(command).await,
        Command::Tui { url, key } => commands::tui(url, key).await,
    }
}

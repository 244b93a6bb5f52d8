//! `claudeflare-server`: the claudeflare proxy, its API and dashboard, and the account CLI.

use std::process::ExitCode;

use clap::Parser;

use claudeflare_server::cli::{Cli, Command};
use claudeflare_server::{commands, config, serve};

/// mimalloc: fewer cycles per allocation than glibc's, and far less fragmentation (resident
/// memory) under a multi-threaded load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Have mimalloc return freed memory to the system at once rather than after 10 ms (100 ms for
/// its arenas): under a burst of requests this halves peak resident memory, for a few more
/// `madvise` calls.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    /// `mi_option_purge_delay` in mimalloc's headers (the same index in v2 and v3).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table; the index is a
    // valid option and 0 a valid value for it. No memory is touched.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

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

fn main() -> ExitCode {
    return_freed_memory_promptly();
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

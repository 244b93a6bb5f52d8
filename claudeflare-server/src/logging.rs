//! Logging with tracing: LOG_LEVEL and LOG_FORMAT, changeable while running.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The tracing level of a LOG_LEVEL value (case-insensitive).
pub fn level(name: &str) -> Option<&'static str> {
    match name.to_ascii_uppercase().as_str() {
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARN" | "WARNING" => Some("warn"),
        "ERROR" => Some("error"),
        _ => None,
    }
}

fn filter(log_level: &str) -> EnvFilter {
    let level = level(log_level).unwrap_or("info");
    // Our crates at the chosen level; libraries only when something is wrong.
    EnvFilter::new(format!(
        "warn,claudeflare_server={level},claudeflare_tower={level}"
    ))
}

/// Changes the level of the running logger.
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

/// Keeps the log writer thread; dropping it writes out what is left. Hold it to the end.
pub struct LogFlush(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

impl LogHandle {
    /// Apply a new LOG_LEVEL.
    pub fn set_level(&self, log_level: &str) {
        if let Some(handle) = &self.reload {
            if let Err(error) = handle.reload(filter(log_level)) {
                tracing::warn!(%error, "could not change the log level");
            }
        }
    }
}

/// Start logging to stderr as `format` ("pretty" or "json") at `log_level`. Lines are written by
/// a background thread, so a request never waits on a write to stderr.
pub fn init(log_level: &str, format: &str) -> (LogHandle, LogFlush) {
    let (filter, handle) = reload::Layer::new(filter(log_level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Never drop lines: a full buffer makes the writer wait rather than lose the log.
        .lossy(false)
        // A small buffer: memory stays flat even when stderr is slow.
        .buffered_lines_limit(1024)
        .finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init()
    };
    match result {
        Ok(()) => (
            LogHandle {
                reload: Some(handle),
            },
            LogFlush(Some(guard)),
        ),
        Err(_) => (LogHandle { reload: None }, LogFlush(None)),
    }
}

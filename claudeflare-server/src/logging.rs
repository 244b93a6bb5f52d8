//! Logging with tracing: LOG_LEVEL and LOG_FORMAT, changeable while running.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
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

/// How long the writer thread lets lines gather before it writes them out.
const LINGER: Duration = Duration::from_millis(5);
/// Bytes of lines waiting at most; beyond it a logger waits for the writer (no line is dropped).
const LIMIT: usize = 256 * 1024;

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Lines arrived in an empty buffer, or logging is closing.
    ready: Condvar,
    /// The writer took the lines: there is room again.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the log lines go: each formatted line is appended to a buffer that one thread writes to
/// stderr every few milliseconds. A request never waits on stderr, and a busy server makes one
/// write per batch of lines instead of one per line, with no thread woken per line.
struct BatchWriter(Arc<Shared>);

impl io::Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let shared = &self.0;
        let mut pending = shared.lock();
        loop {
            if pending.closed {
                // Logging has shut down: write straight through.
                drop(pending);
                io::stderr().write_all(line)?;
                return Ok(line.len());
            }
            if pending.lines.is_empty() || pending.lines.len() + line.len() <= LIMIT {
                break;
            }
            pending = shared
                .room
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let wake = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        drop(pending);
        if wake {
            shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// The writer thread: waits for lines, lets more gather for [`LINGER`], writes them all at once.
fn write_out(shared: &Shared, mut out: impl io::Write) {
    let mut lines = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines.is_empty() && !pending.closed {
            pending = shared
                .ready
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let closing = pending.closed;
        if !closing {
            drop(pending);
            std::thread::sleep(LINGER);
            pending = shared.lock();
        }
        std::mem::swap(&mut pending.lines, &mut lines);
        drop(pending);
        shared.room.notify_all();
        // Nowhere to report a failed write to stderr; the next batch tries again.
        let _ = out.write_all(&lines).and_then(|()| out.flush());
        lines.clear();
        if closing {
            return;
        }
    }
}

/// Keeps the log writer thread; dropping it writes out what is left. Hold it to the end.
pub struct LogFlush(Option<(Arc<Shared>, std::thread::JoinHandle<()>)>);

impl Drop for LogFlush {
    fn drop(&mut self) {
        if let Some((shared, thread)) = self.0.take() {
            shared.lock().closed = true;
            shared.ready.notify_one();
            let _ = thread.join();
        }
    }
}

/// Start logging to stderr as `format` ("pretty" or "json") at `log_level`. Lines are written by
/// a background thread, so a request never waits on a write to stderr.
pub fn init(log_level: &str, format: &str) -> (LogHandle, LogFlush) {
    let (filter, handle) = reload::Layer::new(filter(log_level));
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("claudeflare-log".into())
            .spawn(move || write_out(&shared, io::stderr()))
    };
    let Ok(thread) = thread else {
        // No thread for it: log straight to stderr.
        shared.lock().closed = true;
        return (LogHandle { reload: None }, LogFlush(None));
    };
    let flush = LogFlush(Some((Arc::clone(&shared), thread)));
    let writer = BatchWriter(shared);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if format == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init()
    } else {
        let ansi = io::IsTerminal::is_terminal(&io::stderr());
        // `name=value`, without the styling the default field formatter wraps around each name:
        // a third of the cost of the per-request line.
        let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
            if field.name() == "message" {
                write!(writer, "{value:?}")
            } else {
                write!(writer, "{field}={value:?}")
            }
        })
        .delimited(" ");
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .fmt_fields(fields)
                    .with_writer(writer),
            )
            .try_init()
    };
    match result {
        Ok(()) => (
            LogHandle {
                reload: Some(handle),
            },
            flush,
        ),
        Err(_) => (LogHandle { reload: None }, flush),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// What the writer thread wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn start(sink: &Sink) -> (BatchWriter, LogFlush) {
        let shared = Arc::new(Shared::default());
        let thread = {
            let (shared, sink) = (Arc::clone(&shared), sink.clone());
            std::thread::spawn(move || write_out(&shared, sink))
        };
        (
            BatchWriter(Arc::clone(&shared)),
            LogFlush(Some((shared, thread))),
        )
    }

    #[test]
    fn lines_are_written_in_order_soon_and_all_of_them_at_the_end() {
        let sink = Sink::default();
        let (writer, flush) = start(&sink);
        (&writer).write_all(b"first\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "a lone line is written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // More than the buffer holds: the loggers wait for the writer, and nothing is lost.
        let line = vec![b'x'; 1000];
        let expected: Vec<u8> = {
            let mut all = b"first\n".to_vec();
            for _ in 0..1000 {
                all.extend_from_slice(&line);
                all.push(b'\n');
            }
            all
        };
        for _ in 0..1000 {
            let mut with_newline = line.clone();
            with_newline.push(b'\n');
            (&writer).write_all(&with_newline).unwrap();
        }
        drop(flush);
        assert_eq!(*sink.0.lock().unwrap(), expected);
    }
}

//! Logging with tracing: LOG_LEVEL and LOG_FORMAT, changeable while running.

use crate::config::{LogFormat, LogLevel};
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

fn filter(log_level: LogLevel) -> EnvFilter {
    let level = log_level.directive();
    // Our crates at the chosen level; libraries only when something is wrong. Except the
    // database pool's line for each failed connection attempt (several a second while the
    // database is away): the server says so itself, once and then once a minute. At DEBUG it
    // is shown.
    let pool = if level == "debug" {
        ""
    } else {
        ",sqlx_core::pool::inner=off"
    };
    EnvFilter::new(format!(
        "warn,claudeflare_server={level},claudeflare_tower={level}{pool}"
    ))
}

/// Changes the level of the running logger.
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, tracing_subscriber::Registry>>,
}

impl LogHandle {
    /// Apply a new LOG_LEVEL.
    pub fn set_level(&self, log_level: LogLevel) {
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
/// write per batch of lines instead of one per line, with no thread woken per line. It replaced
/// tracing-appender's worker, which spun with 1.3 `sched_yield` per request on 2 cores
/// (docs/benchmarks-history.md, second round).
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
pub fn init(log_level: LogLevel, format: LogFormat) -> (LogHandle, LogFlush) {
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
    let result = if format == LogFormat::Json {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init()
    } else {
        let ansi = io::IsTerminal::is_terminal(&io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(Pretty { ansi })
                    .fmt_fields(Fields)
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

/// The pretty format, the same as tracing-subscriber's default:
/// `2026-11-22T03:07:11.494926Z  INFO target: message name=value …`, with the level coloured on a
/// terminal. Written directly rather than through the general formatter: a busy server writes
/// one such line per request, and this makes it about three times cheaper (callgrind: 8,800 →
/// about 4,000 instructions per line; docs/benchmarks-history.md, third round).
struct Pretty {
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for Pretty
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write_timestamp(&mut writer, SystemTime::now())?;
        let level = match *meta.level() {
            Level::ERROR => ("ERROR", "\x1b[31m"),
            Level::WARN => (" WARN", "\x1b[33m"),
            Level::INFO => (" INFO", "\x1b[32m"),
            Level::DEBUG => ("DEBUG", "\x1b[34m"),
            Level::TRACE => ("TRACE", "\x1b[35m"),
        };
        if self.ansi {
            writer.write_str(level.1)?;
            writer.write_str(level.0)?;
            writer.write_str("\x1b[0m ")?;
        } else {
            writer.write_str(level.0)?;
            writer.write_char(' ')?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            writer.write_char(' ')?;
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// `2026-11-22T03:07:11.494926Z ` (UTC, microseconds). The part up to the seconds is formatted
/// once per second per thread.
fn write_timestamp(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != seconds {
            let at = chrono::DateTime::from_timestamp(i64::try_from(seconds).unwrap_or(0), 0)
                .unwrap_or_default();
            text.clear();
            write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S"))?;
            *cached = seconds;
        }
        writer.write_str(text)
    })?;
    // Six digits with their leading zeros: those of 1,000,000 + µs, without the 1.
    let mut micros = itoa::Buffer::new();
    let micros = micros.format(1_000_000 + since_epoch.subsec_micros());
    writer.write_char('.')?;
    writer.write_str(micros.get(1..).unwrap_or(micros))?;
    writer.write_str("Z ")
}

/// Fields as `name=value` separated by spaces, the message first and bare. Strings and
/// `%`-values are written as they are, numbers without the formatting machinery.
struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_> {
    /// Writes the separator and `name=`, then the value with `value`, unless a write failed.
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(' ')?;
            }
            if field.name() != "message" {
                self.writer.write_str(field.name())?;
                self.writer.write_char('=')?;
            }
            value(&mut self.writer)
        })();
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| w.write_str(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |w| {
                w.write_str(ryu::Buffer::new().format_finite(value))
            });
        } else {
            self.field(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
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
    fn pretty_lines_look_like_the_default_format() {
        let mut text = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_779_411_723_000_042);
        write_timestamp(&mut Writer::new(&mut text), at).unwrap();
        assert_eq!(text, "2026-05-22T01:02:03.000042Z ");

        let sink = Sink::default();
        let make = {
            let sink = sink.clone();
            move || sink.clone()
        };
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(Pretty { ansi: false })
                .fmt_fields(Fields)
                .with_writer(make),
        );
        tracing::subscriber::with_default(subscriber, || {
            let account = "work";
            tracing::info!(method = %"POST", account = %account, status = 200u16, ms = 12u64, delta = -3i64, cost_usd = 8.1e-5, stream = false, "request");
            tracing::warn!(error = %io::Error::other("no route"), "failing over to {}", "b");
        });
        let written = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2, "{written}");
        // The timestamp, as above, then the rest.
        let rest = |line: &str| line.split_once("Z ").unwrap().1.to_owned();
        assert_eq!(
            rest(lines[0]),
            " INFO claudeflare_server::logging::tests: request method=POST account=work status=200 ms=12 delta=-3 cost_usd=0.000081 stream=false"
        );
        assert_eq!(
            rest(lines[1]),
            " WARN claudeflare_server::logging::tests: failing over to b error=no route"
        );
        assert_eq!(lines[0].find('Z'), Some(26), "{}", lines[0]);
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

//! Request records: a log line and metrics per request, then a bounded queue to one task that
//! stores them in batches. The proxy never waits on the database; what does not fit is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::pricing::Cost;
use chrono::{TimeDelta, Utc};
use claudeflare_tower::{BoxFuture, Setting};
use claudeflare_tower::{Recorder, RequestRecord};
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db::{DbError, requests};
use crate::health::{Health, Problem};
use crate::metrics::{CostLabels, Metrics, RequestLabels, StatusLabel};
use crate::pricing::Pricing;

mod spill;
pub use spill::{FILE_NAME as SPILL_FILE, Queued, Spill};

/// Records waiting for the writer at most.
pub const QUEUE: usize = 4096;
/// Records per transaction at most. (All the queue holds, 4,096, let a writer that fell behind
/// on PostgreSQL catch up in fewer transactions, but twice as many records were then held at
/// once: peak RSS 63 MiB under the benchmark's flood.)
const BATCH: usize = 1024;
/// How long the writer waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(20);

/// The server's [`Recorder`].
pub struct ServerRecorder {
    queue: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
    pricing: Setting<Pricing>,
    metrics: Arc<Metrics>,
    /// Each key's spending is counted here at once (its budget holds on the next request).
    access: Option<crate::access::Access>,
}

impl ServerRecorder {
    /// A recorder and the receiving end for [`write_records`].
    pub fn new(
        pricing: Setting<Pricing>,
        metrics: Arc<Metrics>,
        dropped: Arc<AtomicU64>,
    ) -> (Self, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (
            Self {
                queue,
                dropped,
                pricing,
                metrics,
                access: None,
            },
            receiver,
        )
    }

    /// Count each record's cost to its client key in `access` at once.
    pub fn counting_spend(mut self, access: crate::access::Access) -> Self {
        self.access = Some(access);
        self
    }
}

impl Recorder for ServerRecorder {
    fn record(&self, mut record: RequestRecord) {
        let cost = self.pricing.current().cost(&record);
        log(&record, cost);
        if let (Some(access), Some(client)) = (&self.access, &record.client) {
            access.spend(client, cost.usd);
        }
        // The account name is lent to the labels and taken back: no copy for each request.
        let served = record.account.is_some();
        let labels = RequestLabels {
            account: record.account.take().unwrap_or_else(|| "none".to_owned()),
            status: StatusLabel(record.status),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        if served {
            record.account = Some(labels.account);
        }
        if cost.usd > 0.0 && record.account.is_some() {
            // Lent and taken back, like the account name above. A cost needs a model.
            if let Some(model) = record.model.take() {
                let labels = CostLabels {
                    account: record.account.take().unwrap_or_default(),
                    model,
                };
                self.metrics
                    .cost_usd
                    .get_or_create(&labels)
                    .inc_by(cost.usd);
                record.account = Some(labels.account);
                record.model = Some(labels.model);
            }
        }
        if let Some(upstream) = record.upstream_ms {
            self.metrics
                .upstream_latency
                .observe(upstream as f64 / 1000.0);
        }
        if let Some(overhead) = record.overhead_us {
            self.metrics.overhead.observe(overhead as f64 / 1_000_000.0);
        }
        if record.failover_attempts > 0 {
            self.metrics
                .failovers
                .inc_by(u64::from(record.failover_attempts));
        }
        if self.queue.try_send((record, cost)).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics.dropped_records.inc();
            // One line per thousand, so a flood does not become a flood of logs too.
            if dropped == 1 || dropped % 1000 == 0 {
                tracing::warn!(
                    dropped,
                    "the record queue is full; request records are being dropped"
                );
            }
        }
    }
}

fn log(record: &RequestRecord, cost: Cost) {
    // Plain `&str` values, not `%`: they are written as they are, without the formatting
    // machinery (this line is written once per request).
    let method = record.method.as_str();
    let path = record.path.as_str();
    let account = record.account.as_deref().unwrap_or("-");
    let status = record.status.unwrap_or_default();
    let tokens_in = record.usage.input_tokens
        + record.usage.cache_read_input_tokens
        + record.usage.cache_creation_input_tokens;
    let tokens_out = record.usage.output_tokens;
    let ms = record.response_time_ms;
    if record.success && record.error.is_none() {
        tracing::info!(
            method,
            path,
            account,
            status,
            ms,
            tokens_in,
            tokens_out,
            cost_usd = cost.usd,
            "request"
        );
        return;
    }
    // One failure line at `$level`, with the error when there is one.
    macro_rules! failure {
        ($level:ident, $message:literal) => {
            match &record.error {
                Some(error) => tracing::$level!(
                    method,
                    path,
                    account,
                    status,
                    ms,
                    tokens_in,
                    tokens_out,
                    error = error.as_str(),
                    $message
                ),
                None => tracing::$level!(method, path, account, status, ms, $message),
            }
        };
    }
    // The upstream's 4xx answers (a bad request, a refusal) are the client's business: a
    // warning. What claudeflare or the upstream failed at (5xx, no answer) is an error.
    if (400..500).contains(&status) {
        failure!(warn, "request refused");
    } else {
        failure!(error, "request failed");
    }
}

/// Where the record writer stores batches: the database, or a stand-in in tests.
pub trait RecordSink: Send + Sync + 'static {
    /// Store `batch` in one transaction; on an error nothing of it is stored. With `recheck`
    /// (the batch was tried before, or comes back from the spill file), what is already stored
    /// of it is left out.
    fn insert<'a>(
        &'a self,
        batch: &'a [(RequestRecord, Cost)],
        recheck: bool,
    ) -> BoxFuture<'a, Result<(), DbError>>;
}

impl RecordSink for DatabaseConnection {
    fn insert<'a>(
        &'a self,
        batch: &'a [(RequestRecord, Cost)],
        recheck: bool,
    ) -> BoxFuture<'a, Result<(), DbError>> {
        Box::pin(requests::insert_batch(self, batch, recheck))
    }
}

/// The first wait after a failed write; it doubles up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a failing write.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
/// After a stop, how long the writer keeps trying to store what is left; then what is left
/// stays in the spill file for the next start.
const STOP_RETRY: Duration = Duration::from_secs(10);
/// While writes fail, one log line per this long (after the first).
const FAILING_LOG_EVERY: Duration = Duration::from_secs(60);
/// A write still running after this long is said to be stalled (a table lock, a database that
/// stopped answering): logged and shown by `/health` while it lasts, not only once the queue
/// overflows.
const STALLED_AFTER: Duration = Duration::from_secs(3);
/// Once the queue holds this many records while the writer is busy, they move to the spill
/// file: the queue never fills while the file takes them.
const SPILL_AT: usize = QUEUE / 2;
/// A move of the spill file's waiting records to a fresh file copies in rounds while the queue
/// keeps moving, at most this many…
const COMPACTION_ROUNDS: usize = 8;
/// …until what is left for the last copy, made with the queue held, is this small.
const COMPACTION_LAST_COPY: u64 = 1 << 20;
/// Reads of the spill file that may fail in a row (with [`MAX_RETRY_WAIT`] between them)
/// before what is left in it is given up.
const SPILL_READ_TRIES: u32 = 3;
/// How often a writer busy with a write (or waiting to try one again) looks at the queue. At
/// 20,000 requests a second the queue takes 200 records meanwhile, a tenth of [`SPILL_AT`].
const SPILL_CHECK_EVERY: Duration = Duration::from_millis(10);

/// The records not yet stored, oldest first: those in the spill file, then the queue's.
pub struct Backlog {
    receiver: mpsc::Receiver<Queued>,
    spill: Spill,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// When a spill file error was last logged.
    spill_logged_at: Option<tokio::time::Instant>,
}

impl Backlog {
    /// The queue's receiving end, the spill file, the drop counter and what reports.
    pub fn new(
        receiver: mpsc::Receiver<Queued>,
        spill: Spill,
        dropped: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            receiver,
            spill,
            dropped,
            metrics,
            health,
            spill_logged_at: None,
        }
    }

    /// If the queue is half full, move what it holds to the spill file. When the file took no
    /// writes last time, only the records held from then are tried again (once a second), and
    /// the queue fills up to its bound.
    async fn relieve(&mut self) {
        if self.spill.holding() {
            if self
                .spill_logged_at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            self.spill_to_file(Vec::new()).await;
        } else if self.receiver.len() >= SPILL_AT {
            self.spill_queue().await;
        }
    }

    /// Move everything queued to the spill file.
    async fn spill_queue(&mut self) {
        let count = self.receiver.len();
        let mut moved = Vec::with_capacity(count);
        while moved.len() < count {
            match self.receiver.try_recv() {
                Ok(queued) => moved.push(queued),
                Err(_) => break,
            }
        }
        self.spill_to_file(moved).await;
    }

    async fn spill_to_file(&mut self, records: Vec<Queued>) {
        let was_empty = self.spill.is_empty();
        let spilled = self.spill.push(records).await;
        self.drop_records(spilled.dropped, "the spill file is full (spill_max_bytes)");
        if was_empty && spilled.written > 0 {
            tracing::warn!(
                file = %self.spill.path().display(),
                count = spilled.written,
                "the database is behind; request records wait in the spill file"
            );
        }
        match spilled.error {
            Some(error) => {
                let now = tokio::time::Instant::now();
                if self
                    .spill_logged_at
                    .is_none_or(|at| now - at >= FAILING_LOG_EVERY)
                {
                    tracing::error!(
                        %error,
                        file = %self.spill.path().display(),
                        "cannot write the spill file; request records are kept in memory, up to the queue's bound"
                    );
                }
                self.spill_logged_at = Some(now);
                self.health.report(
                    Problem::Spill,
                    format!(
                        "cannot write the spill file {} ({error}); request records beyond the in-memory queue are dropped",
                        self.spill.path().display()
                    ),
                );
            }
            None => self.report_waiting(),
        }
    }

    fn report_waiting(&self) {
        let (bytes, held) = self.spill.waiting();
        if bytes == 0 && held == 0 {
            return;
        }
        self.health.report(
            Problem::Spill,
            format!(
                "the database is behind: {bytes} bytes of request records wait in the spill file {}; they are stored as it takes them",
                self.spill.path().display()
            ),
        );
    }

    fn drop_records(&self, count: u64, why: &str) {
        if count == 0 {
            return;
        }
        self.dropped.fetch_add(count, Ordering::Relaxed);
        self.metrics.dropped_records.inc_by(count);
        tracing::error!(count, why, "request records are lost");
    }

    /// Wait for `future`, moving the queue to the spill file when it fills meanwhile.
    async fn meanwhile<T>(&mut self, future: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(future);
        let mut check = tokio::time::interval(SPILL_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = &mut future => return done,
                _ = check.tick() => self.relieve().await,
            }
        }
    }
}

/// Where the next batch came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The queue (or records held in memory by the spill): lost at a stop unless spilled.
    Memory,
    /// The spill file: still in it until it is emptied.
    File,
}

/// Store queued records in batches (one transaction each) until `stop`, then store what is
/// left.
///
/// A batch that cannot be stored (the database is locked, read-only, gone for a moment) is kept
/// and tried again with a growing wait, so writing resumes by itself the moment the database
/// takes writes again and nothing recorded meanwhile is lost. While it waits (or while a write
/// takes long), the queue moves to the spill file whenever it is half full; batches are taken
/// from the file, oldest first, before the queue. Only what the file cannot take beyond
/// `spill_max_bytes` is dropped. At a stop, what cannot be stored within [`STOP_RETRY`] stays
/// in the file for the next start.
pub async fn write_records(sink: impl RecordSink, mut backlog: Backlog, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut deadline: Option<tokio::time::Instant> = None;
    // Reads of the spill file that failed in a row.
    let mut unreadable_for = 0;
    let give_up = |deadline: Option<tokio::time::Instant>| {
        deadline.is_some_and(|at| tokio::time::Instant::now() >= at)
    };
    if !backlog.spill.is_empty() {
        tracing::info!(
            file = %backlog.spill.path().display(),
            bytes = backlog.spill.waiting().0,
            "storing the request records a previous run left in the spill file"
        );
    }
    loop {
        if deadline.is_none() && stop.is_cancelled() {
            deadline = Some(tokio::time::Instant::now() + STOP_RETRY);
        }
        backlog.relieve().await;
        let mut recheck = false;
        let source = if !backlog.spill.is_empty() {
            if give_up(deadline) {
                break;
            }
            if let Some(mut compaction) = backlog.spill.compaction() {
                // Copied while the queue keeps moving to the old file, then what came meanwhile,
                // until little is left for the last copy, made with the queue held (copying all
                // that came during a long first copy so overflowed the queue under a flood).
                let mut copied = Ok(());
                for _ in 0..COMPACTION_ROUNDS {
                    let end = backlog.spill.end();
                    if copied.is_err() || end - compaction.copied_to() <= COMPACTION_LAST_COPY {
                        break;
                    }
                    copied = backlog.meanwhile(compaction.copy_to(end)).await;
                }
                backlog.spill.compacted(compaction, copied).await;
            }
            let from_file = backlog.spill.waiting().0 > 0;
            match backlog.spill.take(&mut batch, BATCH).await {
                Ok((check, unreadable)) => {
                    unreadable_for = 0;
                    recheck = check;
                    backlog.drop_records(unreadable, "a line of the spill file cannot be read");
                }
                Err(error) => {
                    unreadable_for += 1;
                    if unreadable_for < SPILL_READ_TRIES {
                        tracing::error!(%error, file = %backlog.spill.path().display(), "cannot read the spill file; trying again");
                        backlog.meanwhile(tokio::time::sleep(MAX_RETRY_WAIT)).await;
                    } else {
                        // The writer must not stop for a file it cannot read: what is left in
                        // it is given up, said so, and the queue is stored as usual.
                        let bytes = backlog.spill.skip_rest().await;
                        tracing::error!(%error, file = %backlog.spill.path().display(), bytes, "cannot read the spill file; the request records left in it are lost");
                        backlog.health.report(
                            Problem::Spill,
                            format!("{bytes} bytes of request records in the spill file {} could not be read and are lost ({error})", backlog.spill.path().display()),
                        );
                        unreadable_for = 0;
                    }
                    continue;
                }
            }
            if from_file {
                Source::File
            } else {
                Source::Memory
            }
        } else {
            if deadline.is_none() {
                let closed = tokio::select! {
                    received = backlog.receiver.recv_many(&mut batch, BATCH) => received == 0,
                    () = stop.cancelled() => true,
                };
                if closed {
                    deadline = Some(tokio::time::Instant::now() + STOP_RETRY);
                } else if batch.len() < BATCH {
                    // Under load, a moment's wait makes one transaction of many records;
                    // idle, it only delays storing by that moment.
                    backlog.meanwhile(tokio::time::sleep(LINGER)).await;
                }
            }
            while batch.len() < BATCH {
                match backlog.receiver.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            Source::Memory
        };
        if batch.is_empty() {
            if deadline.is_some() && backlog.spill.is_empty() {
                if let Err(error) = backlog.spill.finish().await {
                    tracing::warn!(%error, file = %backlog.spill.path().display(), "cannot empty the spill file; what it holds is stored already and is checked again at the next start");
                }
                return;
            }
            continue;
        }
        let stored = store(&sink, &batch, recheck, &mut backlog, &stop, &mut deadline).await;
        if stored {
            if backlog.spill.is_empty() {
                // Everything it held is stored: empty it now, or it would only be emptied at the
                // next stop, and the next spill would find it as full as it was.
                if let Err(error) = backlog.spill.finish().await {
                    tracing::warn!(%error, file = %backlog.spill.path().display(), "cannot empty the spill file; trying again after the next batch");
                }
                if backlog.health.has(Problem::Spill) {
                    tracing::info!(
                        "the spill file is empty again: every request record in it is stored"
                    );
                }
                backlog.health.solved(Problem::Spill);
            } else {
                backlog.report_waiting();
            }
        } else if source == Source::Memory {
            backlog.spill_to_file(std::mem::take(&mut batch)).await;
        }
        batch.clear();
        if !stored {
            break;
        }
    }
    // Stopped, and the database took no writes within `STOP_RETRY`: what is queued goes to the
    // spill file for the next start; only what even the file cannot take is lost.
    backlog.spill_queue().await;
    let (bytes, held) = backlog.spill.waiting();
    backlog.drop_records(
        held as u64,
        "the database and the spill file take no writes after the shutdown",
    );
    if bytes > 0 {
        tracing::warn!(
            file = %backlog.spill.path().display(),
            bytes,
            "the database took no writes before the shutdown; the request records left in the spill file are stored at the next start"
        );
    }
}

/// Store `batch`, trying again with a growing wait while it fails. Gives up only once past the
/// `deadline` (set at a stop); returns whether it was stored.
async fn store(
    sink: &impl RecordSink,
    batch: &[(RequestRecord, Cost)],
    recheck: bool,
    backlog: &mut Backlog,
    stop: &CancellationToken,
    deadline: &mut Option<tokio::time::Instant>,
) -> bool {
    let mut wait = FIRST_RETRY_WAIT;
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut logged_at: Option<tokio::time::Instant> = None;
    loop {
        // A batch tried before may have been stored by a commit whose answer was lost.
        let recheck = recheck || failing_since.is_some();
        let health = Arc::clone(&backlog.health);
        let inserted = backlog
            .meanwhile(watch_stall(
                sink.insert(batch, recheck),
                batch.len(),
                &health,
            ))
            .await;
        let error = match inserted {
            Ok(()) => {
                health.solved(Problem::Records);
                if let Some(since) = failing_since {
                    tracing::info!(
                        count = batch.len(),
                        seconds = since.elapsed().as_secs(),
                        "the database takes writes again; the request records kept meanwhile are stored"
                    );
                }
                return true;
            }
            Err(error) => error,
        };
        let now = tokio::time::Instant::now();
        failing_since.get_or_insert(now);
        health.report(
            Problem::Records,
            format!("the database takes no writes ({error}); request records are kept (in memory, then in the spill file) and stored once it does"),
        );
        if logged_at.is_none_or(|at| now - at >= FAILING_LOG_EVERY) {
            tracing::error!(
                %error,
                count = batch.len(),
                "could not store request records; keeping them and trying again"
            );
            logged_at = Some(now);
        }
        if deadline.is_some_and(|at| now >= at) {
            return false;
        }
        backlog
            .meanwhile(async {
                match deadline {
                    Some(_) => tokio::time::sleep(wait).await,
                    None => tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => {}
                    },
                }
            })
            .await;
        if deadline.is_none() && stop.is_cancelled() {
            *deadline = Some(tokio::time::Instant::now() + STOP_RETRY);
        }
        wait = (wait * 2).min(MAX_RETRY_WAIT);
    }
}

/// Await `insert`; if it takes longer than [`STALLED_AFTER`], say so (in the log and on
/// `/health`) while it goes on.
async fn watch_stall<F: std::future::Future<Output = Result<(), DbError>>>(
    insert: F,
    count: usize,
    health: &Health,
) -> Result<(), DbError> {
    tokio::pin!(insert);
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval_at(started + STALLED_AFTER, FAILING_LOG_EVERY);
    loop {
        tokio::select! {
            done = &mut insert => return done,
            _ = every.tick() => {
                let seconds = started.elapsed().as_secs();
                tracing::warn!(count, seconds, "a write of request records has not finished; the database may be locked or unreachable");
                health.report(
                    Problem::Records,
                    format!("a write of request records has not finished after {seconds} s (the database may be locked or unreachable); records are kept (in memory, then in the spill file) meanwhile"),
                );
            }
        }
    }
}

/// Delete history older than `request_retention_days`, now and every hour, until `stop`.
pub async fn trim_history(
    db: DatabaseConnection,
    config: Setting<crate::config::Config>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let days = i64::from(config.get().request_retention_days);
        let before = Utc::now() - TimeDelta::days(days);
        match requests::trim(&db, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, days, "trimmed the request history"),
            Err(error) => tracing::error!(%error, "could not trim the request history"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A database that refuses writes while `failing`, as a read-only or locked SQLite file does.
    #[derive(Default)]
    struct Flaky {
        failing: AtomicBool,
        attempts: AtomicUsize,
        rechecked: AtomicUsize,
        stored: Mutex<Vec<String>>,
    }

    impl RecordSink for Arc<Flaky> {
        fn insert<'a>(
            &'a self,
            batch: &'a [(RequestRecord, Cost)],
            recheck: bool,
        ) -> BoxFuture<'a, Result<(), DbError>> {
            Box::pin(async move {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                if recheck && !self.failing.load(Ordering::SeqCst) {
                    self.rechecked.fetch_add(1, Ordering::SeqCst);
                }
                if self.failing.load(Ordering::SeqCst) {
                    return Err(DbError::Query(sea_orm::DbErr::Custom(
                        "attempt to write a readonly database".into(),
                    )));
                }
                let mut stored = self.stored.lock().unwrap();
                stored.extend(batch.iter().map(|(record, _)| record.id.clone()));
                Ok(())
            })
        }
    }

    fn record(id: usize) -> RequestRecord {
        let mut record =
            RequestRecord::new(format!("req-{id}"), Utc::now(), "POST", "/v1/messages");
        record.status = Some(200);
        record.success = true;
        record.response_time_ms = 1;
        record
    }

    struct Writer {
        sink: Arc<Flaky>,
        queue: mpsc::Sender<Queued>,
        dropped: Arc<AtomicU64>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        folder: tempfile::TempDir,
    }

    fn writer() -> Writer {
        let sink = Arc::new(Flaky::default());
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let folder = tempfile::tempdir().unwrap();
        let spill = Spill::open(folder.path().join(SPILL_FILE), 1 << 30);
        let backlog = Backlog::new(
            receiver,
            spill,
            Arc::clone(&dropped),
            Arc::new(Metrics::new()),
            Arc::default(),
        );
        let task = tokio::spawn(write_records(Arc::clone(&sink), backlog, stop.clone()));
        Writer {
            sink,
            queue,
            dropped,
            stop,
            task,
            folder,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_record_made_during_an_outage_is_stored_after_it() {
        let w = writer();
        for id in 0..10 {
            w.queue.try_send((record(id), Cost::ZERO)).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(w.sink.stored.lock().unwrap().len(), 10);

        // The database stops taking writes for 20 seconds; traffic goes on.
        w.sink.failing.store(true, Ordering::SeqCst);
        for id in 10..60 {
            w.queue.try_send((record(id), Cost::ZERO)).unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let tries = w.sink.attempts.load(Ordering::SeqCst);
        assert!(tries > 5, "tried again and again: {tries}");
        assert_eq!(w.sink.stored.lock().unwrap().len(), 10);

        // Writable again: within the longest wait, everything is stored, in order.
        w.sink.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(MAX_RETRY_WAIT + Duration::from_secs(1)).await;
        let stored = w.sink.stored.lock().unwrap().clone();
        let expected: Vec<String> = (0..60).map(|id| format!("req-{id}")).collect();
        assert_eq!(stored, expected);
        assert_eq!(w.dropped.load(Ordering::SeqCst), 0);
        // The waits grew: not one try per 100 ms over 20 s.
        assert!(w.sink.attempts.load(Ordering::SeqCst) < 40);
        w.stop.cancel();
        w.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_outage_spills_to_the_file_and_loses_nothing() {
        let w = writer();
        w.sink.failing.store(true, Ordering::SeqCst);
        // Three queues' worth of records while the database takes none: they could not all
        // wait in memory.
        let total = QUEUE * 3;
        for id in 0..total {
            // The proxy would count a drop here: the writer moves the queue to the file
            // within `SPILL_CHECK_EVERY` of it being half full.
            assert!(
                w.queue.try_send((record(id), Cost::ZERO)).is_ok(),
                "the queue filled up at record {id}: it should have gone to the file"
            );
            if id % 512 == 0 {
                tokio::time::sleep(SPILL_CHECK_EVERY * 2).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let spilled = std::fs::metadata(w.folder.path().join(SPILL_FILE))
            .unwrap()
            .len();
        assert!(spilled > 0, "records are in the spill file");
        assert!(w.sink.stored.lock().unwrap().is_empty());

        w.sink.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(MAX_RETRY_WAIT * 2).await;
        let stored = w.sink.stored.lock().unwrap().clone();
        let expected: Vec<String> = (0..total).map(|id| format!("req-{id}")).collect();
        assert_eq!(stored.len(), total);
        assert_eq!(stored, expected, "in the order they were made");
        assert_eq!(w.dropped.load(Ordering::SeqCst), 0);
        // All of it stored: the file is emptied at once, not at the stop, so the next spill
        // has all of `spill_max_bytes` again.
        let left = std::fs::metadata(w.folder.path().join(SPILL_FILE))
            .unwrap()
            .len();
        assert_eq!(left, 0);
        w.stop.cancel();
        w.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_an_outage_leaves_the_records_to_the_next_start() {
        let w = writer();
        w.sink.failing.store(true, Ordering::SeqCst);
        for id in 0..5 {
            w.queue.try_send((record(id), Cost::ZERO)).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.stop.cancel();
        // It keeps trying for a while after the stop, then leaves them in the spill file.
        tokio::time::timeout(STOP_RETRY + MAX_RETRY_WAIT * 2, w.task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.dropped.load(Ordering::SeqCst), 0);
        assert!(w.sink.stored.lock().unwrap().is_empty());

        // The next start stores them, checking what is stored already.
        let sink = Arc::new(Flaky::default());
        let (queue, receiver) = mpsc::channel(QUEUE);
        let spill = Spill::open(w.folder.path().join(SPILL_FILE), 1 << 30);
        let stop = CancellationToken::new();
        let backlog = Backlog::new(
            receiver,
            spill,
            Arc::clone(&w.dropped),
            Arc::new(Metrics::new()),
            Arc::default(),
        );
        let task = tokio::spawn(write_records(Arc::clone(&sink), backlog, stop.clone()));
        queue.try_send((record(5), Cost::ZERO)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stored = sink.stored.lock().unwrap().clone();
        assert_eq!(
            stored,
            ["req-0", "req-1", "req-2", "req-3", "req-4", "req-5"]
        );
        assert_eq!(
            sink.rechecked.load(Ordering::SeqCst),
            1,
            "the left batch is checked"
        );
        stop.cancel();
        task.await.unwrap();
    }
}

//! Request records: a log line and metrics per request, then a bounded queue to one task that
//! stores them in batches. The proxy never waits on the database; what does not fit is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use claudeflare_tower::Setting;
use claudeflare_tower::record::{Recorder, RequestRecord};
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, watch};

use crate::db::requests;
use crate::metrics::{CostLabels, Metrics, RequestLabels, StatusLabel};
use crate::pricing::Pricing;

/// Records waiting for the writer at most.
pub const QUEUE: usize = 4096;
/// Records per transaction at most.
const BATCH: usize = 1024;
/// How long the writer waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(20);

/// The server's [`Recorder`].
pub struct ServerRecorder {
    queue: mpsc::Sender<(RequestRecord, f64)>,
    dropped: Arc<AtomicU64>,
    pricing: Setting<Pricing>,
    metrics: Arc<Metrics>,
}

impl ServerRecorder {
    /// A recorder and the receiving end for [`write_records`].
    pub fn new(
        pricing: Setting<Pricing>,
        metrics: Arc<Metrics>,
        dropped: Arc<AtomicU64>,
    ) -> (Self, mpsc::Receiver<(RequestRecord, f64)>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        (
            Self {
                queue,
                dropped,
                pricing,
                metrics,
            },
            receiver,
        )
    }
}

impl Recorder for ServerRecorder {
    fn record(&self, mut record: RequestRecord) {
        let cost = self
            .pricing
            .current()
            .cost(record.model.as_deref(), &record.usage);
        log(&record, cost);
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
        if cost > 0.0 && record.account.is_some() {
            // Lent and taken back, like the account name above. A cost needs a model.
            if let Some(model) = record.model.take() {
                let labels = CostLabels {
                    account: record.account.take().unwrap_or_default(),
                    model,
                };
                self.metrics.cost_usd.get_or_create(&labels).inc_by(cost);
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

fn log(record: &RequestRecord, cost: f64) {
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
    match &record.error {
        Some(error) => tracing::error!(
            method,
            path,
            account,
            status,
            ms,
            tokens_in,
            tokens_out,
            error = error.as_str(),
            "request failed"
        ),
        None if !record.success => {
            tracing::error!(method, path, account, status, ms, "request failed")
        }
        None => tracing::info!(
            method,
            path,
            account,
            status,
            ms,
            tokens_in,
            tokens_out,
            cost_usd = cost,
            "request"
        ),
    }
}

/// Store queued records in batches (one transaction each) until `stop`, then store what is queued.
pub async fn write_records(
    db: DatabaseConnection,
    mut receiver: mpsc::Receiver<(RequestRecord, f64)>,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            received = receiver.recv_many(&mut batch, BATCH) => received == 0,
            _ = stop.changed() => true,
        };
        if !stopping && batch.len() < BATCH {
            // Under load, a moment's wait makes one transaction of many records; idle, it only
            // delays storing by that moment.
            tokio::time::sleep(LINGER).await;
        }
        while batch.len() < BATCH || stopping {
            match receiver.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let count = batch.len();
        if let Err(error) = requests::insert_batch(&db, std::mem::take(&mut batch)).await {
            dropped.fetch_add(count as u64, Ordering::Relaxed);
            metrics.dropped_records.inc_by(count as u64);
            tracing::error!(%error, count, "could not store request records");
        }
        if stopping {
            return;
        }
    }
}

/// Delete history older than `request_retention_days`, now and every hour, until `stop`.
pub async fn trim_history(
    db: DatabaseConnection,
    config: Setting<crate::config::Config>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
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

//! Where records go.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::RequestRecord;

/// Receives one [`RequestRecord`] per client request.
///
/// Called on the response path, so it must not block: hand the record to a channel (and count
/// what does not fit) rather than writing to a database inline.
pub trait Recorder: Send + Sync + 'static {
    /// A request finished.
    fn record(&self, record: RequestRecord);
}

impl<F> Recorder for F
where
    F: Fn(RequestRecord) + Send + Sync + 'static,
{
    fn record(&self, record: RequestRecord) {
        self(record)
    }
}

/// Keeps every record in memory: for tests and small embeds.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    records: Mutex<Vec<RequestRecord>>,
    added: tokio::sync::Notify,
}

impl MemoryRecorder {
    /// The records so far, oldest first.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wait until there are at least `count` records, or `timeout` passes; returns the records.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<RequestRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.added.notified();
            let records = self.records();
            if records.len() >= count || tokio::time::Instant::now() >= deadline {
                return records;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, record: RequestRecord) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        self.added.notify_waiters();
    }
}

/// Drops records.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRecorder;

impl Recorder for NoopRecorder {
    fn record(&self, _record: RequestRecord) {}
}

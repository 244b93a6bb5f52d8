//! Where records go.

use std::sync::{Mutex, PoisonError};

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
}

impl MemoryRecorder {
    /// The records so far, oldest first.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, record: RequestRecord) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }
}

/// Drops records.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRecorder;

impl Recorder for NoopRecorder {
    fn record(&self, _record: RequestRecord) {}
}

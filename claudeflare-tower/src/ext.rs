//! Values the layers pass to each other in request and response extensions.

use std::sync::Arc;
use std::time::Duration;

use crate::account::AccountEntry;

/// What `Buffer` read from the request body: the model and whether it asked for a stream
/// (response extension, for `Record`, which takes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// `model` of the request body.
    pub model: Option<String>,
    /// `stream` of the request body.
    pub stream: bool,
}

/// The accounts `Select` chose for the request, in the order to try them (request extension).
#[derive(Debug, Clone)]
pub struct Candidates(pub Vec<Arc<AccountEntry>>);

/// The account an attempt goes to (request extension, set by `Failover` for each attempt),
/// and the account that served the response (response extension).
#[derive(Debug, Clone)]
pub struct SelectedAccount(pub Arc<AccountEntry>);

/// How many times `Failover` moved to another account for this request (response extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailoverAttempts(pub u32);

/// How long the upstream took to send response headers for one attempt (response extension, set
/// by `Upstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamTime(pub Duration);

/// Time a request spent waiting on the upstream and in backoff, over all its attempts (response
/// extension, set by `Failover`). The rest of the time to headers is claudeflare's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Upstream time to headers, summed over attempts.
    pub upstream: Duration,
    /// Backoff sleeps between retries.
    pub backoff: Duration,
}

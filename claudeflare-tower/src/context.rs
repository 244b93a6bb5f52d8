//! What the layers know about one request. Cheap to clone: clones share the same parts.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::Request;

use crate::account::AccountEntry;
use crate::provider::Outcome;

/// What the layers know about one request. Cheap to clone: clones share the same parts.
///
/// The one value the layers share about a request.
///
/// The outermost layer of the stack puts it in the request's extensions; the layers below fill
/// it in on the way down, each its own part:
///
/// | part | written by | read by |
/// |---|---|---|
/// | client (who sent it) | your service, before the stack | `Record` |
/// | models and accounts it may use | your service, before the stack | `Intake`, `Select` |
/// | model, stream flag | `Intake` | `Record` |
/// | candidates | `Select` | `Failover` |
/// | account of the attempt | `Failover` | `Auth`, `Classify`, `Record` |
/// | switches to another account, backoff time | `Failover` | `Record` |
/// | upstream time | `Upstream` | `Record` |
/// | outcome of the attempt | `Classify` | `Failover`, `Record` |
///
/// Data flows one way: nothing is put in response extensions, and `Record` reads the context
/// once, when the response headers arrive (the rest it reads from the body as it passes).
///
/// A layer used on its own finds no context and inserts a fresh one, so every layer works
/// alone; to hand `Auth` or `Classify` an account without `Failover`, put a context with
/// [`RequestContext::set_account`] in the request yourself.
///
/// The parts sit behind one uncontended mutex, taken for a few field reads or writes at a time
/// and never across an `.await`. One allocation per request, where the six extension types it
/// replaces cost one each, and again for every attempt's copy of the extensions.
#[derive(Clone, Default)]
pub struct RequestContext {
    parts: Arc<Mutex<Parts>>,
}

#[derive(Default)]
struct Parts {
    client: Option<Arc<str>>,
    /// The models the request may ask for; `None`: any.
    allowed_models: Option<Arc<[String]>>,
    /// The accounts the request may use, by name; `None`: any.
    allowed_accounts: Option<Arc<[String]>>,
    model: Option<String>,
    stream: bool,
    candidates: Arc<[Arc<AccountEntry>]>,
    account: Option<Arc<AccountEntry>>,
    switches: u32,
    upstream: Duration,
    backoff: Duration,
    outcome: Option<Outcome>,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = self.lock();
        f.debug_struct("RequestContext")
            .field("model", &parts.model)
            .field("stream", &parts.stream)
            .field("candidates", &parts.candidates.len())
            .field("account", &parts.account.as_ref().map(|a| a.name()))
            .field("switches", &parts.switches)
            .field("outcome", &parts.outcome)
            .finish_non_exhaustive()
    }
}

/// What a request's context held when its response headers arrived (see
/// [`RequestContext::snapshot`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ContextSnapshot {
    /// Who sent it (see [`RequestContext::set_client`]).
    pub client: Option<Arc<str>>,
    /// `model` of the request body.
    pub model: Option<String>,
    /// `stream` of the request body.
    pub stream: bool,
    /// The account of the last attempt: the one that served the response, or the last one
    /// refused.
    pub account: Option<Arc<AccountEntry>>,
    /// Times the request moved to another account.
    pub switches: u32,
    /// Time the upstream took to send response headers, summed over attempts.
    pub upstream: Duration,
    /// Backoff sleeps between retries.
    pub backoff: Duration,
    /// What the last attempt's response meant, when `Classify` saw it.
    pub outcome: Option<Outcome>,
}

impl RequestContext {
    /// A fresh, empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context of `req`, if a layer put one there.
    pub fn of<B>(req: &Request<B>) -> Option<&Self> {
        req.extensions().get::<Self>()
    }

    /// The context of `req`, inserted first if there is none.
    pub fn get_or_insert<B>(req: &mut Request<B>) -> Self {
        req.extensions_mut().get_or_insert_default::<Self>().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Parts> {
        // Nothing panics while holding it; a poisoned lock still holds consistent parts.
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Note who sent the request (the name of a client key, say), for its record.
    pub fn set_client(&self, client: Arc<str>) {
        self.lock().client = Some(client);
    }

    /// Let the request ask only for these models (whole ids; a `[1m]` suffix is taken off
    /// first). `Intake` refuses any other with 400 `invalid_request_error`, before an account is
    /// chosen.
    pub fn allow_models(&self, models: Arc<[String]>) {
        self.lock().allowed_models = Some(models);
    }

    /// Why `model` may not be asked for, when it may not. (A request that names no model, a
    /// model list say, is not refused here.)
    pub(crate) fn refuse_model(&self, model: Option<&str>) -> Option<String> {
        let model = model?;
        let parts = self.lock();
        let allowed = parts.allowed_models.as_deref()?;
        let id = model.trim();
        let id = id.split_once('[').map_or(id, |(id, _)| id);
        if allowed.iter().any(|allowed| allowed == id) {
            return None;
        }
        Some(format!(
            "the model `{model}` is not allowed here; the models allowed are: {}",
            allowed.join(", ")
        ))
    }

    /// Note the request's `model` and `stream` flag.
    pub fn set_request(&self, model: Option<String>, stream: bool) {
        let mut parts = self.lock();
        parts.model = model;
        parts.stream = stream;
    }

    /// Let the request use only the accounts of these names, or of these groups (a client key
    /// bound to part of the pool); `Select` leaves the others out.
    pub fn allow_accounts(&self, names: Arc<[String]>) {
        self.lock().allowed_accounts = Some(names);
    }

    /// Look at the request's model (as `Intake` read it) and the accounts it may use (`None`:
    /// any), without copying them.
    pub fn with_choice<R>(&self, f: impl FnOnce(Option<&str>, Option<&[String]>) -> R) -> R {
        let parts = self.lock();
        f(parts.model.as_deref(), parts.allowed_accounts.as_deref())
    }

    /// The accounts the request may use, in the order to try them.
    pub fn set_candidates(&self, candidates: Vec<Arc<AccountEntry>>) {
        self.lock().candidates = candidates.into();
    }

    /// The accounts the request may use, in order.
    pub fn candidates(&self) -> Arc<[Arc<AccountEntry>]> {
        Arc::clone(&self.lock().candidates)
    }

    /// The account the next attempt goes to.
    pub fn set_account(&self, account: Arc<AccountEntry>) {
        self.lock().account = Some(account);
    }

    /// The account of the current (or last) attempt.
    pub fn account(&self) -> Option<Arc<AccountEntry>> {
        self.lock().account.clone()
    }

    /// The request moved to account `account`, the next candidate.
    pub(crate) fn switch_to(&self, account: Arc<AccountEntry>) {
        let mut parts = self.lock();
        parts.account = Some(account);
        parts.switches = parts.switches.saturating_add(1);
    }

    /// The upstream took `time` to answer one attempt (or to fail).
    pub(crate) fn add_upstream_time(&self, time: Duration) {
        self.lock().upstream += time;
    }

    /// A retry waited `time` first.
    pub(crate) fn add_backoff(&self, time: Duration) {
        self.lock().backoff += time;
    }

    /// What the current attempt's response meant.
    pub(crate) fn set_outcome(&self, outcome: Outcome) {
        self.lock().outcome = Some(outcome);
    }

    /// What the current attempt's response meant, when `Classify` saw it.
    pub fn outcome(&self) -> Option<Outcome> {
        self.lock().outcome
    }

    /// A new attempt starts: forget the last one's outcome.
    pub(crate) fn clear_outcome(&self) {
        self.lock().outcome = None;
    }

    /// Everything the context holds now.
    pub fn snapshot(&self) -> ContextSnapshot {
        self.read(|model| model.clone())
    }

    /// Everything the context holds, the model moved out rather than copied: for `Record`, the
    /// last reader.
    pub(crate) fn take(&self) -> ContextSnapshot {
        self.read(Option::take)
    }

    fn read(&self, model: impl FnOnce(&mut Option<String>) -> Option<String>) -> ContextSnapshot {
        let mut parts = self.lock();
        ContextSnapshot {
            client: parts.client.clone(),
            model: model(&mut parts.model),
            stream: parts.stream,
            account: parts.account.clone(),
            switches: parts.switches,
            upstream: parts.upstream,
            backoff: parts.backoff,
            outcome: parts.outcome,
        }
    }
}

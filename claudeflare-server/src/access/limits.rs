//! A key's limits: its place in flight, its requests per minute, its monthly budget.

use super::*;

/// What each key spent in one calendar month (UTC).
#[derive(Default)]
pub(super) struct Spent {
    pub(super) month: Option<chrono::DateTime<Utc>>,
    pub(super) by_key: HashMap<Arc<str>, f64>,
}

impl Spent {
    /// The map of `now`'s month, emptied when a new month began.
    pub(super) fn of(&mut self, now: chrono::DateTime<Utc>) -> &mut HashMap<Arc<str>, f64> {
        let month = keys::month_start(now);
        if self.month != Some(month) {
            self.month = Some(month);
            self.by_key.clear();
        }
        &mut self.by_key
    }
}

impl Access {
    pub(super) async fn refresh_spending(&self, db: &DatabaseConnection) {
        let now = Utc::now();
        match keys::usage_since(db, keys::month_start(now)).await {
            Ok(usage) => {
                let mut spent = self.spent();
                let by_key = spent.of(now);
                // The stored total, or this instance's count when it is ahead (its last
                // requests not stored yet).
                for (name, _, cost) in usage {
                    let entry = by_key.entry(Arc::from(name)).or_default();
                    *entry = entry.max(cost);
                }
            }
            Err(error) => tracing::warn!(%error, "could not read this month's spending per key"),
        }
    }

    pub(super) fn spent(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.inner
            .spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Count `usd` to the key `name` at once: the request after the one that spent a budget is
    /// refused on this instance, whatever the database writer is doing.
    pub fn spend(&self, name: &str, usd: f64) {
        if usd <= 0.0 {
            return;
        }
        let mut spent = self.spent();
        let by_key = spent.of(Utc::now());
        match by_key.get_mut(name) {
            Some(total) => *total += usd,
            None => {
                by_key.insert(Arc::from(name), usd);
            }
        }
    }

    /// What the key `name` spent this month, as far as this instance knows.
    pub fn spent_by(&self, name: &str) -> f64 {
        self.spent()
            .of(Utc::now())
            .get(name)
            .copied()
            .unwrap_or(0.0)
    }

    /// Where `key` stands against its monthly budget, if it has one.
    pub fn standing(&self, key: &ClientKey) -> Option<crate::budget::Standing> {
        let budget = key.limits.monthly_budget_usd?;
        Some(crate::budget::Standing::new(
            self.spent_by(&key.name),
            budget,
            Utc::now(),
        ))
    }

    /// Take a request of `key` in, or say which limit it is over. The guard ends it.
    pub fn admit(&self, key: &Arc<ClientKey>) -> Result<InFlight, Refusal> {
        let limits = key.limits;
        if let Some(standing) = self.standing(key) {
            if standing.spent_out() {
                return Err(standing.refusal(&key.name, Utc::now()));
            }
        }
        let before = key.in_flight.fetch_add(1, Ordering::AcqRel);
        // Counted in from here: dropping the guard (refused below, or at the response's end)
        // counts it out.
        let guard = InFlight(Arc::clone(key));
        if let Some(limit) = limits.concurrency {
            if before >= u64::from(limit) {
                return Err(Refusal {
                    retry_after: Some(1),
                    ..Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "the key `{}` is over its limit of {limit} requests in flight",
                            key.name
                        ),
                    )
                });
            }
        }
        if let (Some(rpm), Some(per_minute)) = (limits.rpm, &key.per_minute) {
            if let Err(wait) = per_minute.take() {
                return Err(Refusal {
                    retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                    ..Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!(
                            "the key `{}` is over its limit of {rpm} requests per minute",
                            key.name
                        ),
                    )
                });
            }
        }
        let mut used = self
            .inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Copied once per key between two writes of `last_used_at`, not once per request.
        if !used.contains(&key.id) {
            used.insert(key.id.clone());
        }
        drop(used);
        Ok(guard)
    }
}

/// A request of a key in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlight(Arc<ClientKey>);

impl InFlight {
    /// The key.
    pub fn key(&self) -> &Arc<ClientKey> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

//! The bearers of sign-ins from Claude Code's `/login`: each acts as its client key.

use super::*;

/// A bearer token: the key it acts as, until when.
pub(super) struct SignedIn {
    pub(super) key: Arc<str>,
    pub(super) until: chrono::DateTime<Utc>,
    /// Issued by this instance then (kept across a reload that may have missed it).
    pub(super) issued_here: Option<Instant>,
}

impl Access {
    /// A bearer token this instance just issued, usable here at once (the others read it
    /// from the database within a second).
    pub fn add_bearer(&self, token: &str, key: &str, until: chrono::DateTime<Utc>) {
        self.bearers().insert(
            keys::digest(token),
            SignedIn {
                key: Arc::from(key),
                until,
                issued_here: Some(Instant::now()),
            },
        );
    }

    /// Forget a bearer token (revoked here; the others drop it at their next reload).
    pub fn remove_bearer(&self, token: &str) {
        self.bearers().remove(&keys::digest(token));
    }

    pub(super) fn bearers(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], SignedIn>> {
        self.inner
            .bearers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the stored bearer tokens: every instance's, and no more those revoked anywhere.
    pub(super) async fn load_bearers(&self, db: &DatabaseConnection) -> Result<(), DbError> {
        let read_at = Instant::now();
        let stored = signin::live_bearers(db, Utc::now()).await?;
        let mut bearers: HashMap<[u8; 32], SignedIn> = stored
            .into_iter()
            .filter_map(|t| {
                let digest = decode_hash(&t.digest)?;
                let bearer = SignedIn {
                    key: Arc::from(t.key_name),
                    until: t.expires_at,
                    issued_here: None,
                };
                Some((digest, bearer))
            })
            .collect();
        let mut current = self.bearers();
        for (digest, bearer) in current.drain() {
            // Issued while the database was being read: it may not be in what was read.
            if bearer.issued_here.is_some_and(|at| at >= read_at) {
                bearers.entry(digest).or_insert(bearer);
            }
        }
        *current = bearers;
        Ok(())
    }
}

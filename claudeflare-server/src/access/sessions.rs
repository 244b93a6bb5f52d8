//! Dashboard logins: a session cookie per admin login, stored (its SHA-256) so that every
//! instance honours it.

use super::*;

/// A dashboard login.
pub(super) struct Session {
    pub(super) key: Arc<str>,
    pub(super) until: chrono::DateTime<Utc>,
    /// When this instance started it: a reload that was reading the database meanwhile must not
    /// drop it.
    pub(super) started_here: Option<Instant>,
}

impl Access {
    /// Start a dashboard session for admin key `key`, stored so that every instance of the
    /// database honours it; returns the cookie's value (random, not the key; only its SHA-256
    /// is stored).
    pub async fn start_session(
        &self,
        db: &DatabaseConnection,
        key: &ClientKey,
    ) -> Result<String, DbError> {
        use aes_gcm::aead::rand_core::RngCore;
        let mut bytes = [0u8; 32];
        aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let digest = keys::hash(&token);
        let until = Utc::now() + SESSION_LIFETIME;
        keys::add_session(db, &digest, &key.name, until).await?;
        self.sessions().insert(
            digest,
            Session {
                key: Arc::clone(&key.name),
                until,
                started_here: Some(Instant::now()),
            },
        );
        Ok(token)
    }

    /// End the session `token`, on every instance.
    pub async fn end_session(&self, db: &DatabaseConnection, token: &str) -> Result<(), DbError> {
        let digest = keys::hash(token);
        self.sessions().remove(&digest);
        keys::end_session(db, &digest).await
    }

    /// Whether `token` is a live session of a key that still exists and is still admin.
    pub fn session_is_admin(&self, token: &str) -> bool {
        let digest = keys::hash(token);
        let sessions = self.sessions();
        let Some(session) = sessions.get(&digest).filter(|s| s.until > Utc::now()) else {
            return false;
        };
        self.inner
            .keys
            .current()
            .by_digest
            .values()
            .any(|k| k.admin && k.name == session.key)
    }

    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the stored sessions: every instance's logins, and no more those ended anywhere.
    pub(super) async fn load_sessions(&self, db: &DatabaseConnection) -> Result<(), DbError> {
        let read_at = Instant::now();
        let stored = keys::sessions(db, Utc::now()).await?;
        let mut sessions: HashMap<String, Session> = stored
            .into_iter()
            .map(|s| {
                let session = Session {
                    key: Arc::from(s.key_name),
                    until: s.expires_at,
                    started_here: None,
                };
                (s.digest, session)
            })
            .collect();
        let mut current = self.sessions();
        for (digest, session) in current.drain() {
            // Started while the database was being read: it may not be in what was read.
            if session.started_here.is_some_and(|at| at >= read_at) {
                sessions.entry(digest).or_insert(session);
            }
        }
        *current = sessions;
        Ok(())
    }

    /// The session token of a request's cookie, if it has one.
    pub fn session_token(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == SESSION_COOKIE)
            .map(|c| c.value().to_owned())
    }

    /// Whether a request carries admin rights: an admin key as `Bearer` (or `x-api-key`), or a
    /// dashboard session. `Err` says why not: 401 (nothing usable) or 403 (a key, not admin).
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(presented) = Self::presented(headers) {
            return match self.find(&presented) {
                Some(key) if key.admin => Ok(()),
                Some(key) => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("the key `{}` is not an admin key", key.name),
                )),
                None => Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid key")),
            };
        }
        if Self::session_token(headers).is_some_and(|t| self.session_is_admin(&t)) {
            return Ok(());
        }
        Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "an admin key is required (authorization: Bearer KEY, or log in on the dashboard)",
        ))
    }
}

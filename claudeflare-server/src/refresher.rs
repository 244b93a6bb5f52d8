//! The server's token refresher: the OAuth refresh grant, coordinated with other processes
//! through the database, the rotated tokens stored before they are used.

use std::sync::Arc;

use claudeflare_tower::{AccountInfo, Backend, BoxFuture, Setting};
use claudeflare_tower::{Provider, Vertex};
use claudeflare_tower::{RefreshError, TokenPair, TokenRefresher};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;
use tokio::runtime::Handle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::oauth;
use crate::secrets::Cipher;

/// Refreshes against `oauth_token_url` as `client_id` (read from the live configuration).
///
/// The refresh runs on the runtime the refresher was made on (the server's main one), whichever
/// thread's request needs it: database connections belong to the runtime that opened them.
pub struct ServerRefresher {
    db: DatabaseConnection,
    cipher: Cipher,
    config: Setting<Config>,
    metrics: Arc<Metrics>,
    runtime: Handle,
}

impl ServerRefresher {
    /// A refresher storing tokens in `db`. Call it from within the runtime that owns `db`.
    pub fn new(
        db: DatabaseConnection,
        cipher: Cipher,
        config: Setting<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            cipher,
            config,
            metrics,
            runtime: Handle::current(),
        }
    }
}

impl TokenRefresher for ServerRefresher {
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        if let Backend::Vertex { .. } = account.backend {
            // A service account's grant: nothing rotates, nothing to store or coordinate (each
            // instance holds a token of its own).
            return Box::pin(async move {
                let result = Provider::refresh(&Vertex, account, refresh_token).await;
                self.metrics
                    .refresh(if result.is_ok() { "ok" } else { "failed" });
                result
            });
        }
        let (db, cipher, config) = (self.db.clone(), self.cipher.clone(), self.config.get());
        let (info, presented) = (account.clone(), refresh_token.clone());
        // Runs to the end even if the request that wanted it goes away: the rotated tokens are
        // stored either way.
        let refresh = self.runtime.spawn(async move {
            oauth::coordinated_refresh(&db, &cipher, &config, &info, &presented).await
        });
        Box::pin(async move {
            let result = refresh.await.unwrap_or_else(|error| {
                Err(RefreshError::Temporary(
                    format!("the refresh task failed: {error}").into(),
                ))
            });
            match &result {
                Ok(_) => self.metrics.refresh("ok"),
                Err(RefreshError::Rejected(reason)) => {
                    self.metrics.refresh("rejected");
                    tracing::error!(
                        account = %account.name, %reason,
                        "the refresh token was refused; run `claudeflare-server reauth {}` to sign in again", account.name
                    );
                }
                Err(_) => self.metrics.refresh("failed"),
            }
            result
        })
    }

    // `persist` stays the default: `coordinated_refresh` stores the tokens before returning them.
}

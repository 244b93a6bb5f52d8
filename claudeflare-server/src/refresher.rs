//! The server's token refresher: the OAuth refresh grant, coordinated with other processes
//! through the database, the rotated tokens stored before they are used.

use std::sync::Arc;

use claudeflare_tower::auth::{RefreshError, TokenPair, TokenRefresher};
use claudeflare_tower::{AccountInfo, BoxFuture, Setting};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::oauth;
use crate::secrets::Cipher;

/// Refreshes against `oauth_token_url` as `client_id` (read from the live configuration).
pub struct ServerRefresher {
    db: DatabaseConnection,
    cipher: Cipher,
    config: Setting<Config>,
    metrics: Arc<Metrics>,
}

impl ServerRefresher {
    /// A refresher storing tokens in `db`.
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
        }
    }
}

impl TokenRefresher for ServerRefresher {
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(async move {
            let config = self.config.get();
            let result = oauth::coordinated_refresh(
                &self.db,
                &self.cipher,
                &config,
                &account.id,
                refresh_token,
            )
            .await;
            match &result {
                Ok(_) => self.metrics.refresh("ok"),
                Err(RefreshError::Rejected(reason)) => {
                    self.metrics.refresh("rejected");
                    tracing::error!(
                        account = %account.name, %reason,
                        "the refresh token was refused; run `claudeflare-server reauth {}` to sign in again", account.name
                    );
                }
                Err(RefreshError::Temporary(_)) => self.metrics.refresh("failed"),
            }
            result
        })
    }

    // `persist` stays the default: `coordinated_refresh` stores the tokens before returning them.
}

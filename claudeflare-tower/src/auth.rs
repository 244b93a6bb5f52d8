//! The `Auth` layer: replaces the client's credentials with those of the account being tried.
//!
//! The client's own `x-api-key` and `authorization` never reach the upstream. Console accounts
//! send `x-api-key`; max (subscription) accounts send `authorization: Bearer …` and get
//! `oauth-2025-04-20` appended to `anthropic-beta`.
//!
//! Access tokens are refreshed through a [`TokenRefresher`] shortly before they expire, one
//! refresh per account at a time however many requests wait for it (single flight). The new
//! token pair goes to [`TokenRefresher::persist`] before it is used, since refresh tokens rotate.
//! A 401 voids the token that got it, so the next attempt (which `Failover` makes at once)
//! refreshes. A definitive refresh failure marks the account as needing re-authentication.
//!
//! ```
//! use claudeflare_tower::{AccountPool, auth::AuthLayer};
//! let layer = AuthLayer::new(AccountPool::default());
//! // With OAuth accounts: AuthLayer::new(pool).with_refresher(Arc::new(my_refresher))
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use secrecy::SecretString;
use tower::{Layer, Service};

use crate::account::{AccountEntry, AccountInfo, Credentials, Mode, OAuthTokens};
use crate::ext::SelectedAccount;
use crate::pool::AccountPool;
use crate::{BoxError, BoxFuture};

/// The beta flag subscription tokens need.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// Tokens expiring sooner than this are refreshed before use.
pub const REFRESH_MARGIN: TimeDelta = TimeDelta::minutes(5);

/// Header names as constants: a `&str` name is parsed and validated at every use.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// A fresh token pair from a refresh.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The new access token.
    pub access_token: SecretString,
    /// The rotated refresh token, when the server sent one (keep the old one otherwise).
    pub refresh_token: Option<SecretString>,
    /// When the new access token expires.
    pub expires_at: DateTime<Utc>,
}

/// Why a refresh failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The refresh token is no longer accepted (`invalid_grant` and the like): only a new login
    /// helps.
    #[error("the refresh token was rejected: {0}")]
    Rejected(String),
    /// Network trouble or a server error: try again later.
    #[error("token refresh failed: {0}")]
    Temporary(BoxError),
}

/// Gets new tokens for subscription accounts, and stores them before they are used.
pub trait TokenRefresher: Send + Sync + 'static {
    /// Exchange `refresh_token` of `account` for new tokens.
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>>;

    /// Store the new tokens of `account` durably. Called before the tokens are used, because the
    /// old refresh token may already be dead. The default keeps them in memory only.
    fn persist<'a>(
        &'a self,
        account: &'a AccountInfo,
        tokens: &'a OAuthTokens,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        let _ = (account, tokens);
        Box::pin(async { Ok(()) })
    }
}

/// Why `Auth` could not give a request credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No [`SelectedAccount`] extension: `Auth` needs `Failover` (or your code) to choose one.
    #[error("no account was chosen for this request")]
    NoAccount,
    /// The account's credential is dead; it is out of rotation until re-authenticated.
    #[error("account `{account}` needs re-authentication: {reason}")]
    NeedsReauth {
        /// Account name.
        account: String,
        /// What happened.
        reason: String,
    },
    /// The refresh failed for now; the account stays in rotation.
    #[error("account `{account}`: {source}")]
    Refresh {
        /// Account name.
        account: String,
        /// The refresh error.
        source: RefreshError,
    },
}

/// Injects account credentials. See the [module docs](self).
#[derive(Clone)]
pub struct AuthLayer {
    pool: AccountPool,
    refresher: Option<Arc<dyn TokenRefresher>>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("refresher", &self.refresher.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Credentials of accounts of `pool` (whose store hears about accounts needing re-auth).
    /// Without a refresher, expired subscription tokens put the account out of rotation.
    pub fn new(pool: AccountPool) -> Self {
        Self {
            pool,
            refresher: None,
        }
    }

    /// Refresh subscription tokens with `refresher`.
    pub fn with_refresher(mut self, refresher: Arc<dyn TokenRefresher>) -> Self {
        self.refresher = Some(refresher);
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            pool: self.pool.clone(),
            refresher: self.refresher.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    pool: AccountPool,
    refresher: Option<Arc<dyn TokenRefresher>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(account) = req
            .extensions()
            .get::<SelectedAccount>()
            .map(|a| Arc::clone(&a.0))
        else {
            return ResponseFuture::failed(AuthError::NoAccount);
        };
        strip_client_credentials(req.headers_mut());
        // The service that was made ready goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if let Some((credential, generation)) =
            account.usable_credential(Utc::now(), REFRESH_MARGIN)
        {
            set_credential(req.headers_mut(), account.mode(), credential);
            return ResponseFuture::calling(
                inner.call(req),
                account,
                generation,
                self.pool.clone(),
            );
        }
        let obtain = obtain_credential(
            Arc::clone(&account),
            self.refresher.clone(),
            self.pool.clone(),
        );
        ResponseFuture {
            state: State::Obtaining {
                obtain,
                inner: Some(inner),
                req: Some(req),
            },
            account: Some(account),
            generation: 0,
            pool: self.pool.clone(),
        }
    }
}

/// Remove whatever credential the client sent.
fn strip_client_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(X_API_KEY);
}

fn set_credential(headers: &mut HeaderMap, mode: Mode, credential: HeaderValue) {
    match mode {
        Mode::Console => {
            headers.insert(X_API_KEY, credential);
        }
        Mode::Max => {
            headers.insert(header::AUTHORIZATION, credential);
            add_oauth_beta(headers);
        }
    }
}

/// Append the OAuth beta flag to `anthropic-beta` unless the client already lists it.
fn add_oauth_beta(headers: &mut HeaderMap) {
    let values: Vec<&str> = headers
        .get_all(&ANTHROPIC_BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if values.contains(&OAUTH_BETA) {
        return;
    }
    let mut joined = values.join(",");
    if !joined.is_empty() {
        joined.push(',');
    }
    joined.push_str(OAUTH_BETA);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(ANTHROPIC_BETA, value);
    }
}

/// Get a usable credential for `account`, refreshing its token if needed.
fn obtain_credential(
    account: Arc<AccountEntry>,
    refresher: Option<Arc<dyn TokenRefresher>>,
    pool: AccountPool,
) -> BoxFuture<'static, Result<(HeaderValue, u64), AuthError>> {
    Box::pin(async move { credential(&account, refresher.as_ref(), &pool, REFRESH_MARGIN).await })
}

/// Refresh the token of subscription `account` if it expires within `margin` (a background task
/// refreshing ahead of time passes a wider margin than requests do). Refreshes of one account are
/// serialised with those requests trigger: whoever waited behind a refresh uses its result.
pub async fn refresh_if_needed(
    account: &Arc<AccountEntry>,
    refresher: &Arc<dyn TokenRefresher>,
    pool: &AccountPool,
    margin: TimeDelta,
) -> Result<(), AuthError> {
    credential(account, Some(refresher), pool, margin)
        .await
        .map(|_| ())
}

async fn credential(
    account: &Arc<AccountEntry>,
    refresher: Option<&Arc<dyn TokenRefresher>>,
    pool: &AccountPool,
    margin: TimeDelta,
) -> Result<(HeaderValue, u64), AuthError> {
    {
        let needs_reauth = |reason: String| {
            pool.needs_reauth(account, reason.clone());
            tracing::error!(account = account.name(), %reason, "account needs re-authentication");
            AuthError::NeedsReauth {
                account: account.name().to_owned(),
                reason,
            }
        };
        if let Some(credential) = account.usable_credential(Utc::now(), margin) {
            return Ok(credential);
        }
        if account.mode() == Mode::Console {
            // A key is only unusable once the upstream refused it.
            return Err(needs_reauth("the API key was rejected".to_owned()));
        }
        let _single_flight = account.refresh_lock.lock().await;
        if let Some(credential) = account.usable_credential(Utc::now(), margin) {
            return Ok(credential);
        }
        let Some(refresher) = refresher else {
            return Err(needs_reauth(
                "the access token expired and no refresher is configured".to_owned(),
            ));
        };
        let Some(refresh_token) = account.refresh_token() else {
            return Err(needs_reauth("there is no refresh token".to_owned()));
        };
        let info = account.info();
        tracing::info!(account = account.name(), "refreshing the access token");
        match refresher.refresh(&info, &refresh_token).await {
            Ok(pair) => {
                let tokens = OAuthTokens {
                    access_token: pair.access_token,
                    refresh_token: pair.refresh_token.unwrap_or(refresh_token),
                    expires_at: pair.expires_at,
                };
                if let Err(error) = refresher.persist(&info, &tokens).await {
                    // The old refresh token may be dead already: keep the new pair in memory
                    // rather than lose the account, and say so loudly.
                    tracing::error!(account = account.name(), %error, "could not store refreshed tokens");
                }
                account.set_credentials(Credentials::OAuth(tokens));
                account
                    .usable_credential(Utc::now(), TimeDelta::zero())
                    .ok_or_else(|| {
                        needs_reauth("the refreshed token is already expired".to_owned())
                    })
            }
            Err(RefreshError::Rejected(reason)) => Err(needs_reauth(reason)),
            Err(source) => {
                tracing::warn!(account = account.name(), error = %source, "token refresh failed");
                Err(AuthError::Refresh {
                    account: account.name().to_owned(),
                    source,
                })
            }
        }
    }
}

pin_project! {
    /// Future of [`Auth`].
    pub struct ResponseFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
        account: Option<Arc<AccountEntry>>,
        generation: u64,
        pool: AccountPool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        Obtaining {
            obtain: BoxFuture<'static, Result<(HeaderValue, u64), AuthError>>,
            inner: Option<S>,
            req: Option<Request<B>>,
        },
        Calling { #[pin] future: S::Future },
        Failed { error: Option<AuthError> },
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    fn failed(error: AuthError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            account: None,
            generation: 0,
            pool: AccountPool::default(),
        }
    }

    fn calling(
        future: S::Future,
        account: Arc<AccountEntry>,
        generation: u64,
        pool: AccountPool,
    ) -> Self {
        Self {
            state: State::Calling { future },
            account: Some(account),
            generation,
            pool,
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next = match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let error = error.take().map_or_else(
                        || BoxError::from("auth polled after completion"),
                        BoxError::from,
                    );
                    return Poll::Ready(Err(error));
                }
                StateProj::Obtaining { obtain, inner, req } => {
                    let (credential, generation) = match std::task::ready!(obtain.as_mut().poll(cx))
                    {
                        Ok(obtained) => obtained,
                        Err(error) => return Poll::Ready(Err(error.into())),
                    };
                    let (Some(mut service), Some(mut req), Some(account)) =
                        (inner.take(), req.take(), this.account.as_ref())
                    else {
                        return Poll::Ready(Err("auth polled after completion".into()));
                    };
                    set_credential(req.headers_mut(), account.mode(), credential);
                    *this.generation = generation;
                    State::Calling {
                        future: service.call(req),
                    }
                }
                StateProj::Calling { future } => {
                    let response = std::task::ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        if let Some(account) = this.account.take() {
                            account.reject_credential(*this.generation);
                            if account.mode() == Mode::Console {
                                this.pool
                                    .needs_reauth(&account, "the API key was rejected (401)");
                                tracing::error!(
                                    account = account.name(),
                                    "the API key was rejected; the account needs re-authentication"
                                );
                            }
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_beta_is_appended_once() {
        let mut headers = HeaderMap::new();
        add_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], OAUTH_BETA);
        add_oauth_beta(&mut headers);
        assert_eq!(headers["anthropic-beta"], OAUTH_BETA);

        let mut headers = HeaderMap::new();
        headers.append(
            "anthropic-beta",
            HeaderValue::from_static("prompt-caching-2024-07-31, foo"),
        );
        headers.append("anthropic-beta", HeaderValue::from_static("bar"));
        add_oauth_beta(&mut headers);
        assert_eq!(
            headers["anthropic-beta"],
            "prompt-caching-2024-07-31,foo,bar,oauth-2025-04-20"
        );
    }

    #[test]
    fn client_credentials_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("client-key"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        strip_client_credentials(&mut headers);
        set_credential(
            &mut headers,
            Mode::Console,
            HeaderValue::from_static("account-key"),
        );
        assert_eq!(headers["x-api-key"], "account-key");
        assert!(headers.get(header::AUTHORIZATION).is_none());
    }
}

//! Injects account credentials.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use secrecy::SecretString;
use tower::{Layer, Service};

use crate::account::{AccountEntry, AccountInfo, Credentials, OAuthTokens};
use crate::context::RequestContext;
use crate::pool::AccountPool;
use crate::provider::{InvalidUpstream, Outcome, Provider, Providers};
use crate::provider::{RefreshError, TokenPair};
use crate::{BoxError, BoxFuture};

/// Tokens expiring sooner than this are refreshed before use.
pub const REFRESH_MARGIN: TimeDelta = TimeDelta::minutes(5);

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

/// A [`TokenRefresher`] that uses the provider's refresh grant and keeps the new tokens in
/// memory only: the default of [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ProviderRefresher<P>(pub(crate) P);

impl<P: Provider> TokenRefresher for ProviderRefresher<P> {
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        self.0.refresh(account, refresh_token)
    }
}

/// Why `Auth` could not give a request credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No account in the request's context: `Auth` needs `Failover` (or your code) to choose one.
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
    /// The provider could not make an upstream request of it for this account.
    #[error(transparent)]
    Prepare(#[from] InvalidUpstream),
}

/// Injects account credentials.
///
/// The `Auth` layer: replaces the client's credentials with those of the account being tried.
///
/// The account is the one the request's [`RequestContext`] names (`Failover` sets it for each
/// attempt). Once its credential is usable, the [`Provider`] prepares the request for it
/// ([`Provider::prepare`]): the upstream URL, the client's credentials off (they never reach
/// the upstream) and the account's on, in the provider's header style (for Anthropic: console
/// accounts send `x-api-key`; max accounts send `authorization: Bearer …` and get
/// `oauth-2025-04-20` appended to `anthropic-beta`), and the model through the account's map.
///
/// Access tokens are refreshed shortly before they expire, one refresh per account at a time
/// however many requests wait for it (single flight), by the provider's refresh grant, or by a
/// [`TokenRefresher`] of your own that also stores the new tokens
/// ([`TokenRefresher::persist`] runs before they are used, since refresh tokens rotate). A 401
/// voids the token that got it, so the next attempt (which `Failover` makes at once) refreshes.
/// A definitive refresh failure marks the account as needing re-authentication.
///
/// ```
/// use claudeflare_tower::{AccountPool, AuthLayer};
/// let layer = AuthLayer::new(AccountPool::default());
/// // To store refreshed tokens: AuthLayer::new(pool).with_refresher(Arc::new(my_refresher))
/// ```
#[derive(Clone)]
pub struct AuthLayer<P = Providers> {
    pool: AccountPool,
    provider: P,
    refresher: Arc<dyn TokenRefresher>,
}

impl<P> std::fmt::Debug for AuthLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// Credentials of accounts of `pool` (whose store hears about accounts needing re-auth), put
    /// on by each account's provider among the built-in [`Providers`]; tokens refreshed by
    /// Anthropic's refresh grant and kept in memory.
    pub fn new(pool: AccountPool) -> Self {
        Self::with_provider(Providers::new(), pool)
    }
}

impl<P: Provider> AuthLayer<P> {
    /// Credentials of accounts of `pool`, put on requests the way `provider` wants them, and
    /// refreshed by its refresh grant.
    pub fn with_provider(provider: P, pool: AccountPool) -> Self {
        Self {
            pool,
            refresher: Arc::new(ProviderRefresher(provider.clone())),
            provider,
        }
    }

    /// Refresh subscription tokens with `refresher` (which stores them, say).
    pub fn with_refresher(mut self, refresher: Arc<dyn TokenRefresher>) -> Self {
        self.refresher = refresher;
        self
    }
}

impl<S, P: Clone> Layer<S> for AuthLayer<P> {
    type Service = Auth<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            pool: self.pool.clone(),
            provider: self.provider.clone(),
            refresher: Arc::clone(&self.refresher),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S, P = Providers> {
    inner: S,
    pool: AccountPool,
    provider: P,
    refresher: Arc<dyn TokenRefresher>,
}

inner_accessors!(Auth<S, P>);

impl<S: std::fmt::Debug, P> std::fmt::Debug for Auth<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, P, ResBody> Service<Request<Full<Bytes>>> for Auth<S, P>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: Provider,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = AuthFuture<S, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let Some(context) = RequestContext::of(&req).cloned() else {
            return AuthFuture::failed(AuthError::NoAccount);
        };
        let Some(account) = context.account() else {
            return AuthFuture::failed(AuthError::NoAccount);
        };
        // The service that was made ready goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let base = Base {
            account,
            generation: 0,
            pool: self.pool.clone(),
            context,
            provider: self.provider.clone(),
        };
        if let Some(generation) = base.account.usable(Utc::now(), REFRESH_MARGIN) {
            return match base.prepare(&mut req, generation) {
                Ok(base) => AuthFuture {
                    state: State::Calling {
                        future: inner.call(req),
                    },
                    base: Some(base),
                },
                Err(error) => AuthFuture::failed(error),
            };
        }
        let obtain = obtain_credential(
            Arc::clone(&base.account),
            Arc::clone(&self.refresher),
            self.pool.clone(),
        );
        AuthFuture {
            state: State::Obtaining {
                obtain,
                inner: Some(inner),
                req: Some(req),
            },
            base: Some(base),
        }
    }
}

/// What the future of one attempt knows: the account, its credential's generation, and where to
/// say what happened.
struct Base<P> {
    account: Arc<AccountEntry>,
    generation: u64,
    pool: AccountPool,
    context: RequestContext,
    provider: P,
}

impl<P: Provider> Base<P> {
    /// Let the provider make `req` the account's upstream request, with the credential of
    /// `generation`.
    fn prepare(
        mut self,
        req: &mut Request<Full<Bytes>>,
        generation: u64,
    ) -> Result<Self, AuthError> {
        self.generation = generation;
        match self.provider.prepare(&self.account, req) {
            Ok(()) => Ok(self),
            Err(error) => Err(self.fail(error.into())),
        }
    }

    /// Note what `error` means (the provider says), and hand it on.
    fn fail(&self, error: AuthError) -> AuthError {
        let outcome = self.provider.classify_error(&self.account, &error);
        self.context.set_outcome(outcome);
        error
    }

    /// The upstream answered: a refused credential is not used again, and a refused key puts
    /// its account out of rotation (a key cannot be refreshed).
    fn answered(&self) {
        if self.context.outcome() != Some(Outcome::AuthFailed) {
            return;
        }
        let account = &self.account;
        account.reject_credential(self.generation);
        if account.refresh_token().is_none() {
            self.pool
                .needs_reauth(account, "the API key was rejected (401)");
            tracing::error!(
                account = account.name(),
                "the API key was rejected; the account needs re-authentication"
            );
        }
    }
}

/// Get a usable credential for `account`, refreshing its token if needed.
fn obtain_credential(
    account: Arc<AccountEntry>,
    refresher: Arc<dyn TokenRefresher>,
    pool: AccountPool,
) -> BoxFuture<'static, Result<u64, AuthError>> {
    Box::pin(async move { credential(&account, &refresher, &pool, REFRESH_MARGIN).await })
}

impl AccountPool {
    /// Refresh the token of subscription `account` with `refresher` if it expires within
    /// `margin` (a background task refreshing ahead of time passes a wider margin than
    /// requests do, which use [`REFRESH_MARGIN`]). Refreshes of one account are serialised
    /// with those requests trigger: whoever waited behind a refresh uses its result.
    pub async fn refresh_token(
        &self,
        account: &Arc<AccountEntry>,
        refresher: &Arc<dyn TokenRefresher>,
        margin: TimeDelta,
    ) -> Result<(), AuthError> {
        credential(account, refresher, self, margin)
            .await
            .map(|_| ())
    }
}

async fn credential(
    account: &Arc<AccountEntry>,
    refresher: &Arc<dyn TokenRefresher>,
    pool: &AccountPool,
    margin: TimeDelta,
) -> Result<u64, AuthError> {
    {
        let needs_reauth = |reason: String| {
            pool.needs_reauth(account, reason.clone());
            tracing::error!(account = account.name(), %reason, "account needs re-authentication");
            AuthError::NeedsReauth {
                account: account.name().to_owned(),
                reason,
            }
        };
        if let Some(generation) = account.usable(Utc::now(), margin) {
            return Ok(generation);
        }
        let Some(refresh_token) = account.refresh_token() else {
            // A key is only unusable once the upstream refused it.
            return Err(needs_reauth("the API key was rejected".to_owned()));
        };
        let _single_flight = account.refresh_lock.lock().await;
        if let Some(generation) = account.usable(Utc::now(), margin) {
            return Ok(generation);
        }
        // Another refresh may have rotated it while this one waited.
        let refresh_token = account.refresh_token().unwrap_or(refresh_token);
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
                    .usable(Utc::now(), TimeDelta::zero())
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
    pub struct AuthFuture<S: Service<Request<Full<Bytes>>>, P> {
        #[pin]
        state: State<S>,
        base: Option<Base<P>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Full<Bytes>>>> {
        Obtaining {
            obtain: BoxFuture<'static, Result<u64, AuthError>>,
            inner: Option<S>,
            req: Option<Request<Full<Bytes>>>,
        },
        Calling { #[pin] future: S::Future },
        Failed { error: Option<AuthError> },
    }
}

impl<S: Service<Request<Full<Bytes>>>, P> AuthFuture<S, P> {
    fn failed(error: AuthError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            base: None,
        }
    }
}

impl<S, P, ResBody> Future for AuthFuture<S, P>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    P: Provider,
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
                    let obtained = std::task::ready!(obtain.as_mut().poll(cx));
                    let (Some(mut service), Some(mut req), Some(base)) =
                        (inner.take(), req.take(), this.base.take())
                    else {
                        return Poll::Ready(Err("auth polled after completion".into()));
                    };
                    let prepared = match obtained {
                        Ok(generation) => base.prepare(&mut req, generation),
                        Err(error) => Err(base.fail(error)),
                    };
                    match prepared {
                        Ok(base) => {
                            *this.base = Some(base);
                            State::Calling {
                                future: service.call(req),
                            }
                        }
                        Err(error) => return Poll::Ready(Err(error.into())),
                    }
                }
                StateProj::Calling { future } => {
                    let response = std::task::ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(base) = this.base.take() {
                        base.answered();
                    }
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}

//! [`Providers`]: the providers of one pool, each account's calls handed to its own.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use secrecy::SecretString;

use super::anthropic::AnthropicTap;
use super::cloud::CloudTap;
use super::{
    Anthropic, Backend, Bedrock, Classification, Compatible, InvalidUpstream, Outcome, Provider,
    RefreshError, StreamError, TapSummary, TokenPair, UsageTap, Vertex,
};
use crate::BoxFuture;
use crate::account::{AccountEntry, AccountInfo};
use crate::setting::Setting;

/// The providers of a pool: Anthropic, Anthropic-compatible backends, Bedrock, Vertex AI, and
/// any registered with
/// [`with`](Self::with). Each call goes to the provider the account's
/// [`Backend`] names, through a `match` for the built-in ones. Cheap to clone.
///
/// ```
/// use claudeflare_tower::{Anthropic, Providers};
/// let providers = Providers::new()
///     .anthropic(Anthropic::new().base_url(http::Uri::from_static("http://127.0.0.1:9000")));
/// ```
#[derive(Clone, Default)]
pub struct Providers {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    anthropic: Anthropic,
    compatible: Compatible,
    bedrock: Bedrock,
    vertex: Vertex,
    external: Vec<(Arc<str>, Arc<dyn DynProvider>)>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.external.iter().map(|(n, _)| &**n).collect();
        f.debug_struct("Providers")
            .field("anthropic", &self.inner.anthropic)
            .field("external", &names)
            .finish()
    }
}

impl Providers {
    /// Anthropic (at `https://api.anthropic.com`) and Anthropic-compatible backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Anthropic as configured here (its base URL, its OAuth client).
    pub fn anthropic(mut self, anthropic: Anthropic) -> Self {
        Arc::make_mut(&mut self.inner).anthropic = anthropic;
        self
    }

    /// Where Anthropic's API is (a mock in tests); a [`Setting`] lets it change while serving.
    pub fn upstream_url(self, url: impl Into<Setting<http::Uri>>) -> Self {
        let anthropic = self.inner.anthropic.clone().base_url(url);
        self.anthropic(anthropic)
    }

    /// Register `provider` for the accounts whose backend is [`Backend::External`] with `name`.
    pub fn with(mut self, name: impl Into<Arc<str>>, provider: impl Provider) -> Self {
        let name = name.into();
        let inner = Arc::make_mut(&mut self.inner);
        inner.external.retain(|(n, _)| *n != name);
        inner.external.push((name, Arc::new(provider)));
        self
    }

    /// Anthropic, as configured.
    pub fn anthropic_provider(&self) -> &Anthropic {
        &self.inner.anthropic
    }

    fn external(&self, name: &str) -> Option<&dyn DynProvider> {
        self.inner
            .external
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, p)| &**p)
    }
}

/// [`Provider`] as an object, for the providers registered by name.
trait DynProvider: Send + Sync + 'static {
    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream>;
    fn needs_body(&self, account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool;
    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes>;
    fn classify(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification;
    fn classify_error(
        &self,
        account: &AccountEntry,
        error: &(dyn std::error::Error + 'static),
    ) -> Outcome;
    fn classify_stream_error(
        &self,
        account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification;
    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> Box<dyn UsageTap>;
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>>;
}

impl<P: Provider> DynProvider for P {
    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        Provider::prepare(self, account, req)
    }
    fn needs_body(&self, account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool {
        Provider::needs_body(self, account, status, headers)
    }
    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes> {
        Provider::error_body(self, account, status, headers, body)
    }
    fn classify(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        Provider::classify(self, account, status, headers, body, now)
    }
    fn classify_error(
        &self,
        account: &AccountEntry,
        error: &(dyn std::error::Error + 'static),
    ) -> Outcome {
        Provider::classify_error(self, account, error)
    }
    fn classify_stream_error(
        &self,
        account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        Provider::classify_stream_error(self, account, error, now)
    }
    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> Box<dyn UsageTap> {
        Box::new(Provider::tap(self, account, headers))
    }
    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Provider::refresh(self, account, refresh_token)
    }
}

/// The provider of one account.
enum Chosen<'a> {
    Anthropic(&'a Anthropic),
    Compatible(&'a Compatible),
    Bedrock(&'a Bedrock),
    Vertex(&'a Vertex),
    External(&'a dyn DynProvider),
    /// Its backend names a provider nobody registered.
    Unknown(Arc<str>),
}

impl Providers {
    fn of(&self, account: &AccountEntry) -> Chosen<'_> {
        match &account.route().backend {
            Backend::Anthropic => Chosen::Anthropic(&self.inner.anthropic),
            Backend::Compatible { .. } => Chosen::Compatible(&self.inner.compatible),
            Backend::Bedrock { .. } => Chosen::Bedrock(&self.inner.bedrock),
            Backend::Vertex { .. } => Chosen::Vertex(&self.inner.vertex),
            Backend::External(name) => match self.external(name) {
                Some(provider) => Chosen::External(provider),
                None => Chosen::Unknown(Arc::clone(name)),
            },
        }
    }
}

impl Provider for Providers {
    type Tap = AnyTap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        match self.of(account) {
            Chosen::Anthropic(p) => Provider::prepare(p, account, req),
            Chosen::Compatible(p) => Provider::prepare(p, account, req),
            Chosen::Bedrock(p) => Provider::prepare(p, account, req),
            Chosen::Vertex(p) => Provider::prepare(p, account, req),
            Chosen::External(p) => p.prepare(account, req),
            Chosen::Unknown(name) => Err(InvalidUpstream(format!(
                "account `{}` names provider `{name}`, which is not registered",
                account.name()
            ))),
        }
    }

    fn needs_body(&self, account: &AccountEntry, status: StatusCode, headers: &HeaderMap) -> bool {
        match self.of(account) {
            Chosen::Anthropic(p) => Provider::needs_body(p, account, status, headers),
            Chosen::Compatible(p) => Provider::needs_body(p, account, status, headers),
            Chosen::Bedrock(p) => Provider::needs_body(p, account, status, headers),
            Chosen::Vertex(p) => Provider::needs_body(p, account, status, headers),
            Chosen::External(p) => p.needs_body(account, status, headers),
            Chosen::Unknown(_) => false,
        }
    }

    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes> {
        match self.of(account) {
            Chosen::Anthropic(_) | Chosen::Compatible(_) | Chosen::Unknown(_) => None,
            Chosen::Bedrock(p) => Provider::error_body(p, account, status, headers, body),
            Chosen::Vertex(p) => Provider::error_body(p, account, status, headers, body),
            Chosen::External(p) => p.error_body(account, status, headers, body),
        }
    }

    fn classify(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        match self.of(account) {
            Chosen::Anthropic(p) => Provider::classify(p, account, status, headers, body, now),
            Chosen::Compatible(p) => Provider::classify(p, account, status, headers, body, now),
            Chosen::Bedrock(p) => Provider::classify(p, account, status, headers, body, now),
            Chosen::Vertex(p) => Provider::classify(p, account, status, headers, body, now),
            Chosen::External(p) => p.classify(account, status, headers, body, now),
            Chosen::Unknown(_) => Classification::generic(status, headers, body, now),
        }
    }

    fn classify_error(
        &self,
        account: &AccountEntry,
        error: &(dyn std::error::Error + 'static),
    ) -> Outcome {
        match self.of(account) {
            Chosen::Anthropic(p) => Provider::classify_error(p, account, error),
            Chosen::Compatible(p) => Provider::classify_error(p, account, error),
            Chosen::Bedrock(p) => Provider::classify_error(p, account, error),
            Chosen::Vertex(p) => Provider::classify_error(p, account, error),
            Chosen::External(p) => p.classify_error(account, error),
            Chosen::Unknown(_) => Outcome::Unusable,
        }
    }

    fn classify_stream_error(
        &self,
        account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        match self.of(account) {
            Chosen::Anthropic(p) => Provider::classify_stream_error(p, account, error, now),
            Chosen::Compatible(p) => Provider::classify_stream_error(p, account, error, now),
            Chosen::Bedrock(p) => Provider::classify_stream_error(p, account, error, now),
            Chosen::Vertex(p) => Provider::classify_stream_error(p, account, error, now),
            Chosen::External(p) => p.classify_stream_error(account, error, now),
            Chosen::Unknown(_) => Classification::new(Outcome::ServerError),
        }
    }

    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> AnyTap {
        let Some(account) = account else {
            // An answer claudeflare made itself: Anthropic's envelope.
            return AnyTap::Anthropic(AnthropicTap::for_headers(headers));
        };
        match self.of(account) {
            Chosen::External(p) => AnyTap::Other(p.tap(Some(account), headers)),
            Chosen::Bedrock(p) => AnyTap::Cloud(Provider::tap(p, Some(account), headers)),
            Chosen::Vertex(p) => AnyTap::Cloud(Provider::tap(p, Some(account), headers)),
            _ => AnyTap::Anthropic(AnthropicTap::for_headers(headers)),
        }
    }

    fn refresh<'a>(
        &'a self,
        account: &'a AccountInfo,
        refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        // Anthropic's subscriptions and Vertex's service accounts have tokens to refresh, and
        // a provider of your own may say its accounts do.
        let external = match &account.backend {
            Backend::External(name) => self.external(name),
            Backend::Vertex { .. } => {
                return Provider::refresh(&self.inner.vertex, account, refresh_token);
            }
            _ => None,
        };
        match external {
            Some(provider) => provider.refresh(account, refresh_token),
            None => Provider::refresh(&self.inner.anthropic, account, refresh_token),
        }
    }
}

/// The usage reader of [`Providers`]: Anthropic's (which compatible backends share), or a
/// registered provider's.
#[derive(Debug)]
pub enum AnyTap {
    /// Anthropic's events and JSON.
    Anthropic(AnthropicTap),
    /// A cloud's (Anthropic's events and JSON, served in a region).
    Cloud(CloudTap),
    /// A registered provider's reader.
    Other(Box<dyn UsageTap>),
}

impl std::fmt::Debug for dyn UsageTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageTap")
    }
}

impl UsageTap for AnyTap {
    fn feed(&mut self, chunk: &[u8]) {
        match self {
            AnyTap::Anthropic(tap) => tap.feed(chunk),
            AnyTap::Cloud(tap) => tap.feed(chunk),
            AnyTap::Other(tap) => tap.feed(chunk),
        }
    }

    fn is_stream(&self) -> bool {
        match self {
            AnyTap::Anthropic(tap) => tap.is_stream(),
            AnyTap::Cloud(tap) => tap.is_stream(),
            AnyTap::Other(tap) => tap.is_stream(),
        }
    }

    fn at_boundary(&self) -> bool {
        match self {
            AnyTap::Anthropic(tap) => tap.at_boundary(),
            AnyTap::Cloud(tap) => tap.at_boundary(),
            AnyTap::Other(tap) => tap.at_boundary(),
        }
    }

    fn error_event(&self, kind: &str, message: &str) -> Bytes {
        match self {
            AnyTap::Anthropic(tap) => tap.error_event(kind, message),
            AnyTap::Cloud(tap) => tap.error_event(kind, message),
            AnyTap::Other(tap) => tap.error_event(kind, message),
        }
    }

    fn finish(&mut self) -> TapSummary {
        match self {
            AnyTap::Anthropic(tap) => tap.finish(),
            AnyTap::Cloud(tap) => tap.finish(),
            AnyTap::Other(tap) => tap.finish(),
        }
    }

    fn so_far(&self) -> TapSummary {
        match self {
            AnyTap::Anthropic(tap) => tap.so_far(),
            AnyTap::Cloud(tap) => tap.so_far(),
            AnyTap::Other(tap) => tap.so_far(),
        }
    }
}

//! # A provider of your own, in one pool with Anthropic's accounts
//!
//! A provider knows one upstream: where requests go, how its credential is sent, and what its
//! answers mean. This one is for an in-house gateway in front of Claude ("Acme"): it serves
//! the Messages API under `/anthropic`, takes its key in `x-acme-key`, answers `503` with
//! `x-acme-busy` when its quota is spent (a rate limit, not an outage), and `402` when the
//! team's credit is gone (out of rotation until a person acts).
//!
//! The pool mixes it with an Anthropic account: Anthropic first (priority 0), the gateway as
//! the overflow (priority 1), sent Sonnet whatever Claude model was asked for. No layer knows
//! about the gateway: it is registered by name with [`Providers::with`], and its accounts name
//! it in their [`Backend`].
//!
//! ```sh
//! CLAUDE_KEY=… ACME_KEY=… ACME_URL=https://gateway.acme.internal \
//!     cargo run -p claudeflare-examples --example custom_provider
//! ```

use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use claudeflare_tower::{
    Account, AccountEntry, AccountInfo, AccountPool, Anthropic, Backend, Balancer, BoxFuture,
    Classification, Credentials, InvalidUpstream, ModelMap, Outcome, Provider, Providers,
    RefreshError, StreamError, TokenPair, join_uri, retry_after,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::SecretString;

const ACME_KEY: HeaderName = HeaderName::from_static("x-acme-key");

/// Acme's gateway.
#[derive(Clone)]
struct Acme {
    base: Uri,
}

impl Provider for Acme {
    // It streams Anthropic's own events, so Anthropic's reader counts its tokens.
    type Tap = <Anthropic as Provider>::Tap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        // Its own URL: the client's path under `/anthropic`.
        let path = format!(
            "/anthropic{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let path: Uri = path
            .parse()
            .map_err(|_| InvalidUpstream(format!("{path} is no path")))?;
        *req.uri_mut() = join_uri(&self.base, &path)?;
        // Its own header: the client's credentials off, the account's key on.
        let headers = req.headers_mut();
        headers.remove(http::header::AUTHORIZATION);
        headers.remove("x-api-key");
        let key = account
            .credential(Credentials::plain)
            .ok_or_else(|| InvalidUpstream(format!("`{}` has no usable key", account.name())))?;
        headers.insert(ACME_KEY, key);
        headers.insert("x-acme-tenant", HeaderValue::from_static("claudeflare"));
        // The account's model map, as every provider applies it.
        account.route().model_map.apply(req);
        Ok(())
    }

    fn needs_body(
        &self,
        _account: &AccountEntry,
        _status: StatusCode,
        _headers: &HeaderMap,
    ) -> bool {
        false
    }

    fn classify(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        // Its own error rules first, then the ones any HTTP API follows.
        if status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key("x-acme-busy") {
            let until = retry_after(headers, now).unwrap_or(now + TimeDelta::minutes(1));
            return Classification::new(Outcome::RateLimited { until });
        }
        if status == StatusCode::PAYMENT_REQUIRED {
            return Classification::new(Outcome::Forbidden);
        }
        Classification::generic(status, headers, body, now)
    }

    fn classify_stream_error(
        &self,
        _account: &AccountEntry,
        error: &StreamError,
        _now: DateTime<Utc>,
    ) -> Classification {
        let outcome = match error.kind.as_str() {
            "overloaded_error" => Outcome::Overloaded,
            _ => Outcome::ServerError,
        };
        Classification::new(outcome)
    }

    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> Self::Tap {
        Anthropic::new().tap(account, headers)
    }

    fn refresh<'a>(
        &'a self,
        _account: &'a AccountInfo,
        _refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(async { Err(RefreshError::Rejected("Acme keys do not expire".into())) })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let base: Uri = std::env::var("ACME_URL")
        .unwrap_or_else(|_| "https://gateway.acme.internal".into())
        .parse()?;
    let providers = Providers::new().with("acme", Acme { base });
    let pool = AccountPool::new(vec![
        // Claude while it lasts…
        Account::api_key("claude", env("CLAUDE_KEY")),
        // …then the gateway, sent Sonnet for any Claude model.
        Account::api_key("acme", env("ACME_KEY"))
            .with_backend(Backend::External("acme".into()))
            .with_priority(1)
            .with_model_map("claude-*=claude-sonnet-5".parse::<ModelMap>()?),
    ]);
    let service = Balancer::with_provider(providers, pool).build();

    let app = axum::Router::new().route_service("/v1/{*path}", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

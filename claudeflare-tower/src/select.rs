//! Chooses candidate accounts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::account::{AccountEntry, AccountStatus};
use crate::body::ProxyBody;
use crate::context::RequestContext;
use crate::error::{error_response, final_for_client};
use crate::pool::AccountPool;
use crate::strategy::{Strategy, StrategyHandle};

/// Chooses candidate accounts.
///
/// The `Select` layer: asks the [`Strategy`] for the accounts a
/// request may use and puts them, in order, in the request's [`RequestContext`].
///
/// Accounts whose model map does not serve the request's model are left out. The rest go by
/// priority (lower first): the strategy chooses among the accounts of the best priority that
/// has an available one, and the accounts of the priorities after it follow, available ones in
/// pool order, for failover. Only the first group is the strategy's, so a sticky session stays
/// within its priority and returns there once a limit resets.
///
/// When no account is available it answers 503 itself, in Anthropic's envelope, with
/// `retry-after` set to the seconds until the earliest rate limit ends. When no account will
/// come back on its own (all paused, refused or needing re-authentication), the answer says
/// `x-should-retry: false`, and when the upstream refused every one of them it is Anthropic's
/// 403 `permission_error`: retrying cannot help, a person must act.
///
/// ```
/// use claudeflare_tower::{AccountPool, SelectLayer, Session, StrategyHandle};
/// let strategy: StrategyHandle = StrategyHandle::new(Box::new(Session::default()));
/// let layer = SelectLayer::new(AccountPool::default(), strategy);
/// ```
#[derive(Debug, Clone)]
pub struct SelectLayer {
    pool: AccountPool,
    strategy: StrategyHandle,
}

impl SelectLayer {
    /// Candidates from `pool`, ordered by `strategy`.
    pub fn new(pool: AccountPool, strategy: StrategyHandle) -> Self {
        Self { pool, strategy }
    }
}

impl<S> Layer<S> for SelectLayer {
    type Service = Select<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Select {
            inner,
            pool: self.pool.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

/// The service of [`SelectLayer`].
#[derive(Debug, Clone)]
pub struct Select<S> {
    inner: S,
    pool: AccountPool,
    strategy: StrategyHandle,
}

inner_accessors!(Select<S>);

impl<S, B, ResBody> Service<Request<B>> for Select<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SelectFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let now = Utc::now();
        let accounts = self.pool.current();
        let context = RequestContext::get_or_insert(&mut req);
        let strategy = self.strategy.current();
        let candidates = context
            .with_choice(|model, allowed| candidates(&**strategy, &accounts, model, allowed, now));
        if candidates.is_empty() {
            return SelectFuture {
                kind: Kind::NoAccount {
                    response: Some(self.no_account(accounts.len())),
                },
            };
        }
        context.set_candidates(candidates);
        SelectFuture {
            kind: Kind::Inner {
                future: self.inner.call(req),
            },
        }
    }
}

/// The accounts that may serve a request for `model`, limited to the `allowed` names when
/// given, in the order to try them. See the [module docs](self).
pub(crate) fn candidates(
    strategy: &dyn Strategy,
    accounts: &[Arc<AccountEntry>],
    model: Option<&str>,
    allowed: Option<&[String]>,
    now: DateTime<Utc>,
) -> Vec<Arc<AccountEntry>> {
    let first = accounts.first().map(|a| a.priority());
    let plain = allowed.is_none()
        && accounts.iter().all(|a| {
            let route = a.route();
            route.model_map.is_empty() && Some(route.priority) == first
        });
    if plain {
        // The usual pool: one priority, no maps, no key bound to part of it.
        return strategy.select(accounts, now);
    }
    let mut eligible: Vec<Arc<AccountEntry>> = accounts
        .iter()
        .filter(|a| allowed.is_none_or(|names| bound_to(a, names)))
        .filter(|a| a.route().model_map.serves(model))
        .cloned()
        .collect();
    // Stable: pool order within a priority.
    eligible.sort_by_key(|a| a.priority());
    let mut ordered = Vec::new();
    for group in eligible.chunk_by(|a, b| a.priority() == b.priority()) {
        if ordered.is_empty() {
            ordered = strategy.select(group, now);
        } else {
            ordered.extend(group.iter().filter(|a| a.is_available(now)).cloned());
        }
    }
    ordered
}

/// Whether `account` is one of `names`, by its name or its group's.
fn bound_to(account: &AccountEntry, names: &[String]) -> bool {
    let route = account.route();
    names
        .iter()
        .any(|n| n == account.name() || route.group.as_deref() == Some(n.as_str()))
}

impl<S> Select<S> {
    fn no_account<ResBody: From<Bytes>>(&self, total: usize) -> Response<ResBody> {
        let now = Utc::now();
        if total == 0 {
            return final_for_client(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no accounts are configured",
            ));
        }
        let accounts = self.pool.snapshot();
        if accounts
            .iter()
            .all(|account| account.status(now) == AccountStatus::Forbidden)
        {
            let message = format!(
                "every account ({total}) was refused by the upstream (403 permission_error: disabled or banned); see each account's status_reason, then resume it"
            );
            return final_for_client(error_response(StatusCode::FORBIDDEN, &message));
        }
        let reset = self.pool.earliest_reset(now);
        let message = match reset {
            Some(reset) => format!(
                "no account is available: all {total} are paused, rate-limited, refused by the upstream or need re-authentication; the first rate limit ends at {}",
                reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => {
                format!(
                    "no account is available: all {total} are paused, refused by the upstream or need re-authentication"
                )
            }
        };
        let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, &message);
        let Some(reset) = reset else {
            // Nothing comes back by itself.
            return final_for_client(response);
        };
        // Round up, so a client that waits this long finds the account free.
        let millis = u64::try_from((reset - now).num_milliseconds()).unwrap_or(0);
        let seconds = millis.div_ceil(1000).max(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

pin_project! {
    /// Future of [`Select`].
    pub struct SelectFuture<F, ResBody = ProxyBody> {
        #[pin]
        kind: Kind<F, ResBody>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, ResBody> {
        Inner { #[pin] future: F },
        NoAccount { response: Option<Response<ResBody>> },
    }
}

impl<F, E, ResBody> Future for SelectFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::NoAccount { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("select::SelectFuture polled after completion"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use crate::strategy::{LeastRequests, RoundRobin, Session, Weighted, WeightedRoundRobin};
    use chrono::TimeDelta;

    fn pool(accounts: &[(&str, u32)]) -> Vec<Arc<AccountEntry>> {
        accounts
            .iter()
            .map(|(name, priority)| {
                Arc::new(AccountEntry::new(
                    Account::api_key(*name, "k").with_priority(*priority),
                ))
            })
            .collect()
    }

    fn names(list: &[Arc<AccountEntry>]) -> Vec<&str> {
        list.iter().map(|a| a.name()).collect()
    }

    #[test]
    fn every_strategy_chooses_within_the_best_priority_that_has_an_available_account() {
        let strategies: Vec<Box<dyn Strategy>> = vec![
            Box::new(Session::default()),
            Box::new(LeastRequests),
            Box::new(RoundRobin::default()),
            Box::new(Weighted),
            Box::new(WeightedRoundRobin::default()),
        ];
        for strategy in &strategies {
            let now = Utc::now();
            // Pool order puts the overflow first: priority decides, not the order.
            let accounts = pool(&[
                ("overflow", 1),
                ("claude-a", 0),
                ("claude-b", 0),
                ("last", 2),
            ]);
            for _ in 0..6 {
                let chosen = candidates(&**strategy, &accounts, Some("claude-opus-5"), None, now);
                let order = names(&chosen);
                assert!(
                    order[0].starts_with("claude-"),
                    "{}: {order:?}",
                    strategy.name()
                );
                assert_eq!(&order[2..], ["overflow", "last"], "{}", strategy.name());
            }
            // The whole best priority limited: the next one serves.
            for account in &accounts[1..3] {
                account.mark_rate_limited(now + TimeDelta::minutes(5));
            }
            let chosen = candidates(&**strategy, &accounts, None, None, now);
            assert_eq!(names(&chosen), ["overflow", "last"], "{}", strategy.name());
            // Once a limit resets, back to the best priority.
            let later = now + TimeDelta::minutes(6);
            let chosen = candidates(&**strategy, &accounts, None, None, later);
            assert!(
                names(&chosen)[0].starts_with("claude-"),
                "{}",
                strategy.name()
            );
        }
    }

    #[test]
    fn the_session_returns_to_its_account_when_its_limit_resets() {
        let now = Utc::now();
        let strategy = Session::default();
        let accounts = pool(&[("claude", 0), ("overflow", 1)]);
        let first = candidates(&strategy, &accounts, None, None, now);
        assert_eq!(names(&first), ["claude", "overflow"]);
        accounts[0].mark_rate_limited(now + TimeDelta::minutes(1));
        let limited = candidates(&strategy, &accounts, None, None, now);
        assert_eq!(names(&limited), ["overflow"]);
        let reset = candidates(
            &strategy,
            &accounts,
            None,
            None,
            now + TimeDelta::minutes(2),
        );
        assert_eq!(names(&reset), ["claude", "overflow"]);
        assert!(
            accounts[0]
                .session_open(now + TimeDelta::minutes(2), TimeDelta::hours(5))
                .is_some(),
            "the same session, its prompt cache still warm"
        );
    }

    #[test]
    fn maps_and_bound_keys_leave_accounts_out() {
        let now = Utc::now();
        let mapped = Account::api_key("glm", "k")
            .with_model_map("claude-haiku-*=glm-4.5-air".parse().unwrap());
        let accounts = vec![
            Arc::new(AccountEntry::new(mapped)),
            Arc::new(AccountEntry::new(Account::api_key("claude", "k"))),
        ];
        let strategy = LeastRequests;
        let haiku = candidates(&strategy, &accounts, Some("claude-haiku-4-5"), None, now);
        assert_eq!(names(&haiku), ["glm", "claude"]);
        let opus = candidates(&strategy, &accounts, Some("claude-opus-5"), None, now);
        assert_eq!(names(&opus), ["claude"]);
        let bound = ["glm".to_owned()];
        let only = candidates(
            &strategy,
            &accounts,
            Some("claude-haiku-4-5"),
            Some(&bound),
            now,
        );
        assert_eq!(names(&only), ["glm"]);
        let mut route = (**accounts[1].route()).clone();
        route.group = Some("team".into());
        accounts[1].set_route(route);
        let team = ["team".to_owned()];
        let grouped = candidates(&strategy, &accounts, None, Some(&team), now);
        assert_eq!(names(&grouped), ["claude"], "bound by the group's name");
    }
}

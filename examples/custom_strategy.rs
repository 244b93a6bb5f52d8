//! # A strategy of your own
//!
//! Strategies decide which accounts a request may use and in which order: the first serves it,
//! the rest are the failover order. This one prefers the subscription whose 5-hour window is
//! least used (from the `anthropic-ratelimit-unified-5h-utilization` header the balancer keeps
//! for each account), which spreads load by what Anthropic actually counts.
//!
//! ```sh
//! CLAUDE_KEY_A=… CLAUDE_KEY_B=… cargo run -p claudeflare-examples --example custom_strategy
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use claudeflare_tower::{
    Account, AccountEntry, AccountPool, Balancer, Strategy, StrategyHandle, available_accounts,
};

/// Least-used 5-hour window first; accounts never seen yet count as unused.
struct LeastUtilized;

impl Strategy for LeastUtilized {
    fn name(&self) -> &str {
        "least-utilized"
    }

    fn select(&self, accounts: &[Arc<AccountEntry>], now: DateTime<Utc>) -> Vec<Arc<AccountEntry>> {
        // Only available accounts (not paused, limited or needing re-auth) may be returned.
        let mut available = available_accounts(accounts, now);
        available.sort_by(|a, b| {
            let used = |account: &AccountEntry| account.live().utilization_5h.unwrap_or(0.0);
            used(a).total_cmp(&used(b))
        });
        available
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let key = |name: &str| std::env::var(name).unwrap_or_default();
    let pool = AccountPool::new(vec![
        Account::api_key("a", key("CLAUDE_KEY_A")),
        Account::api_key("b", key("CLAUDE_KEY_B")),
    ]);

    // The handle can switch strategies later, e.g. back to a built-in one:
    // handle.set(Box::new(strategy::Session::default()));
    let handle = StrategyHandle::new(Box::new(LeastUtilized));
    let service = Balancer::new(pool).strategy(handle.clone()).build();
    println!("strategy in use: {}", handle.get().name());

    let app = axum::Router::new().route_service("/v1/{*path}", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

//! # Embed the balancer in your own axum app
//!
//! Mounts claudeflare's balancer on `/v1/*` beside a route of your own, over two console
//! accounts whose API keys come from the environment:
//!
//! ```sh
//! CLAUDE_KEY_A=sk-ant-api03-… CLAUDE_KEY_B=sk-ant-api03-… \
//!     cargo run -p claudeflare-examples --example embed_axum
//! ANTHROPIC_BASE_URL=http://127.0.0.1:3000 claude   # or any Anthropic SDK
//! ```
//!
//! `UPSTREAM_URL` points it somewhere else than Anthropic (a mock, a gateway).
//! Every request is retried and failed over across the two keys; responses stream through.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use claudeflare_tower::Recorder;
use claudeflare_tower::{Account, AccountPool, Balancer};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let key = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            eprintln!("set {name} to an Anthropic API key");
            std::process::exit(2);
        })
    };
    let pool = AccountPool::new(vec![
        Account::api_key("key-a", key("CLAUDE_KEY_A")),
        Account::api_key("key-b", key("CLAUDE_KEY_B")),
    ]);

    // One line per finished request; no secret is ever part of a record.
    let log: Arc<dyn Recorder> = Arc::new(|record: claudeflare_tower::RequestRecord| {
        println!(
            "{} {} -> {:?} via {:?} in {} ms ({} in / {} out tokens)",
            record.method,
            record.path,
            record.status,
            record.account,
            record.response_time_ms,
            record.usage.input_tokens,
            record.usage.output_tokens,
        );
    });

    let mut balancer = Balancer::new(pool).recorder(log);
    if let Ok(url) = std::env::var("UPSTREAM_URL") {
        match url.parse::<http::Uri>() {
            Ok(url) => balancer = balancer.upstream_url(url),
            Err(error) => {
                eprintln!("UPSTREAM_URL `{url}` is not a URL: {error}");
                std::process::exit(2);
            }
        }
    }

    let app = Router::new()
        .route(
            "/hello",
            get(|| async { "your own routes live here too\n" }),
        )
        .route_service("/v1/{*path}", balancer.build());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

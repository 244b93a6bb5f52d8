//! Runs the mock Anthropic upstream until interrupted, for trying claudeflare by hand:
//!
//! ```sh
//! cargo run -p claudeflare-testkit --bin mock-upstream
//! ```
//!
//! Prints its URL. Any `x-api-key` is accepted; `rate-limited` gets a 429 every other request.

use claudeflare_testkit::{MockUpstream, Reply};

#[tokio::main]
async fn main() {
    let mock = MockUpstream::start().await;
    mock.script(
        "rate-limited",
        std::iter::repeat_n(Reply::rate_limited(60), 1000),
    );
    println!("{}", mock.url());
    let _ = tokio::signal::ctrl_c().await;
}

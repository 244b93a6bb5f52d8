//! Test support shared by claudeflare's test suites: a mock Anthropic upstream that speaks real
//! SSE (in odd-sized chunks), answers with the errors and rate-limit headers Anthropic sends,
//! runs the OAuth token endpoint with refresh-token rotation, and logs everything it received;
//! and a small HTTP client.
//!
//! Everything listens on 127.0.0.1 with an ephemeral port and stops when dropped.

mod client;
pub mod cloud;
mod mock;
pub mod proxy;
mod served;
pub mod sse;

pub use client::{TestClient, TestResponse};
pub use cloud::{CloudReply, MockCloud};
pub use mock::{
    BANNED_MESSAGE, CACHE_CREATION_1H_TOKENS, CACHE_CREATION_5M_TOKENS, CACHE_CREATION_TOKENS,
    CACHE_READ_TOKENS, EXTRA_USAGE_MESSAGE, Grant, INPUT_TOKENS, LONG_CONTEXT_MESSAGE,
    MockUpstream, OUTPUT_TOKENS, Received, Reply, message_json, unified_headers,
};
pub use proxy::TestProxy;
pub use served::Served;

//! The request body's `model` and `stream`, read as `Intake` reads them: serde_json with a
//! borrowed struct that ignores every other field (beside a full `serde_json::Value`, the naive
//! way). It replaced a hand-written top-level skimmer, which this bench measured slower:
//! 215 µs against 174 µs for 500 KB, 3.4 against 3.1 µs for 5 KB (docs/benchmarks-history.md).
//!
//! ```sh
//! cargo bench -p claudeflare-tower --bench request_json
//! ```

#![allow(missing_docs, clippy::unwrap_used, dead_code)]

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;

/// A Messages API request of about `size` bytes: a system prompt, a conversation of turns with
/// escapes and non-ASCII text, tools, then `model` and `stream` at the end (where clients such
/// as Claude Code put them is not fixed; the end is the skimmer's worst case).
fn request(size: usize) -> Vec<u8> {
    let turn =
        "Refactor the parser so that \"quoted\" keys and \\ backslashes survive; Grüße, 世界 🌍. ";
    let mut messages = Vec::new();
    let mut length = 0;
    let mut role = "user";
    while length < size {
        let text = turn.repeat(40);
        length += text.len() + 60;
        messages
            .push(serde_json::json!({"role": role, "content": [{"type": "text", "text": text}]}));
        role = if role == "user" { "assistant" } else { "user" };
    }
    let body = serde_json::json!({
        "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": messages,
        "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
        "metadata": {"user_id": "user_0123"},
        "model": "claude-opus-4-8",
        "stream": true,
    });
    serde_json::to_vec(&body).unwrap()
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
}

fn value(body: &[u8]) -> (Option<String>, bool) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => (
            value["model"].as_str().map(str::to_owned),
            value["stream"].as_bool().unwrap_or(false),
        ),
        Err(_) => (None, false),
    }
}

fn serde(body: &[u8]) -> (Option<String>, bool) {
    match serde_json::from_slice::<Meta<'_>>(body) {
        Ok(meta) => (
            meta.model.map(Cow::into_owned),
            meta.stream.unwrap_or(false),
        ),
        Err(_) => (None, false),
    }
}

fn request_meta(c: &mut Criterion) {
    for (label, size) in [("5 KB", 5 * 1024), ("500 KB", 500 * 1024)] {
        let body = request(size);
        assert_eq!(value(&body), serde(&body), "both read the same");
        assert_eq!(serde(&body).0.as_deref(), Some("claude-opus-4-8"));
        let mut group = c.benchmark_group(format!("request meta/{label}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("serde borrowed", |b| {
            b.iter(|| black_box(serde(black_box(&body))))
        });
        group.bench_function("serde_json::Value", |b| {
            b.iter(|| black_box(value(black_box(&body))))
        });
        group.finish();
    }
}

criterion_group!(benches, request_meta);
criterion_main!(benches);

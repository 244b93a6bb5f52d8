//! The pieces on every request's path:
//!
//! ```sh
//! cargo bench -p claudeflare-tower --bench hot_paths
//! ```
//!
//! strategy selection over 100 accounts, rate-limit header parsing, the SSE usage tap (bytes per
//! second; the aim is over 1 GB/s), and the record path (Record layer, body tap, recorder).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use claudeflare_tower::{Account, AccountEntry, ProxyBody, RequestContext, Tier};
use claudeflare_tower::{Anthropic, Provider, UsageTap};
use claudeflare_tower::{
    LeastRequests, RoundRobin, Session, Strategy, Weighted, WeightedRoundRobin,
};
use claudeflare_tower::{NoopRecorder, RecordLayer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

fn accounts(n: usize) -> Vec<Arc<AccountEntry>> {
    (0..n)
        .map(|i| {
            let tier = [Tier::One, Tier::Five, Tier::Twenty][i % 3];
            Arc::new(AccountEntry::new(
                Account::api_key(format!("account-{i}"), "k").with_tier(tier),
            ))
        })
        .collect()
}

fn strategies(c: &mut Criterion) {
    let accounts = accounts(100);
    let now = Utc::now();
    let strategies: [Box<dyn Strategy>; 5] = [
        Box::new(Session::default()),
        Box::new(LeastRequests),
        Box::new(RoundRobin::default()),
        Box::new(Weighted),
        Box::new(WeightedRoundRobin::default()),
    ];
    for strategy in strategies {
        let name = strategy.name();
        c.bench_function(&format!("select/{name}/100 accounts"), |b| {
            b.iter(|| black_box(strategy.select(black_box(&accounts), now)))
        });
    }
}

fn headers(c: &mut Criterion) {
    let mut map = HeaderMap::new();
    for (k, v) in [
        ("anthropic-ratelimit-unified-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-reset", "1750000000"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.82"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.31"),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "five_hour",
        ),
        ("anthropic-ratelimit-requests-remaining", "990"),
        ("anthropic-ratelimit-requests-reset", "2025-06-15T15:10:00Z"),
        ("anthropic-ratelimit-tokens-remaining", "0"),
        ("anthropic-ratelimit-tokens-reset", "2025-06-15T15:08:00Z"),
        ("retry-after", "30"),
        ("content-type", "application/json"),
        ("request-id", "req_011CS"),
    ] {
        map.insert(k, HeaderValue::from_static(v));
    }
    let now = Utc::now();
    let anthropic = Anthropic::new();
    let account =
        claudeflare_tower::AccountEntry::new(claudeflare_tower::Account::api_key("a", "k"));
    let ok = http::StatusCode::OK;
    // The provider's whole reading of a response: the header scan and the classification.
    c.bench_function("classify/rate-limit headers", |b| {
        b.iter(|| black_box(anthropic.classify(&account, ok, black_box(&map), None, now)))
    });
}

/// A long answer: message_start, 5,000 text deltas, message_delta, message_stop.
fn long_stream() -> Vec<u8> {
    let mut out = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-20250514\",\"usage\":{\"input_tokens\":2500,\"cache_read_input_tokens\":40000,\"cache_creation_input_tokens\":12,\"output_tokens\":1}}}\n\n",
    );
    for i in 0..5000 {
        out.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Here is some streamed text, part {i}, with üñíçødé.\"}}}}\n\n"
        ));
    }
    out.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    out.into_bytes()
}

fn sse_tap(c: &mut Criterion) {
    let stream = long_stream();
    let mut group = c.benchmark_group("sse tap");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    let anthropic = Anthropic::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    for size in [1024, 16 * 1024] {
        let chunks: Vec<&[u8]> = stream.chunks(size).collect();
        group.bench_function(format!("{size}-byte chunks"), |b| {
            b.iter(|| {
                let mut tap = anthropic.tap(None, &headers);
                for chunk in &chunks {
                    tap.feed(black_box(chunk));
                }
                black_box(tap.finish())
            })
        });
    }
    group.finish();
}

fn record_path(c: &mut Criterion) {
    let account = Arc::new(AccountEntry::new(Account::api_key("a", "k")));
    let body = Bytes::from_static(br#"{"id":"msg","model":"claude-sonnet-4-20250514","content":[],"usage":{"input_tokens":12,"output_tokens":3}}"#);
    let inner = tower::service_fn(move |req: Request<()>| {
        // What Failover does for each attempt: name the account in the request's context.
        if let Some(context) = RequestContext::of(&req) {
            context.set_account(Arc::clone(&account));
        }
        let mut response = Response::new(ProxyBody::full(body.clone()));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let service = RecordLayer::new(Arc::new(NoopRecorder)).layer(inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    c.bench_function("record/request, response and usage", |b| {
        b.to_async(&runtime).iter(|| {
            let service = service.clone();
            async move {
                let response = service.oneshot(Request::new(())).await.unwrap();
                black_box(response.into_body().collect().await.unwrap().to_bytes())
            }
        })
    });
}

criterion_group!(benches, strategies, headers, sse_tap, record_path);
criterion_main!(benches);

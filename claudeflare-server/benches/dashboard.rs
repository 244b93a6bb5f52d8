//! How long the dashboard takes to render with 100,000 requests in the history.
//!
//! ```sh
//! cargo bench -p claudeflare-server --bench dashboard
//! ```
//!
//! Seeds a temporary SQLite database with 100,000 requests spread over the last 7 days (three
//! accounts, three models, some failures), then renders the page (every query plus the markup)
//! 50 times and prints the median and the slowest. The target is 50 ms.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use claudeflare_server::bench::Dashboard;
use claudeflare_tower::RequestRecord;

const REQUESTS: usize = 100_000;
const RUNS: usize = 50;

fn record(i: usize) -> RequestRecord {
    let accounts = ["work", "home", "spare"];
    let models = [
        "claude-sonnet-4-20250514",
        "claude-opus-4-1-20250805",
        "claude-3-5-haiku-20241022",
    ];
    let failed = i % 17 == 0;
    let timestamp = Utc::now() - TimeDelta::seconds((i as i64 * 7 * 86_400) / REQUESTS as i64);
    let mut record = RequestRecord::new(format!("bench-{i:08}"), timestamp, "POST", "/v1/messages");
    record.account = Some(accounts[i % 3].into());
    record.status = Some(if failed { 529 } else { 200 });
    record.success = !failed;
    record.error = failed.then(|| "upstream answered 529".into());
    record.response_time_ms = 200 + (i % 900) as u64;
    record.first_byte_ms = Some(150);
    record.upstream_ms = Some(190);
    record.overhead_us = Some(40);
    record.failover_attempts = u32::from(failed);
    record.model = Some(models[i % 3].into());
    record.stream = i % 2 == 0;
    record.usage.input_tokens = 1200;
    record.usage.output_tokens = 300;
    record.usage.cache_read_input_tokens = 20_000;
    record.usage.cache_creation_input_tokens = 100;
    record.usage.cache_creation_1h_input_tokens = 60;
    record
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let seeding = Instant::now();
        let dashboard = Dashboard::seeded(dir.path(), &["work", "home", "spare"], (0..REQUESTS).map(record))
            .await
            .expect("seeding");
        println!("seeded {REQUESTS} requests in {:.1} s", seeding.elapsed().as_secs_f64());

        let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
        let mut size = 0;
        for _ in 0..RUNS {
            let start = Instant::now();
            size = dashboard.render().await.expect("the page");
            times.push(start.elapsed());
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "dashboard with {REQUESTS} requests: median {:.2} ms, slowest {:.2} ms over {RUNS} renders ({} KiB of HTML); target 50 ms",
            ms(times[RUNS / 2]),
            ms(times[RUNS - 1]),
            size / 1024
        );
    });
}

//! The 1-connection latency rounds driven by wrk (Debian's `wrk` package), when it is installed.
//!
//! The benchmark's own client agrees with wrk on what each proxy adds within a few µs (both run
//! one event loop on one thread; docs/benchmarks-history.md, "The 1-connection figures against wrk"), but the
//! budget is stated against a C load generator that costs nothing per request beyond its
//! syscalls. With wrk installed, the instrument is wrk itself, so the two cannot disagree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// The request and the summary line (`bench/wrk-post.lua`).
const SCRIPT: &str = include_str!("../wrk-post.lua");

/// wrk, ready to run: the script written where it can read it.
pub struct Wrk {
    script: PathBuf,
}

/// One wrk run at 1 connection.
pub struct Round {
    /// Responses received.
    pub requests: u64,
    /// p50, p90, p99 in µs.
    pub percentiles: [f64; 3],
}

impl Wrk {
    /// wrk, if it is installed; its script goes to `folder`.
    pub async fn find(folder: &Path) -> Option<Self> {
        // `wrk --version` prints its version and exits with 1: that it ran is what counts.
        Command::new("wrk").arg("--version").output().await.ok()?;
        let script = folder.join("wrk-post.lua");
        std::fs::write(&script, SCRIPT).ok()?;
        Some(Self { script })
    }

    /// 1 thread, 1 connection, for `duration` (whole seconds, at least one), sending the
    /// benchmark's JSON request with `key`.
    pub async fn round(&self, address: SocketAddr, duration: Duration, key: &str) -> Round {
        let output = Command::new("wrk")
            .args(["-t1", "-c1", &format!("-d{}s", duration.as_secs().max(1))])
            .arg("-s")
            .arg(&self.script)
            .arg(format!("http://{address}/v1/messages"))
            .env("CLAUDEFLARE_BENCH_KEY", key)
            .output()
            .await
            .expect("run wrk");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<u64> = stdout
            .lines()
            .find_map(|line| line.strip_prefix("claudeflare-bench "))
            .unwrap_or_else(|| panic!("wrk printed no summary for {address}: {stdout}"))
            .split_whitespace()
            .map(|field| field.parse().expect("a number in wrk's summary"))
            .collect();
        let [requests, p50, p90, p99, errors] = fields[..] else {
            panic!("wrk's summary for {address} has {} fields", fields.len());
        };
        assert_eq!(errors, 0, "{address} answered wrk with {errors} errors");
        Round {
            requests,
            percentiles: [p50 as f64, p90 as f64, p99 as f64],
        }
    }
}

//! `--soak SECONDS`: claudeflare under a steady mixed load for a long time, its memory sampled
//! throughout. A leak shows as resident memory that keeps growing once the process is warm
//! (better-ccflare's ran to gigabytes); a healthy server levels off.
//!
//! The load is paced rather than flat out, so that a 10-minute run stores about a million
//! records, not ten: [`JSON_CONNECTIONS`] connections each sending [`JSON_RATE`] JSON requests a
//! second, and [`STREAM_CONNECTIONS`] connections each streaming answers back to back (20 events
//! 5 ms apart).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::load;

/// Connections sending JSON requests.
const JSON_CONNECTIONS: usize = 8;
/// JSON requests per second per connection.
const JSON_RATE: u32 = 250;
/// Connections streaming.
const STREAM_CONNECTIONS: usize = 4;
/// How often resident memory is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// What a soak run found.
pub struct Soak {
    /// Seconds since the start, and resident memory then (MiB).
    pub samples: Vec<(f64, f64)>,
    /// Seconds of warm-up left out of the growth figure.
    pub warm_up: f64,
    /// JSON requests and streams completed.
    pub json: u64,
    /// Streams completed.
    pub streams: u64,
}

impl Soak {
    /// Resident memory once warm (the first sample after the warm-up), MiB.
    pub fn start_mib(&self) -> f64 {
        self.warm().first().map_or(0.0, |(_, mib)| *mib)
    }

    /// The last sample, MiB.
    pub fn end_mib(&self) -> f64 {
        self.samples.last().map_or(0.0, |(_, mib)| *mib)
    }

    /// The largest sample, MiB.
    pub fn peak_mib(&self) -> f64 {
        self.samples.iter().map(|(_, mib)| *mib).fold(0.0, f64::max)
    }

    /// The least-squares slope of resident memory after the warm-up, in MiB per hour.
    pub fn growth_per_hour(&self) -> f64 {
        let warm = self.warm();
        let n = warm.len() as f64;
        if warm.len() < 2 {
            return 0.0;
        }
        let mean_t = warm.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_m = warm.iter().map(|(_, m)| m).sum::<f64>() / n;
        let covariance: f64 = warm.iter().map(|(t, m)| (t - mean_t) * (m - mean_m)).sum();
        let variance: f64 = warm.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
        if variance == 0.0 {
            return 0.0;
        }
        covariance / variance * 3600.0
    }

    fn warm(&self) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= self.warm_up)
            .collect()
    }

    /// As JSON, for the report file.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "seconds": self.samples.last().map_or(0.0, |(t, _)| *t),
            "warm_up_seconds": self.warm_up,
            "rss_mib": {"start": self.start_mib(), "peak": self.peak_mib(), "end": self.end_mib()},
            "growth_mib_per_hour": self.growth_per_hour(),
            "json_requests": self.json,
            "streams": self.streams,
            "samples": self.samples,
        })
    }
}

/// Load `address` for `duration`, reading the resident memory of process `pid` every
/// [`SAMPLE_EVERY`]. The first tenth of the run (at most a minute) is the warm-up.
pub async fn run(address: SocketAddr, pid: u32, duration: Duration) -> Soak {
    let started = Instant::now();
    let deadline = started + duration;
    let json = Arc::new(AtomicU64::new(0));
    let streams = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..JSON_CONNECTIONS {
        let json = Arc::clone(&json);
        workers.spawn(async move {
            let mut sender = load::connect(address).await;
            let mut pace = tokio::time::interval(Duration::from_secs(1) / JSON_RATE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                pace.tick().await;
                load::once(&mut sender, address).await;
                json.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    for _ in 0..STREAM_CONNECTIONS {
        let streams = Arc::clone(&streams);
        workers.spawn(async move {
            while Instant::now() < deadline {
                load::stream(address).await;
                streams.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let seconds = started.elapsed().as_secs_f64();
        samples.push((seconds, crate::memory(pid).1));
        if Instant::now() >= deadline {
            break;
        }
        let done = json.load(Ordering::Relaxed) + streams.load(Ordering::Relaxed);
        println!(
            "  {seconds:>5.0} s  {:>6.1} MiB resident  {done} requests",
            samples.last().map_or(0.0, |(_, mib)| *mib)
        );
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("a load worker");
    }
    Soak {
        samples,
        warm_up: (duration.as_secs_f64() / 10.0).min(60.0),
        json: json.load(Ordering::Relaxed),
        streams: streams.load(Ordering::Relaxed),
    }
}

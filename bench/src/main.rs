//! # claudeflare-bench
//!
//! ```sh
//! cargo run --release -p claudeflare-bench              # three full runs (about a minute each)
//! cargo run --release -p claudeflare-bench -- --runs 1   # one run
//! cargo run -p claudeflare-bench -- --smoke             # a 2-second check that it still works
//! cargo run --release -p claudeflare-bench -- --keys     # with a client key required and sent
//! cargo run --release -p claudeflare-bench -- --no-wrk   # latency by its own client, wrk or not
//! cargo run --release -p claudeflare-bench -- --postgres postgres://postgres@127.0.0.1/test
//!                                                         # claudeflare recording to PostgreSQL
//! cargo run --release -p claudeflare-bench -- --soak 600  # 10 minutes of load, memory sampled
//! ```
//!
//! Starts, each in its own process on loopback: a zero-latency mock upstream (JSON, and SSE of 20
//! events 5 ms apart), a bare hyper reverse proxy (the floor of one proxy hop), and
//! `claudeflare-server` with 3 API-key accounts recording every request to SQLite. Then measures
//! direct / bare proxy / claudeflare, alternating between them round by round so machine noise
//! hits all three alike:
//!
//! - latency p50, p90, p99 at 1 connection, and what each proxy adds over direct, measured by wrk
//!   when it is installed (`--no-wrk` for the benchmark's own client; see the `wrk` module);
//! - requests per second at 32 connections;
//! - for a stream: time to first byte, total time, and how far each event's arrival drifts from
//!   its arrival on a direct connection;
//! - CPU time per request at 32 connections of each proxy, from `/proc/PID/stat`;
//! - claudeflare's peak resident memory, and its dropped records.
//!
//! Prints a table and the ratios against the budget (CPU per request ≤ 1.25x the bare proxy's,
//! throughput ≥ 90%, added p50 ≤ 1.5x, peak RSS < 50 MiB) for each run, then the median of each
//! ratio over the runs, and writes them as JSON
//! (`target/claudeflare-bench.json`, or `--json PATH`). It asserts nothing: CI runs `--smoke`.

mod load;
mod soak;
mod targets;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::process::Command;

/// How much to measure.
struct Plan {
    latency_rounds: usize,
    /// Requests per latency round, for the benchmark's own client.
    latency_per_round: usize,
    /// How long a latency round lasts when wrk drives it.
    wrk_round: Duration,
    throughput_rounds: usize,
    throughput_round: Duration,
    connections: usize,
    streams: usize,
}

const FULL: Plan = Plan {
    latency_rounds: 10,
    latency_per_round: 2000,
    wrk_round: Duration::from_secs(1),
    throughput_rounds: 9,
    throughput_round: Duration::from_millis(1500),
    connections: 32,
    streams: 30,
};

const SMOKE: Plan = Plan {
    latency_rounds: 2,
    latency_per_round: 50,
    wrk_round: Duration::from_secs(1),
    throughput_rounds: 1,
    throughput_round: Duration::from_millis(300),
    connections: 32,
    streams: 2,
};

struct Target {
    name: &'static str,
    address: SocketAddr,
    latency: Histogram<u64>,
    /// With wrk: p50, p90 and p99 of each latency round.
    wrk_rounds: Vec<[f64; 3]>,
    /// Requests that may or may not have reached the target: wrk ends a round with one in
    /// flight, which the target may have answered (and claudeflare recorded) or not.
    unfinished: u64,
    rps: Vec<f64>,
    first_byte: Vec<Duration>,
    total: Vec<Duration>,
    events: Vec<Vec<Duration>>,
    requests: u64,
    /// Per throughput round: CPU time per request of the load generator, the mock and the proxy,
    /// in µs; and the machine's idle share.
    cpu: Vec<Cpu>,
}

/// CPU use during one throughput round, per request.
#[derive(Clone, Copy)]
struct Cpu {
    load_us: f64,
    mock_us: f64,
    proxy_us: f64,
    idle: f64,
}

impl Target {
    fn new(name: &'static str, address: SocketAddr) -> Self {
        Self {
            name,
            address,
            latency: Histogram::new(3).expect("a histogram"),
            wrk_rounds: Vec::new(),
            unfinished: 0,
            rps: Vec::new(),
            first_byte: Vec::new(),
            total: Vec::new(),
            events: Vec::new(),
            requests: 0,
            cpu: Vec::new(),
        }
    }

    /// Latency percentile `QUANTILES[i]`, in µs: with wrk, the median over its rounds.
    fn p(&self, i: usize) -> f64 {
        if self.wrk_rounds.is_empty() {
            self.latency.value_at_quantile(QUANTILES[i]) as f64
        } else {
            median(&self.wrk_rounds.iter().map(|r| r[i]).collect::<Vec<_>>())
        }
    }

    fn median_rps(&self) -> f64 {
        median(&self.rps)
    }

    /// The median CPU use per request over the throughput rounds, field by field.
    fn cpu_median(&self) -> Cpu {
        let of = |field: fn(&Cpu) -> f64| median(&self.cpu.iter().map(field).collect::<Vec<_>>());
        Cpu {
            load_us: of(|c| c.load_us),
            mock_us: of(|c| c.mock_us),
            proxy_us: of(|c| c.proxy_us),
            idle: of(|c| c.idle),
        }
    }

    /// When event `i` arrives after the first, the median over the streams.
    fn event_offsets(&self) -> Vec<f64> {
        let count = self.events.iter().map(Vec::len).min().unwrap_or(0);
        (0..count)
            .map(|i| {
                median(
                    &self
                        .events
                        .iter()
                        .map(|e| e[i].as_secs_f64() * 1000.0)
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }
}

/// The latency percentiles reported: p50, p90, p99.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn ms(durations: &[Duration]) -> f64 {
    median(
        &durations
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    )
}

/// Peak and current resident memory of a process, in MiB (Linux).
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time a process has used so far, in µs (Linux: utime + stime in `/proc/<pid>/stat`).
fn cpu_time(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the 12th
    // and 13th of them, in clock ticks (USER_HZ, 100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks * 10_000.0
}

/// The machine's busy and idle time so far, in clock ticks (`/proc/stat`).
fn machine_time() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (ticks.iter().sum::<f64>() - idle, idle)
}

/// CPU counters of the load generator (this process), the mock and the proxy under test, and
/// of the machine, to take a difference of.
struct CpuCounters {
    pids: [Option<u32>; 3],
    used: [f64; 3],
    machine: (f64, f64),
}

impl CpuCounters {
    fn read(pids: [Option<u32>; 3]) -> Self {
        Self {
            pids,
            used: pids.map(|pid| pid.map_or(0.0, cpu_time)),
            machine: machine_time(),
        }
    }

    /// Use since `self`, per request of `requests`.
    fn since(&self, requests: u64) -> Cpu {
        let now = Self::read(self.pids);
        let per = |i: usize| (now.used[i] - self.used[i]) / requests.max(1) as f64;
        let busy = now.machine.0 - self.machine.0;
        let idle = now.machine.1 - self.machine.1;
        Cpu {
            load_us: per(0),
            mock_us: per(1),
            proxy_us: per(2),
            idle: idle / (busy + idle).max(1.0),
        }
    }
}

async fn stats(address: SocketAddr) -> serde_json::Value {
    let client = claudeflare_testkit::TestClient::new(format!("http://{address}"));
    let admin = load::CLIENT_KEY.get().map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = admin
        .as_deref()
        .map(|bearer| ("authorization", bearer))
        .into_iter()
        .collect();
    client
        .send(
            http::Method::GET,
            "/api/stats",
            &headers,
            bytes::Bytes::new(),
        )
        .await
        .json()
}

/// The pause after each latency round, for the work it caused to finish (see its use).
const SETTLE: Duration = Duration::from_millis(150);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.get(1).map(String::as_str) {
        Some("mock") => runtime.block_on(targets::run_mock()),
        Some("bare") => {
            runtime.block_on(targets::run_bare(args.get(2).cloned().unwrap_or_default()))
        }
        _ => runtime.block_on(run(&args[1..])),
    }
}

async fn run(args: &[String]) {
    let smoke = args.iter().any(|a| a == "--smoke");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let plan = if smoke { &SMOKE } else { &FULL };
    let server = targets::server_binary(value("--server"));
    let me = std::env::current_exe().expect("the benchmark's own path");
    let folder = tempfile::tempdir().expect("a temporary folder");

    let mock = targets::start({
        let mut command = Command::new(&me);
        command.arg("mock");
        command
    })
    .await;
    let bare = targets::start({
        let mut command = Command::new(&me);
        command.args(["bare", &format!("http://{}", mock.address)]);
        command
    })
    .await;
    let keys = args.iter().any(|a| a == "--keys");
    // `--postgres ADMIN_URL`: a database of its own next to that one, dropped at the end.
    let postgres =
        value("--postgres").map(|url| targets::ScratchDatabase::create(&url.to_string_lossy()));
    let claudeflare = targets::start_claudeflare(
        &server,
        mock.address,
        folder.path(),
        keys,
        postgres.as_ref().map(|db| db.url.as_str()),
    )
    .await;
    if let Some(seconds) = value("--soak") {
        let seconds: u64 = seconds
            .to_string_lossy()
            .parse()
            .expect("--soak takes a number of seconds");
        let pid = claudeflare.child.id().expect("claudeflare's pid");
        println!(
            "soaking {} (claudeflare, {}) for {seconds} s…",
            claudeflare.address,
            if postgres.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            }
        );
        let soaked = soak::run(claudeflare.address, pid, Duration::from_secs(seconds)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stats = stats(claudeflare.address).await;
        report_soak(&soaked, &stats, value("--json"));
        return;
    }
    println!(
        "measuring {} (direct), {} (bare proxy), {} (claudeflare)…",
        mock.address, bare.address, claudeflare.address
    );
    let wrk = if smoke || args.iter().any(|a| a == "--no-wrk") {
        None
    } else {
        wrk::Wrk::find(folder.path()).await
    };
    println!(
        "latency at 1 connection measured by {}",
        if wrk.is_some() {
            "wrk"
        } else {
            "the benchmark's own client"
        }
    );
    // `--runs N` (3 by default, 1 for the smoke run): the whole measurement N times over the
    // same processes, each run's table, then the median of each ratio over the runs.
    let runs: usize = value("--runs")
        .map(|n| {
            n.to_string_lossy()
                .parse()
                .expect("--runs takes a number of runs")
        })
        .unwrap_or(if smoke { 1 } else { 3 })
        .max(1);
    let pids = Pids {
        mock: mock.child.id(),
        bare: bare.child.id(),
        claudeflare: claudeflare.child.id(),
    };
    let addresses = [mock.address, bare.address, claudeflare.address];
    let mut reports = Vec::new();
    let (mut sent, mut unfinished) = (0, 0);
    for run in 1..=runs {
        if runs > 1 {
            println!("\n== run {run} of {runs}");
        }
        let mut all = measure(plan, addresses, pids, wrk.as_ref()).await;
        // claudeflare's counters cover every run so far.
        all[2].requests += sent;
        all[2].unfinished += unfinished;
        (sent, unfinished) = (all[2].requests, all[2].unfinished);
        // Let the record writer catch up before reading the stats.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stats = stats(claudeflare.address).await;
        let (peak_mib, rss_mib) = claudeflare.child.id().map(memory).unwrap_or_default();
        reports.push(report(&all, &stats, peak_mib, rss_mib, smoke));
    }
    let json = if let [only] = &reports[..] {
        only.json.clone()
    } else {
        summarize(&reports)
    };
    write_json(&json, value("--json"));
}

/// The processes measured, for their CPU counters.
#[derive(Clone, Copy)]
struct Pids {
    mock: Option<u32>,
    bare: Option<u32>,
    claudeflare: Option<u32>,
}

/// One run: direct, bare proxy and claudeflare, alternating round by round.
async fn measure(
    plan: &Plan,
    [mock, bare, claudeflare]: [SocketAddr; 3],
    pids: Pids,
    wrk: Option<&wrk::Wrk>,
) -> [Target; 3] {
    let mut all = [
        Target::new("direct", mock),
        Target::new("bare proxy", bare),
        Target::new("claudeflare", claudeflare),
    ];
    for target in &mut all {
        let mut warm = Histogram::new(3).expect("a histogram");
        load::latency_on_own_thread(target.address, 200, &mut warm).await;
        target.requests += 200;
    }
    let key = load::CLIENT_KEY.get().map_or("client-key", String::as_str);
    for _ in 0..plan.latency_rounds {
        for target in &mut all {
            if let Some(wrk) = wrk {
                let round = wrk.round(target.address, plan.wrk_round, key).await;
                target.wrk_rounds.push(round.percentiles);
                target.requests += round.requests;
                target.unfinished += 1;
            } else {
                load::latency_on_own_thread(
                    target.address,
                    plan.latency_per_round,
                    &mut target.latency,
                )
                .await;
                target.requests += plan.latency_per_round as u64;
            }
            // Work a round leaves behind (claudeflare writes its last records 20 ms after they
            // end) must not land in the next target's round: it would slow that target down and
            // flatter this one. wrk, which runs one target at a time, sees it where it belongs.
            tokio::time::sleep(SETTLE).await;
        }
    }
    let proxies = [None, pids.bare, pids.claudeflare];
    for _ in 0..plan.throughput_rounds {
        for (target, proxy) in all.iter_mut().zip(proxies) {
            let counters = CpuCounters::read([Some(std::process::id()), pids.mock, proxy]);
            let done =
                load::throughput(target.address, plan.connections, plan.throughput_round).await;
            target.cpu.push(counters.since(done));
            target.requests += done;
            target
                .rps
                .push(done as f64 / plan.throughput_round.as_secs_f64());
        }
    }
    for _ in 0..plan.streams {
        for target in &mut all {
            let streamed = load::stream(target.address).await;
            target.requests += 1;
            target.first_byte.push(streamed.first_byte);
            target.total.push(streamed.total);
            target.events.push(streamed.events);
        }
    }
    all
}

/// The budget, as ratios of claudeflare to the bare proxy.
const BUDGET_CPU: f64 = 1.25;
const BUDGET_THROUGHPUT: f64 = 0.9;
const BUDGET_ADDED_P50: f64 = 1.5;
const BUDGET_PEAK_MIB: f64 = 50.0;

/// What one run found, against the budget.
struct Report {
    cpu_ratio: f64,
    throughput_ratio: f64,
    latency_ratio: f64,
    peak_mib: f64,
    json: serde_json::Value,
}

/// The median of each ratio over the runs, printed and as JSON (with every run's own).
fn summarize(reports: &[Report]) -> serde_json::Value {
    let of = |field: fn(&Report) -> f64| median(&reports.iter().map(field).collect::<Vec<_>>());
    let (cpu, throughput, latency) = (
        of(|r| r.cpu_ratio),
        of(|r| r.throughput_ratio),
        of(|r| r.latency_ratio),
    );
    let peak = reports.iter().map(|r| r.peak_mib).fold(0.0, f64::max);
    let each = |field: fn(&Report) -> f64, percent: bool| {
        reports
            .iter()
            .map(|r| {
                if percent {
                    format!("{:.0}%", field(r) * 100.0)
                } else {
                    format!("{:.2}x", field(r))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\n== median of {} runs (each run's in brackets)",
        reports.len()
    );
    let lines = [
        (
            "CPU per request vs bare",
            format!("{cpu:.2}x [{}]", each(|r| r.cpu_ratio, false)),
            format!("≤ {BUDGET_CPU}x"),
            cpu <= BUDGET_CPU,
        ),
        (
            "throughput vs bare",
            format!(
                "{:.0}% [{}]",
                throughput * 100.0,
                each(|r| r.throughput_ratio, true)
            ),
            format!("≥ {:.0}%", BUDGET_THROUGHPUT * 100.0),
            throughput >= BUDGET_THROUGHPUT,
        ),
        (
            "added p50 vs bare",
            format!("{latency:.2}x [{}]", each(|r| r.latency_ratio, false)),
            format!("≤ {BUDGET_ADDED_P50}x"),
            latency <= BUDGET_ADDED_P50,
        ),
        (
            "peak RSS (all runs)",
            format!("{peak:.1} MiB"),
            format!("< {BUDGET_PEAK_MIB} MiB"),
            peak < BUDGET_PEAK_MIB,
        ),
    ];
    for (what, value, target, ok) in &lines {
        println!(
            "{what:<26} {value:>34}   target {target:<9} {}",
            if *ok { "ok" } else { "MISSED" }
        );
    }
    json!({
        "runs": reports.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
        "median": {
            "cpu_per_request_vs_bare": cpu,
            "throughput_vs_bare": throughput,
            "added_p50_vs_bare": latency,
            "peak_rss_mib": peak,
        },
    })
}

fn report_soak(soaked: &soak::Soak, stats: &serde_json::Value, json_path: Option<PathBuf>) {
    let dropped = stats["dropped_records"].as_u64().unwrap_or(u64::MAX);
    let recorded = stats["total_requests"].as_u64().unwrap_or(0);
    let sent = soaked.json + soaked.streams;
    println!();
    println!(
        "resident memory: {:.1} MiB once warm (after {:.0} s), peak {:.1} MiB, end {:.1} MiB",
        soaked.start_mib(),
        soaked.warm_up,
        soaked.peak_mib(),
        soaked.end_mib()
    );
    println!(
        "growth once warm: {:+.1} MiB per hour (least squares over {} samples)",
        soaked.growth_per_hour(),
        soaked.samples.len()
    );
    println!(
        "requests: {} JSON, {} streams; recorded {recorded} of {sent}, dropped {dropped}",
        soaked.json, soaked.streams
    );
    let json = json!({
        "soak": soaked.json(),
        "claudeflare": {"recorded": recorded, "sent": sent, "dropped_records": dropped},
    });
    write_json(&json, json_path);
}

fn report(
    all: &[Target; 3],
    stats: &serde_json::Value,
    peak_mib: f64,
    rss_mib: f64,
    smoke: bool,
) -> Report {
    let [direct, bare, claudeflare] = all;
    let wrk_used = !claudeflare.wrk_rounds.is_empty();
    let added = |t: &Target| t.p(0) - direct.p(0);
    let direct_events = direct.event_offsets();
    let drift = |t: &Target| {
        t.event_offsets()
            .iter()
            .zip(&direct_events)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    println!();
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>10} {:>9}",
        "target",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "added µs",
        "rps@32",
        "ttfb ms",
        "stream ms",
        "drift ms"
    );
    for t in all {
        println!(
            "{:<12} {:>8.0} {:>8.0} {:>8.0} {:>10.0} {:>9.0} {:>9.2} {:>10.2} {:>9.2}",
            t.name,
            t.p(0),
            t.p(1),
            t.p(2),
            added(t),
            t.median_rps(),
            ms(&t.first_byte),
            ms(&t.total),
            drift(t)
        );
    }
    println!();
    println!(
        "{:<12} {:>14} {:>13} {:>12} {:>11} {:>13}",
        "CPU µs/req", "load gen", "mock", "proxy", "all", "machine idle"
    );
    for t in all {
        let cpu = t.cpu_median();
        println!(
            "{:<12} {:>14.1} {:>13.1} {:>12.1} {:>11.1} {:>12.0}%",
            t.name,
            cpu.load_us,
            cpu.mock_us,
            cpu.proxy_us,
            cpu.load_us + cpu.mock_us + cpu.proxy_us,
            cpu.idle * 100.0
        );
    }
    let dropped = stats["dropped_records"].as_u64().unwrap_or(u64::MAX);
    let recorded = stats["total_requests"].as_u64().unwrap_or(0);
    let latency_ratio = added(claudeflare) / added(bare).max(1.0);
    // Round by round (each claudeflare round right after a bare-proxy round, so the same noise
    // hits both), then the median of those ratios.
    let throughput_ratio = median(
        &claudeflare
            .rps
            .iter()
            .zip(&bare.rps)
            .map(|(c, b)| c / b.max(1.0))
            .collect::<Vec<_>>(),
    );
    let cpu_ratio = claudeflare.cpu_median().proxy_us / bare.cpu_median().proxy_us.max(0.001);
    let checks = [
        (
            "CPU per request vs bare",
            format!("{cpu_ratio:.2}x"),
            "≤ 1.25x",
            cpu_ratio <= BUDGET_CPU,
        ),
        (
            "added p50 vs bare proxy",
            format!("{latency_ratio:.2}x"),
            "≤ 1.5x",
            latency_ratio <= BUDGET_ADDED_P50,
        ),
        (
            "throughput vs bare proxy",
            format!("{:.0}%", throughput_ratio * 100.0),
            "≥ 90%",
            throughput_ratio >= BUDGET_THROUGHPUT,
        ),
        (
            "peak RSS",
            format!("{peak_mib:.1} MiB"),
            "< 50 MiB",
            peak_mib < BUDGET_PEAK_MIB,
        ),
        (
            "dropped records",
            if claudeflare.unfinished == 0 {
                format!(
                    "{dropped} ({recorded} of {} recorded)",
                    claudeflare.requests
                )
            } else {
                format!(
                    "{dropped} ({recorded} of {}–{} recorded)",
                    claudeflare.requests,
                    claudeflare.requests + claudeflare.unfinished
                )
            },
            "0",
            dropped == 0
                && (claudeflare.requests..=claudeflare.requests + claudeflare.unfinished)
                    .contains(&recorded),
        ),
        (
            "stream event drift",
            format!("{:.2} ms", drift(claudeflare)),
            "≤ 1 ms",
            drift(claudeflare) <= 1.0,
        ),
    ];
    println!();
    for (what, value, target, ok) in &checks {
        println!(
            "{:<26} {:>24}   target {:<9} {}",
            what,
            value,
            target,
            if *ok { "ok" } else { "MISSED" }
        );
    }
    if smoke {
        println!("\n(smoke run: too short for the figures to mean anything)");
    }
    let json = json!({
        "smoke": smoke,
        "targets": all.iter().map(|t| json!({
            "name": t.name,
            "latency_us": {"p50": t.p(0), "p90": t.p(1), "p99": t.p(2), "added_p50": added(t)},
            "rps_32": t.median_rps(),
            "cpu_per_request_us": {"load_generator": t.cpu_median().load_us, "mock": t.cpu_median().mock_us, "proxy": t.cpu_median().proxy_us},
            "machine_idle": t.cpu_median().idle,
            "stream": {"first_byte_ms": ms(&t.first_byte), "total_ms": ms(&t.total), "drift_ms": drift(t)},
        })).collect::<Vec<_>>(),
        "latency_instrument": if wrk_used { "wrk" } else { "claudeflare-bench" },
        "claudeflare": {"peak_rss_mib": peak_mib, "rss_mib": rss_mib, "dropped_records": dropped, "recorded": recorded, "sent": claudeflare.requests},
        "ratios": {"cpu_per_request_vs_bare": cpu_ratio, "added_p50_vs_bare": latency_ratio, "throughput_vs_bare": throughput_ratio},
        "checks": checks.iter().map(|(what, value, target, ok)| json!({"check": what, "value": value, "target": target, "ok": ok})).collect::<Vec<_>>(),
    });
    Report {
        cpu_ratio,
        throughput_ratio,
        latency_ratio,
        peak_mib,
        json,
    }
}

/// Write the report to `path` (default: [`default_json_path`]).
fn write_json(json: &serde_json::Value, path: Option<PathBuf>) {
    let path = path.unwrap_or_else(default_json_path);
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(json).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nwrote {}", path.display()),
        Err(error) => eprintln!("could not write {}: {error}", path.display()),
    }
}

/// `claudeflare-bench.json` in the cargo target folder this benchmark was built in.
fn default_json_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("claudeflare-bench.json")))
        .unwrap_or_else(|| PathBuf::from("claudeflare-bench.json"))
}

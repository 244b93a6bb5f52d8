//! `GET /metrics`: Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Serving account ("none" when no account served it).
    pub account: String,
    /// Status sent to the client.
    pub status: StatusLabel,
}

/// A response status as a label: its number, or "none" when the client left before it. Written
/// out only when the metrics are read, not formatted for every request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusLabel(pub Option<u16>);

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        match self.0 {
            Some(status) => encoder.write_str(itoa::Buffer::new().format(status)),
            None => encoder.write_str("none"),
        }
    }
}

/// An account.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// Account name.
    pub account: String,
}

/// What a request cost is counted by.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    /// Serving account.
    pub account: String,
    /// Model.
    pub model: String,
}

/// A refresh result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// "ok", "rejected" or "failed".
    pub result: String,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by account and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Upstream time to response headers.
    pub upstream_latency: Histogram,
    /// claudeflare's own time per request (total to headers minus upstream and backoff).
    pub overhead: Histogram,
    /// Moves to another account.
    pub failovers: Counter,
    /// Accounts rate-limited.
    pub rate_limits: Family<AccountLabel, Counter>,
    /// Token refreshes by result.
    pub token_refreshes: Family<ResultLabel, Counter>,
    /// Request records that could not be stored.
    pub dropped_records: Counter,
    /// Estimated cost in USD, by account and model.
    pub cost_usd: Family<CostLabels, Counter<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("claudeflare");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by serving account and status",
            requests.clone(),
        );
        // 1 ms to ~65 s.
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "upstream_latency_seconds",
            "Upstream time to response headers",
            upstream_latency.clone(),
        );
        // 10 µs to ~160 ms.
        let overhead = Histogram::new(exponential_buckets(0.000_01, 2.0, 15));
        registry.register(
            "overhead_seconds",
            "claudeflare's own time per request, upstream and backoff excluded",
            overhead.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Requests moved to another account",
            failovers.clone(),
        );
        let rate_limits = Family::<AccountLabel, Counter>::default();
        registry.register(
            "rate_limit_events",
            "Accounts marked rate-limited",
            rate_limits.clone(),
        );
        let token_refreshes = Family::<ResultLabel, Counter>::default();
        for result in ["ok", "rejected", "failed"] {
            // Present from the start, so a dashboard shows 0 rather than no data.
            let _ = token_refreshes.get_or_create(&ResultLabel {
                result: result.to_owned(),
            });
        }
        registry.register(
            "token_refreshes",
            "OAuth token refreshes by result",
            token_refreshes.clone(),
        );
        let dropped_records = Counter::default();
        registry.register(
            "dropped_records",
            "Request records that could not be stored",
            dropped_records.clone(),
        );
        let cost_usd = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "Estimated cost of the requests in USD (from the price table), by account and model",
            cost_usd.clone(),
        );
        Self {
            registry,
            cost_usd,
            requests,
            upstream_latency,
            overhead,
            failovers,
            rate_limits,
            token_refreshes,
            dropped_records,
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "could not encode metrics");
        }
        out
    }

    /// Count a refresh result.
    pub fn refresh(&self, result: &str) {
        self.token_refreshes
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_statuses_are_numbers_or_none() {
        let metrics = Metrics::new();
        for status in [Some(200), Some(200), Some(429), None] {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    account: "work".to_owned(),
                    status: StatusLabel(status),
                })
                .inc();
        }
        let text = metrics.render();
        for line in [
            r#"claudeflare_requests_total{account="work",status="200"} 2"#,
            r#"claudeflare_requests_total{account="work",status="429"} 1"#,
            r#"claudeflare_requests_total{account="work",status="none"} 1"#,
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn cost_is_counted_in_dollars() {
        let metrics = Metrics::new();
        let labels = CostLabels {
            account: "work".to_owned(),
            model: "claude-opus-4-8".to_owned(),
        };
        metrics.cost_usd.get_or_create(&labels).inc_by(0.00173375);
        metrics.cost_usd.get_or_create(&labels).inc_by(0.00173375);
        let text = metrics.render();
        let line =
            r#"claudeflare_cost_usd_total{account="work",model="claude-opus-4-8"} 0.0034675"#;
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}

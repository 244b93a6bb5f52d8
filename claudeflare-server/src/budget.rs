//! A client key's monthly budget as Claude Code's gateway protocol reports it: the usage-limit
//! headers on each successful answer (Claude Code shows "You've used NN% of your usage credits"
//! past 75% and 95%), the `429 billing_error` once it is spent, and `GET /api/oauth/usage`.

use chrono::{DateTime, Months, Utc};
use http::StatusCode;
use serde_json::{Value, json};

use crate::access::Refusal;
use crate::db::keys;

/// Where a key stands against its budget this month.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Spent this calendar month (UTC), in USD.
    pub spent: f64,
    /// The budget, in USD.
    pub budget: f64,
    /// When the month ends and the budget starts again.
    pub resets_at: DateTime<Utc>,
}

/// The thresholds past which Claude Code tells the user.
const THRESHOLDS: [f64; 2] = [0.95, 0.75];

impl Standing {
    /// `spent` of `budget` at `now`.
    pub fn new(spent: f64, budget: f64, now: DateTime<Utc>) -> Self {
        Self {
            spent,
            budget,
            resets_at: keys::month_start(now + Months::new(1)),
        }
    }

    /// Whether the budget is spent.
    pub fn spent_out(&self) -> bool {
        self.spent >= self.budget
    }

    /// The fraction used: 1 (or more) once spent.
    fn fraction(&self) -> f64 {
        if self.budget <= 0.0 {
            1.0
        } else {
            self.spent / self.budget
        }
    }

    /// The headers of a successful answer: the protocol's `overage` claim, the fraction used
    /// (two decimals, kept below 1 while requests are allowed), and the threshold passed.
    pub fn allowed_headers(&self) -> Vec<(&'static str, String)> {
        let fraction = self.fraction();
        let passed = THRESHOLDS.into_iter().find(|t| fraction >= *t);
        let status = if passed.is_some() {
            "allowed_warning"
        } else {
            "allowed"
        };
        let reset = self.resets_at.timestamp().to_string();
        let mut headers = vec![
            ("anthropic-ratelimit-unified-status", status.to_owned()),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "overage".to_owned(),
            ),
            (
                "anthropic-ratelimit-unified-overage-status",
                status.to_owned(),
            ),
            (
                "anthropic-ratelimit-unified-overage-utilization",
                format!("{:.2}", fraction.min(0.99)),
            ),
            ("anthropic-ratelimit-unified-reset", reset.clone()),
            ("anthropic-ratelimit-unified-overage-reset", reset),
        ];
        if let Some(threshold) = passed {
            headers.push((
                "anthropic-ratelimit-unified-overage-surpassed-threshold",
                threshold.to_string(),
            ));
        }
        headers
    }

    /// The refusal once the budget is spent: 429 `billing_error`, not to be retried, in the
    /// protocol's rejected shape, saying when it resets and what to do.
    pub fn refusal(&self, key: &str, now: DateTime<Utc>) -> Refusal {
        let seconds = u64::try_from((self.resets_at - now).num_seconds())
            .unwrap_or(0)
            .max(1);
        let reset = self.resets_at.timestamp().to_string();
        Refusal {
            kind: "billing_error",
            retry: false,
            retry_after: Some(seconds),
            headers: vec![
                ("anthropic-ratelimit-unified-status", "rejected".to_owned()),
                ("anthropic-ratelimit-unified-reset", reset.clone()),
                ("anthropic-ratelimit-unified-overage-reset", reset),
                (
                    "anthropic-ratelimit-unified-overage-utilization",
                    "1".to_owned(),
                ),
                (
                    "anthropic-ratelimit-unified-overage-surpassed-threshold",
                    "1".to_owned(),
                ),
                (
                    "anthropic-ratelimit-unified-overage-period",
                    "monthly".to_owned(),
                ),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "org_spend_cap_reached".to_owned(),
                ),
            ],
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the key `{key}` spent its monthly budget of ${:.2} (${:.2} this month, UTC) · resets {} · ask the admin of this gateway for a higher budget or another key",
                    self.budget,
                    self.spent,
                    self.resets_at.format("%b %-d")
                ),
            )
        }
    }
}

/// Put a key's usage-limit headers on an answer in place of the upstream's
/// `anthropic-ratelimit-*` ones, which describe the account's quota, not the key's.
pub fn replace_limit_headers(headers: &mut http::HeaderMap, limits: Vec<(&'static str, String)>) {
    let upstream: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("anthropic-ratelimit-"))
        .cloned()
        .collect();
    for name in upstream {
        headers.remove(name);
    }
    for (name, value) in limits {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// `GET /api/oauth/usage` for a key: its spend in the protocol's shape (cents, whole percents).
/// `budget` is `None` for a key without one; `day` and `week` are its spend since midnight UTC
/// and since Monday.
pub fn usage_json(standing: Option<Standing>, spent: [f64; 3]) -> Value {
    let cents = |usd: f64| (usd * 100.0).round();
    let [month, day, week] = spent;
    let Some(standing) = standing else {
        return json!({
            "extra_usage": {
                "is_enabled": true,
                "monthly_limit": null,
                "used_credits": cents(month),
                "utilization": null,
                "currency": "USD",
                "daily": {"limit": null, "used_credits": cents(day), "utilization": null},
                "weekly": {"limit": null, "used_credits": cents(week), "utilization": null},
            },
            "limits": [],
        });
    };
    let percent = (standing.fraction() * 100.0).floor();
    let severity = if standing.spent_out() {
        "critical"
    } else if percent >= 75.0 {
        "warning"
    } else {
        "normal"
    };
    json!({
        "extra_usage": {
            "is_enabled": true,
            "monthly_limit": cents(standing.budget),
            "used_credits": cents(standing.spent),
            "utilization": percent,
            "currency": "USD",
        },
        "limits": [{
            "kind": "spend",
            "group": "monthly",
            "percent": percent,
            "resets_at": standing.resets_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "severity": severity,
            "is_active": true,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    fn header<'a>(headers: &'a [(&str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_headers_name_the_threshold_passed_and_stay_below_one() {
        let reset = "1798761600"; // 2027-01-01T00:00:00Z
        let low = Standing::new(1.0, 10.0, at()).allowed_headers();
        assert_eq!(
            header(&low, "anthropic-ratelimit-unified-status"),
            Some("allowed")
        );
        assert_eq!(
            header(&low, "anthropic-ratelimit-unified-overage-utilization"),
            Some("0.10")
        );
        assert_eq!(
            header(
                &low,
                "anthropic-ratelimit-unified-overage-surpassed-threshold"
            ),
            None
        );
        assert_eq!(
            header(&low, "anthropic-ratelimit-unified-overage-reset"),
            Some(reset)
        );
        assert_eq!(
            header(&low, "anthropic-ratelimit-unified-representative-claim"),
            Some("overage")
        );
        let warned = Standing::new(8.0, 10.0, at()).allowed_headers();
        assert_eq!(
            header(&warned, "anthropic-ratelimit-unified-status"),
            Some("allowed_warning")
        );
        assert_eq!(
            header(
                &warned,
                "anthropic-ratelimit-unified-overage-surpassed-threshold"
            ),
            Some("0.75")
        );
        let nearly = Standing::new(9.999, 10.0, at()).allowed_headers();
        assert_eq!(
            header(
                &nearly,
                "anthropic-ratelimit-unified-overage-surpassed-threshold"
            ),
            Some("0.95")
        );
        assert_eq!(
            header(&nearly, "anthropic-ratelimit-unified-overage-utilization"),
            Some("0.99")
        );
    }

    #[test]
    fn a_spent_budget_is_a_final_billing_error_that_says_when_and_what_to_do() {
        let standing = Standing::new(10.5, 10.0, at());
        assert!(standing.spent_out());
        let refusal = standing.refusal("team", at());
        assert_eq!(refusal.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refusal.kind, "billing_error");
        assert!(!refusal.retry);
        assert_eq!(refusal.retry_after, Some(29 * 86400 + 12 * 3600));
        assert!(
            refusal.message.contains("resets Jan 1"),
            "{}",
            refusal.message
        );
        assert!(
            refusal.message.contains("ask the admin"),
            "{}",
            refusal.message
        );
        assert_eq!(
            header(&refusal.headers, "anthropic-ratelimit-unified-status"),
            Some("rejected")
        );
        // The protocol: without these two the client prints the message as it is.
        assert_eq!(
            header(
                &refusal.headers,
                "anthropic-ratelimit-unified-representative-claim"
            ),
            None
        );
        assert_eq!(
            header(
                &refusal.headers,
                "anthropic-ratelimit-unified-overage-status"
            ),
            None
        );
    }

    #[test]
    fn the_usage_answer_is_in_cents_and_whole_percents() {
        let with = usage_json(Some(Standing::new(2.714, 5.0, at())), [2.714, 0.5, 1.0]);
        assert_eq!(with["extra_usage"]["monthly_limit"], 500.0);
        assert_eq!(with["extra_usage"]["used_credits"], 271.0);
        assert_eq!(with["limits"][0]["percent"], 54.0);
        assert_eq!(with["limits"][0]["resets_at"], "2027-01-01T00:00:00.000Z");
        let without = usage_json(None, [12.4, 1.0, 3.0]);
        assert_eq!(without["limits"], json!([]));
        assert_eq!(without["extra_usage"]["monthly_limit"], Value::Null);
        assert_eq!(without["extra_usage"]["daily"]["used_credits"], 100.0);
        assert_eq!(without["extra_usage"]["weekly"]["used_credits"], 300.0);
    }
}

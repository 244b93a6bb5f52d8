//! Reading Anthropic's rate-limit headers.

use chrono::{DateTime, TimeDelta, Utc};
use http::HeaderMap;

use crate::provider::{DEFAULT_COOLDOWN, Limits};

/// The longest reset claudeflare believes; anything further is capped to this.
pub(crate) const MAX_RESET: TimeDelta = TimeDelta::hours(24);

/// Unified statuses that mean the account cannot take requests now.
const LIMITED_STATUSES: [&str; 4] = ["rejected", "rate_limited", "blocked", "payment_required"];

/// What the rate-limit headers of one response say. Malformed values are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RateLimitInfo {
    /// `anthropic-ratelimit-unified-status`.
    pub unified_status: Option<String>,
    /// `anthropic-ratelimit-unified-reset` (epoch seconds).
    pub unified_reset: Option<DateTime<Utc>>,
    /// `anthropic-ratelimit-unified-5h-utilization`.
    pub utilization_5h: Option<f64>,
    /// `anthropic-ratelimit-unified-7d-utilization`.
    pub utilization_7d: Option<f64>,
    /// `anthropic-ratelimit-unified-5h-reset` (epoch seconds).
    pub reset_5h: Option<DateTime<Utc>>,
    /// `anthropic-ratelimit-unified-7d-reset` (epoch seconds).
    pub reset_7d: Option<DateTime<Utc>>,
    /// `anthropic-ratelimit-unified-overage-disabled-reason`.
    pub overage_disabled_reason: Option<String>,
    /// `retry-after`, in seconds or as an HTTP date.
    pub retry_after: Option<DateTime<Utc>>,
    /// `x-ratelimit-reset` (epoch seconds), sent by older proxies.
    pub x_ratelimit_reset: Option<DateTime<Utc>>,
    /// The latest `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset` whose
    /// `remaining` is 0 (the binding standard limit), or else the latest of them.
    pub standard_reset: Option<DateTime<Utc>>,
}

/// The rate-limit headers' values, found in one pass over a response's headers (a response carries
/// a dozen of them, and looking each up by name would hash every name again). Measured with
/// Criterion on a full unified and standard set: 0.23 µs per response instead of 1.06 µs for a
/// lookup per name (docs/benchmarks-history.md, second round).
#[derive(Default)]
struct Seen<'a> {
    unified_status: Option<&'a str>,
    unified_reset: Option<&'a str>,
    utilization_5h: Option<&'a str>,
    utilization_7d: Option<&'a str>,
    reset_5h: Option<&'a str>,
    reset_7d: Option<&'a str>,
    overage_disabled_reason: Option<&'a str>,
    retry_after: Option<&'a str>,
    x_ratelimit_reset: Option<&'a str>,
    /// Reset and remaining of requests, tokens, input tokens and output tokens.
    standard: [(Option<&'a str>, Option<&'a str>); 4],
}

impl<'a> Seen<'a> {
    fn read(headers: &'a HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            let slot = match name.strip_prefix("anthropic-ratelimit-") {
                Some("unified-status") => &mut seen.unified_status,
                Some("unified-reset") => &mut seen.unified_reset,
                Some("unified-5h-utilization") => &mut seen.utilization_5h,
                Some("unified-7d-utilization") => &mut seen.utilization_7d,
                Some("unified-5h-reset") => &mut seen.reset_5h,
                Some("unified-7d-reset") => &mut seen.reset_7d,
                Some("unified-overage-disabled-reason") => &mut seen.overage_disabled_reason,
                Some("requests-reset") => &mut seen.standard[0].0,
                Some("requests-remaining") => &mut seen.standard[0].1,
                Some("tokens-reset") => &mut seen.standard[1].0,
                Some("tokens-remaining") => &mut seen.standard[1].1,
                Some("input-tokens-reset") => &mut seen.standard[2].0,
                Some("input-tokens-remaining") => &mut seen.standard[2].1,
                Some("output-tokens-reset") => &mut seen.standard[3].0,
                Some("output-tokens-remaining") => &mut seen.standard[3].1,
                Some(_) => continue,
                None if name == "retry-after" => &mut seen.retry_after,
                None if name == "x-ratelimit-reset" => &mut seen.x_ratelimit_reset,
                None => continue,
            };
            // The first usable value of a repeated header counts.
            if slot.is_none() {
                *slot = value.to_str().ok().map(str::trim).filter(|s| !s.is_empty());
            }
        }
        seen
    }
}

fn epoch_seconds(value: &str) -> Option<DateTime<Utc>> {
    let seconds: f64 = value.parse().ok()?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e11 {
        return None;
    }
    DateTime::from_timestamp_millis((seconds * 1000.0) as i64)
}

fn retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    crate::provider::retry_after_value(value, now)
}

impl RateLimitInfo {
    /// Parse the headers of a response received at `now`.
    pub(crate) fn from_headers(headers: &HeaderMap, now: DateTime<Utc>) -> Self {
        let seen = Seen::read(headers);
        let mut binding = None;
        let mut latest = None;
        for (reset, remaining) in seen.standard {
            let reset = reset
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.with_timezone(&Utc));
            let Some(reset) = reset else { continue };
            latest = latest.max(Some(reset));
            if remaining.and_then(|r| r.parse::<u64>().ok()) == Some(0) {
                binding = binding.max(Some(reset));
            }
        }
        // A fraction of the window (0.97 = 97% used); anything outside 0–1 is not one.
        let utilization = |v: Option<&str>| {
            v.and_then(|v| v.parse().ok())
                .filter(|v: &f64| (0.0..=1.0).contains(v))
        };
        Self {
            unified_status: seen.unified_status.map(str::to_owned),
            unified_reset: seen.unified_reset.and_then(epoch_seconds),
            utilization_5h: utilization(seen.utilization_5h),
            utilization_7d: utilization(seen.utilization_7d),
            reset_5h: seen.reset_5h.and_then(epoch_seconds),
            reset_7d: seen.reset_7d.and_then(epoch_seconds),
            overage_disabled_reason: seen.overage_disabled_reason.map(str::to_owned),
            retry_after: seen.retry_after.and_then(|v| retry_after(v, now)),
            x_ratelimit_reset: seen.x_ratelimit_reset.and_then(epoch_seconds),
            standard_reset: binding.or(latest),
        }
    }

    /// The account-level part, for the pool.
    pub(crate) fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.status.clone_from(&self.unified_status);
        limits.reset = self.unified_reset;
        limits.utilization_5h = self.utilization_5h;
        limits.reset_5h = self.reset_5h;
        limits.utilization_7d = self.utilization_7d;
        limits.reset_7d = self.reset_7d;
        limits
    }

    /// Whether any rate-limit header was present.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the unified status says the account is limited.
    pub(crate) fn status_is_limited(&self) -> bool {
        self.unified_status
            .as_deref()
            .is_some_and(|s| LIMITED_STATUSES.contains(&s))
    }

    /// Until when a limited account should rest: the first usable reset in the future, capped
    /// at 24 h; 60 s when none is given.
    pub(crate) fn limited_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        [
            self.unified_reset,
            self.retry_after,
            self.x_ratelimit_reset,
            self.standard_reset,
        ]
        .into_iter()
        .flatten()
        .find(|reset| *reset > now)
        .map_or(now + DEFAULT_COOLDOWN, |reset| reset.min(now + MAX_RESET))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn limited_until_table() {
        let now = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        let in_secs = |s: i64| now + TimeDelta::seconds(s);
        let epoch = |s: i64| (1_750_000_000 + s).to_string();
        type Case = (&'static str, Vec<(&'static str, String)>, DateTime<Utc>);
        let cases: Vec<Case> = vec![
            ("nothing: default cooldown", vec![], in_secs(60)),
            (
                "unified reset",
                vec![("anthropic-ratelimit-unified-reset", epoch(3600))],
                in_secs(3600),
            ),
            (
                "unified reset wins over retry-after",
                vec![
                    ("anthropic-ratelimit-unified-reset", epoch(100)),
                    ("retry-after", "5".into()),
                ],
                in_secs(100),
            ),
            (
                "retry-after seconds",
                vec![("retry-after", "30".into())],
                in_secs(30),
            ),
            (
                "retry-after http date",
                vec![("retry-after", "Sun, 15 Jun 2025 15:07:20 GMT".into())],
                DateTime::parse_from_rfc2822("Sun, 15 Jun 2025 15:07:20 GMT")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            (
                "x-ratelimit-reset",
                vec![("x-ratelimit-reset", epoch(90))],
                in_secs(90),
            ),
            (
                "capped at 24 h",
                vec![("anthropic-ratelimit-unified-reset", epoch(3 * 86_400))],
                in_secs(86_400),
            ),
            (
                "huge retry-after capped",
                vec![("retry-after", "99999999999999999999".into())],
                in_secs(60),
            ),
            (
                "past reset: next usable",
                vec![
                    ("anthropic-ratelimit-unified-reset", epoch(-10)),
                    ("retry-after", "7".into()),
                ],
                in_secs(7),
            ),
            (
                "malformed values ignored",
                vec![
                    ("anthropic-ratelimit-unified-reset", "soon".into()),
                    ("retry-after", "-3".into()),
                    ("x-ratelimit-reset", "NaN".into()),
                ],
                in_secs(60),
            ),
            (
                "standard binding reset",
                vec![
                    ("anthropic-ratelimit-requests-remaining", "10".into()),
                    (
                        "anthropic-ratelimit-requests-reset",
                        "2025-06-15T15:10:00Z".into(),
                    ),
                    ("anthropic-ratelimit-tokens-remaining", "0".into()),
                    (
                        "anthropic-ratelimit-tokens-reset",
                        "2025-06-15T15:08:00Z".into(),
                    ),
                ],
                DateTime::parse_from_rfc3339("2025-06-15T15:08:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        ];
        for (name, pairs, expected) in cases {
            let pairs: Vec<(&'static str, &str)> =
                pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let info = RateLimitInfo::from_headers(&headers(&pairs), now);
            assert_eq!(info.limited_until(now), expected, "{name}");
        }
    }

    #[test]
    fn unified_fields_are_read() {
        let now = Utc::now();
        let info = RateLimitInfo::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.92"),
                ("anthropic-ratelimit-unified-7d-utilization", "bogus"),
                ("anthropic-ratelimit-unified-5h-reset", "1750000000"),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "out_of_credits",
                ),
            ]),
            now,
        );
        assert_eq!(info.unified_status.as_deref(), Some("allowed_warning"));
        assert!(!info.status_is_limited());
        assert_eq!(info.utilization_5h, Some(0.92));
        assert_eq!(info.utilization_7d, None);
        assert_eq!(info.reset_5h, DateTime::from_timestamp(1_750_000_000, 0));
        assert_eq!(info.reset_7d, None);
        for not_a_fraction in ["97", "-0.1", "NaN", "inf"] {
            let info = RateLimitInfo::from_headers(
                &headers(&[("anthropic-ratelimit-unified-5h-utilization", not_a_fraction)]),
                now,
            );
            assert_eq!(info.utilization_5h, None, "{not_a_fraction}");
        }
        assert_eq!(
            info.overage_disabled_reason.as_deref(),
            Some("out_of_credits")
        );
        for limited in ["rejected", "rate_limited", "blocked", "payment_required"] {
            let info = RateLimitInfo::from_headers(
                &headers(&[("anthropic-ratelimit-unified-status", limited)]),
                now,
            );
            assert!(info.status_is_limited(), "{limited}");
        }
        for fine in ["allowed", "queueing_soft", "queueing_hard"] {
            let info = RateLimitInfo::from_headers(
                &headers(&[("anthropic-ratelimit-unified-status", fine)]),
                now,
            );
            assert!(!info.status_is_limited(), "{fine}");
        }
        assert!(RateLimitInfo::from_headers(&HeaderMap::new(), now).is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    const NAMES: [&str; 14] = [
        "anthropic-ratelimit-unified-status",
        "anthropic-ratelimit-unified-reset",
        "anthropic-ratelimit-unified-5h-utilization",
        "anthropic-ratelimit-unified-7d-utilization",
        "anthropic-ratelimit-unified-5h-reset",
        "anthropic-ratelimit-unified-overage-disabled-reason",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-tokens-remaining",
        "retry-after",
        "x-ratelimit-reset",
        "x-should-retry",
        "request-id",
    ];

    /// Header values that are numbers, dates, words, or noise.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            (0.0f64..=1.0).prop_map(|f| f.to_string()),
            (1_700_000_000i64..1_900_000_000).prop_map(|n| n.to_string()),
            Just("Sun, 15 Jun 2025 15:07:20 GMT".to_owned()),
            Just("2025-06-15T15:08:00Z".to_owned()),
            Just("rejected".to_owned()),
            "[ -~]{0,24}",
        ]
    }

    /// The plain reading of a utilization header: a number from 0 to 1, else nothing.
    fn reference_fraction(value: &str) -> Option<f64> {
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..=1.0).contains(v))
    }

    proptest! {
        #[test]
        fn any_headers_parse_without_panic_and_limits_stay_within_a_day(
            pairs in prop::collection::vec((0..NAMES.len(), value()), 0..12),
            now in 1_600_000_000i64..2_000_000_000,
        ) {
            let now = DateTime::from_timestamp(now, 0).unwrap();
            let mut headers = HeaderMap::new();
            for (name, value) in &pairs {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.append(HeaderName::from_static(NAMES[*name]), value);
                }
            }
            let info = RateLimitInfo::from_headers(&headers, now);
            let until = info.limited_until(now);
            prop_assert!(until > now && until <= now + MAX_RESET, "{until} at {now}");
            // The first non-empty 5-hour utilization sent is read as the plain reading says.
            let first = headers
                .get_all("anthropic-ratelimit-unified-5h-utilization")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .find(|v| !v.is_empty());
            prop_assert_eq!(info.utilization_5h, first.and_then(reference_fraction));
        }
    }
}

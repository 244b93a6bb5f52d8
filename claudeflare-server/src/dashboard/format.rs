//! How numbers, times and durations read on the page.

use chrono::{DateTime, TimeDelta, Utc};

/// `1234567` → `1.2M`, `12345` → `12.3k`.
pub fn count(n: i64) -> String {
    let f = n as f64;
    match n.abs() {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", f / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.1}B", f / 1e9),
    }
}

/// US dollars with sensible precision.
pub fn usd(amount: f64) -> String {
    if amount == 0.0 {
        "$0".into()
    } else if amount < 0.01 {
        format!("${amount:.4}")
    } else if amount < 100.0 {
        format!("${amount:.2}")
    } else {
        format!("${amount:.0}")
    }
}

/// A span such as `4h 12m`, `3m 5s`, `12s`.
pub fn span(delta: TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0);
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `5m ago`, or `never`.
pub fn ago(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match at {
        Some(at) if now - at < TimeDelta::seconds(5) => "just now".into(),
        Some(at) => format!("{} ago", span(now - at)),
        None => "never".into(),
    }
}

/// `HH:MM:SS` (UTC) for today, else `MM-DD HH:MM`.
pub fn clock(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%S").to_string()
    } else {
        at.format("%m-%d %H:%M").to_string()
    }
}

/// Milliseconds as `850 ms` or `2.4 s`.
pub fn millis(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_numbers_and_times() {
        assert_eq!(count(999), "999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(2_500_000), "2.5M");
        assert_eq!(usd(0.0), "$0");
        assert_eq!(usd(0.00123), "$0.0012");
        assert_eq!(usd(12.345), "$12.35");
        assert_eq!(span(TimeDelta::seconds(4 * 3600 + 12 * 60 + 5)), "4h 12m");
        assert_eq!(span(TimeDelta::seconds(185)), "3m 5s");
        assert_eq!(span(TimeDelta::seconds(-5)), "0s");
        assert_eq!(millis(850.0), "850 ms");
        assert_eq!(millis(2400.0), "2.4 s");
    }
}

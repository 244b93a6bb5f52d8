//! Subscription usage from `GET /api/oauth/usage`: both shapes the endpoint answers in, read into
//! one (`/api/accounts` shows it under `usage`).
//!
//! - flat: `{"five_hour": {"utilization", "resets_at"}, "seven_day": {…}, "seven_day_opus":
//!   {…}|null, "seven_day_sonnet": {…}|null, "extra_usage": {…}|null}`;
//! - newer: `{"limits": [{"kind": "session"|"weekly_all"|"weekly_scoped", "percent",
//!   "resets_at", "scope": null | {"model": {"id", "display_name"}, "surface"}}]}`.
//!
//! Any field may be null or absent; what cannot be read is left out, never guessed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One window of subscription usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Percent used (0–100).
    pub utilization: Option<f64>,
    /// When the window resets.
    pub resets_at: Option<DateTime<Utc>>,
}

/// A per-model weekly cap: that model is refused at 100% while others still work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLimit {
    /// The model, as the endpoint names it (`claude-opus-4-8`, `Opus`, …).
    pub model: String,
    /// Percent used (0–100).
    pub utilization: Option<f64>,
    /// When the cap resets.
    pub resets_at: Option<DateTime<Utc>>,
}

/// Extra usage (paid usage beyond the plan), as the endpoint reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraUsage {
    /// Whether extra usage is turned on.
    pub is_enabled: Option<bool>,
    /// The monthly limit, in credits.
    pub monthly_limit: Option<f64>,
    /// Credits used this month.
    pub used_credits: Option<f64>,
    /// Percent of the monthly limit used (0–100).
    pub utilization: Option<f64>,
}

/// Subscription usage, as `/api/accounts` shows it under `usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The 5-hour window.
    pub five_hour: Option<Window>,
    /// The account-wide 7-day window.
    pub seven_day: Option<Window>,
    /// Per-model weekly caps.
    #[serde(default)]
    pub models: Vec<ModelLimit>,
    /// Extra usage, when the endpoint reports it.
    #[serde(default)]
    pub extra_usage: Option<ExtraUsage>,
    /// When it was fetched.
    #[serde(default = "Utc::now")]
    pub fetched_at: DateTime<Utc>,
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64().filter(|v| v.is_finite())
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A flat window object (`{"utilization", "resets_at"}`), or `None` when null or not one.
fn flat_window(value: &Value) -> Option<Window> {
    let object = value.as_object()?;
    Some(Window {
        utilization: object.get("utilization").and_then(number),
        resets_at: object.get("resets_at").and_then(time),
    })
}

impl Usage {
    /// Read an answer of the usage endpoint, in either shape, fetched at `fetched_at`.
    pub fn from_answer(answer: &Value, fetched_at: DateTime<Utc>) -> Self {
        let mut usage = Usage {
            five_hour: flat_window(&answer["five_hour"]),
            seven_day: flat_window(&answer["seven_day"]),
            models: Vec::new(),
            extra_usage: answer["extra_usage"].as_object().map(|extra| ExtraUsage {
                is_enabled: extra.get("is_enabled").and_then(Value::as_bool),
                monthly_limit: extra.get("monthly_limit").and_then(number),
                used_credits: extra.get("used_credits").and_then(number),
                utilization: extra.get("utilization").and_then(number),
            }),
            fetched_at,
        };
        for (key, model) in [("seven_day_opus", "opus"), ("seven_day_sonnet", "sonnet")] {
            if let Some(window) = flat_window(&answer[key]) {
                usage.models.push(ModelLimit {
                    model: model.to_owned(),
                    utilization: window.utilization,
                    resets_at: window.resets_at,
                });
            }
        }
        for limit in answer["limits"].as_array().into_iter().flatten() {
            let window = Window {
                utilization: number(&limit["percent"]),
                resets_at: time(&limit["resets_at"]),
            };
            match limit["kind"].as_str() {
                Some("session") => {
                    usage.five_hour.get_or_insert(window);
                }
                Some("weekly_all") => {
                    usage.seven_day.get_or_insert(window);
                }
                Some("weekly_scoped") => {
                    let model = &limit["scope"]["model"];
                    let name = model["id"]
                        .as_str()
                        .or_else(|| model["display_name"].as_str());
                    if let Some(name) = name {
                        usage.models.push(ModelLimit {
                            model: name.to_owned(),
                            utilization: window.utilization,
                            resets_at: window.resets_at,
                        });
                    }
                }
                _ => {}
            }
        }
        usage
    }

    /// The 5-hour and 7-day utilization as fractions (0–1) with their resets, for the account's
    /// live state.
    pub fn fractions(&self) -> [Option<(f64, Option<DateTime<Utc>>)>; 2] {
        [&self.five_hour, &self.seven_day].map(|window| {
            let window = window.as_ref()?;
            let percent = window.utilization?;
            Some(((percent / 100.0).clamp(0.0, 1.0), window.resets_at))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_flat_shape_is_read() {
        let now = Utc::now();
        let answer = json!({
            "five_hour": {"utilization": 42.5, "resets_at": "2026-11-29T20:00:00Z"},
            "seven_day": {"utilization": 12, "resets_at": null},
            "seven_day_opus": {"utilization": 100, "resets_at": "2026-12-01T00:00:00Z"},
            "seven_day_sonnet": null,
            "extra_usage": {"is_enabled": true, "monthly_limit": 5000, "used_credits": 1250.5, "utilization": 25.01},
        });
        let usage = Usage::from_answer(&answer, now);
        assert_eq!(usage.five_hour.as_ref().unwrap().utilization, Some(42.5));
        assert_eq!(
            usage.five_hour.as_ref().unwrap().resets_at,
            Some("2026-11-29T20:00:00Z".parse().unwrap())
        );
        assert_eq!(usage.seven_day.as_ref().unwrap().resets_at, None);
        assert_eq!(usage.models.len(), 1);
        assert_eq!(usage.models[0].model, "opus");
        assert_eq!(usage.models[0].utilization, Some(100.0));
        let extra = usage.extra_usage.as_ref().unwrap();
        assert_eq!(extra.is_enabled, Some(true));
        assert_eq!(extra.used_credits, Some(1250.5));
        let [five, seven] = usage.fractions();
        assert_eq!(five.unwrap().0, 0.425);
        assert_eq!(seven.unwrap().0, 0.12);
    }

    #[test]
    fn the_limits_shape_is_read() {
        let answer = json!({"limits": [
            {"kind": "session", "percent": 80, "resets_at": "2026-11-29T20:00:00Z", "scope": null},
            {"kind": "weekly_all", "percent": 30, "resets_at": "2026-12-03T00:00:00Z", "scope": null},
            {"kind": "weekly_scoped", "percent": 100, "resets_at": "2026-12-02T00:00:00Z",
             "scope": {"model": {"id": "claude-opus-4-8", "display_name": "Opus 4.8"}, "surface": "claude_code"}},
            {"kind": "weekly_scoped", "percent": 5, "scope": {"model": {"display_name": "Sonnet"}}},
            {"kind": "weekly_scoped", "percent": 5, "scope": null},
            {"kind": "something_new", "percent": 1},
        ]});
        let usage = Usage::from_answer(&answer, Utc::now());
        assert_eq!(usage.five_hour.as_ref().unwrap().utilization, Some(80.0));
        assert_eq!(usage.seven_day.as_ref().unwrap().utilization, Some(30.0));
        let models: Vec<_> = usage
            .models
            .iter()
            .map(|m| (m.model.as_str(), m.utilization))
            .collect();
        assert_eq!(
            models,
            [("claude-opus-4-8", Some(100.0)), ("Sonnet", Some(5.0))]
        );
        assert_eq!(usage.extra_usage, None);
    }

    #[test]
    fn nulls_garbage_and_stored_usage_of_the_previous_version() {
        let usage = Usage::from_answer(&json!({"five_hour": null, "limits": "no"}), Utc::now());
        assert_eq!((usage.five_hour, usage.seven_day), (None, None));
        assert!(usage.models.is_empty());
        let usage = Usage::from_answer(&json!({"five_hour": {"utilization": "lots"}}), Utc::now());
        assert_eq!(usage.five_hour.unwrap().utilization, None);
        // What the previous version stored in the database still reads.
        let stored = r#"{"five_hour":{"utilization":10.0,"resets_at":null},"seven_day":null,"fetched_at":"2026-11-20T10:00:00Z"}"#;
        let usage: Usage = serde_json::from_str(stored).unwrap();
        assert_eq!(usage.five_hour.unwrap().utilization, Some(10.0));
        assert!(usage.models.is_empty() && usage.extra_usage.is_none());
    }
}

//! Cost estimates: the price table of Anthropic's models (anthropic.md, "Pricing"), in one place,
//! overridable from the configuration file's `pricing` object.
//!
//! A model id finds its family whether it is dated (`claude-opus-4-5-20251101`), an alias
//! (`claude-opus-4-5`, `claude-3-7-sonnet-latest`) or asks for the 1M context
//! (`claude-sonnet-4-5[1m]`): the suffixes are taken off and what is left must name a family
//! exactly. A model the table does not know costs 0 and is named once in the log: a new family
//! is never priced as an older one.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};

use claudeflare_tower::record::Usage;
use serde::{Deserialize, Serialize};

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// Cache writes to the 5-minute cache.
    pub cache_write: f64,
    /// Cache writes to the 1-hour cache; 2 × `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Cache reads.
    pub cache_read: f64,
    /// Premium rates for a request whose input is over a threshold (long context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
}

/// The rates of a request whose whole input (uncached + cache reads + cache writes) is over
/// `above_input_tokens`: Sonnet 4 and 4.5 with the 1M-context beta, over 200,000 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// The premium applies to requests with more input tokens than this.
    pub above_input_tokens: u64,
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// Cache writes (5 minutes); the base rate scaled like `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Cache writes (1 hour); the base rate scaled like `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Cache reads; the base rate scaled like `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

const fn price(
    input: f64,
    output: f64,
    cache_write: f64,
    cache_write_1h: f64,
    cache_read: f64,
) -> Price {
    Price {
        input,
        output,
        cache_write,
        cache_write_1h: Some(cache_write_1h),
        cache_read,
        long_context: None,
    }
}

const FABLE_5: Price = price(10.0, 50.0, 12.50, 20.0, 1.00);
const OPUS_4_5: Price = price(5.0, 25.0, 6.25, 10.0, 0.50);
const OPUS_4: Price = price(15.0, 75.0, 18.75, 30.0, 1.50);
const SONNET: Price = price(3.0, 15.0, 3.75, 6.0, 0.30);
/// Sonnet 4 and 4.5: premium rates over 200,000 input tokens (1M-context beta).
const SONNET_LONG_CONTEXT: Price = Price {
    long_context: Some(LongContext {
        above_input_tokens: 200_000,
        input: 6.0,
        output: 22.50,
        cache_write: None,
        cache_write_1h: None,
        cache_read: None,
    }),
    ..SONNET
};
const HAIKU_4_5: Price = price(1.0, 5.0, 1.25, 2.0, 0.10);
const HAIKU_3_5: Price = price(0.80, 4.0, 1.00, 1.60, 0.08);
const HAIKU_3: Price = price(0.25, 1.25, 0.30, 0.50, 0.03);

/// Every family, by the names its models go by once the date, `-latest` and `[1m]` are off.
const BUILT_IN: [(&str, Price); 19] = [
    ("claude-fable-5", FABLE_5),
    ("claude-opus-4-8", OPUS_4_5),
    ("claude-opus-4-7", OPUS_4_5),
    ("claude-opus-4-6", OPUS_4_5),
    ("claude-opus-4-5", OPUS_4_5),
    ("claude-opus-4-1", OPUS_4),
    ("claude-opus-4-0", OPUS_4),
    ("claude-opus-4", OPUS_4),
    ("claude-sonnet-5", SONNET),
    ("claude-sonnet-4-6", SONNET),
    ("claude-sonnet-4-5", SONNET_LONG_CONTEXT),
    ("claude-sonnet-4-0", SONNET_LONG_CONTEXT),
    ("claude-sonnet-4", SONNET_LONG_CONTEXT),
    ("claude-3-7-sonnet", SONNET),
    ("claude-3-5-sonnet", SONNET),
    ("claude-haiku-4-5", HAIKU_4_5),
    ("claude-3-5-haiku", HAIKU_3_5),
    ("claude-3-haiku", HAIKU_3),
    ("claude-3-opus", OPUS_4),
];

/// `model` without what does not change its price: a `[1m]`-style suffix, a `-YYYYMMDD` date,
/// `-latest`.
fn family_name(model: &str) -> &str {
    let model = model.trim();
    let model = match model.find('[') {
        Some(at) if model.ends_with(']') => &model[..at],
        _ => model,
    };
    let model = model.strip_suffix("-latest").unwrap_or(model);
    match model.rsplit_once('-') {
        Some((name, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => model,
    }
}

/// Whether an override key names `family`: exactly, or as a prefix that ends at a `-`.
fn override_matches(key: &str, family: &str) -> bool {
    let key = family_name(key);
    family == key
        || family
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Prices by model: the built-in table plus the configuration's overrides, which win.
#[derive(Debug, Default)]
pub struct Pricing {
    overrides: BTreeMap<String, Price>,
    warned: Mutex<HashSet<String>>,
}

impl Pricing {
    /// The built-in table with `overrides` on top.
    pub fn new(overrides: BTreeMap<String, Price>) -> Self {
        Self {
            overrides,
            warned: Mutex::default(),
        }
    }

    /// The price of `model`: the most specific matching override, else its built-in family.
    pub fn price(&self, model: &str) -> Option<Price> {
        let family = family_name(model);
        self.overrides
            .iter()
            .filter(|(key, _)| override_matches(key, family))
            .max_by_key(|(key, _)| family_name(key).len())
            .map(|(_, price)| *price)
            .or_else(|| {
                BUILT_IN
                    .iter()
                    .find(|(name, _)| *name == family)
                    .map(|(_, price)| *price)
            })
    }

    /// Estimated cost in USD; unknown models cost 0 and are logged once.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> f64 {
        let Some(model) = model else { return 0.0 };
        let Some(price) = self.price(model) else {
            let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
            if warned.insert(model.to_owned()) {
                tracing::warn!(
                    model,
                    "no price known for this model; its cost counts as 0 (add it under `pricing` in the config file)"
                );
            }
            return 0.0;
        };
        cost(&price, usage)
    }
}

/// The cost of `usage` at `price`.
fn cost(price: &Price, usage: &Usage) -> f64 {
    let input = usage
        .input_tokens
        .saturating_add(usage.cache_read_input_tokens)
        .saturating_add(usage.cache_creation_input_tokens);
    let base_1h = price.cache_write_1h.unwrap_or(2.0 * price.input);
    let (input_rate, output_rate, write_5m, write_1h, read) = match price.long_context {
        Some(premium) if input > premium.above_input_tokens => {
            let scale = if price.input > 0.0 {
                premium.input / price.input
            } else {
                1.0
            };
            (
                premium.input,
                premium.output,
                premium.cache_write.unwrap_or(price.cache_write * scale),
                premium.cache_write_1h.unwrap_or(base_1h * scale),
                premium.cache_read.unwrap_or(price.cache_read * scale),
            )
        }
        _ => (
            price.input,
            price.output,
            price.cache_write,
            base_1h,
            price.cache_read,
        ),
    };
    let per_token = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1_000_000.0;
    per_token(usage.input_tokens, input_rate)
        + per_token(usage.output_tokens, output_rate)
        + per_token(usage.cache_creation_5m_input_tokens(), write_5m)
        + per_token(usage.cache_creation_1h_input_tokens, write_1h)
        + per_token(usage.cache_read_input_tokens, read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, write_5m: u64, write_1h: u64, read: u64) -> Usage {
        let mut usage = Usage::default();
        usage.input_tokens = input;
        usage.output_tokens = output;
        usage.cache_creation_input_tokens = write_5m + write_1h;
        usage.cache_creation_1h_input_tokens = write_1h;
        usage.cache_read_input_tokens = read;
        usage
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The sum of the five rates: the cost of 10,000 tokens of each kind (under any long-context
    /// threshold), times 100.
    fn million_each(pricing: &Pricing, model: &str) -> f64 {
        let n = 10_000;
        pricing.cost(Some(model), &usage(n, n, n, n, n)) * 100.0
    }

    #[test]
    fn every_family_of_the_table_by_dated_id_alias_and_1m_suffix() {
        let pricing = Pricing::default();
        let table: [(&[&str], f64); 8] = [
            (
                &["claude-fable-5", "claude-fable-5[1m]"],
                10.0 + 50.0 + 12.5 + 20.0 + 1.0,
            ),
            (
                &[
                    "claude-opus-4-5-20251101",
                    "claude-opus-4-5",
                    "claude-opus-4-6",
                    "claude-opus-4-6[1m]",
                    "claude-opus-4-7",
                    "claude-opus-4-8",
                ],
                5.0 + 25.0 + 6.25 + 10.0 + 0.5,
            ),
            (
                &[
                    "claude-opus-4-1-20250805",
                    "claude-opus-4-1",
                    "claude-opus-4-20250514",
                    "claude-opus-4-0",
                ],
                15.0 + 75.0 + 18.75 + 30.0 + 1.5,
            ),
            (
                &[
                    "claude-sonnet-5",
                    "claude-sonnet-4-6",
                    "claude-sonnet-4-5-20250929",
                    "claude-sonnet-4-5",
                    "claude-sonnet-4-20250514",
                    "claude-sonnet-4-0",
                    "claude-3-7-sonnet-20250219",
                    "claude-3-7-sonnet-latest",
                ],
                3.0 + 15.0 + 3.75 + 6.0 + 0.3,
            ),
            (
                &["claude-haiku-4-5-20251001", "claude-haiku-4-5"],
                1.0 + 5.0 + 1.25 + 2.0 + 0.1,
            ),
            (
                &["claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"],
                0.8 + 4.0 + 1.0 + 1.6 + 0.08,
            ),
            (&["claude-3-haiku-20240307"], 0.25 + 1.25 + 0.3 + 0.5 + 0.03),
            (
                &["claude-3-5-sonnet-20241022"],
                3.0 + 15.0 + 3.75 + 6.0 + 0.3,
            ),
        ];
        for (models, expected) in table {
            for model in models {
                let got = million_each(&pricing, model);
                assert!(close(got, expected), "{model}: {got} != {expected}");
            }
        }
    }

    #[test]
    fn an_unknown_family_is_never_priced_as_an_older_one() {
        let pricing = Pricing::default();
        for model in [
            "claude-opus-4-9",
            "claude-opus-5",
            "claude-sonnet-4-7-20270101",
            "claude-haiku-5",
            "claude-opus-4-10",
            "gpt-4o",
            "",
        ] {
            assert_eq!(million_each(&pricing, model), 0.0, "{model}");
        }
        assert_eq!(pricing.cost(None, &usage(1, 1, 1, 1, 1)), 0.0);
    }

    #[test]
    fn one_hour_cache_writes_cost_twice_the_input_rate() {
        let pricing = Pricing::default();
        let five = pricing.cost(Some("claude-opus-4-8"), &usage(0, 0, 1_000_000, 0, 0));
        let hour = pricing.cost(Some("claude-opus-4-8"), &usage(0, 0, 0, 1_000_000, 0));
        assert!(close(five, 6.25) && close(hour, 10.0), "{five} {hour}");
        // Without the split, every write is a 5-minute one.
        let mut unsplit = Usage::default();
        unsplit.cache_creation_input_tokens = 1_000_000;
        assert!(close(pricing.cost(Some("claude-opus-4-8"), &unsplit), 6.25));
    }

    #[test]
    fn the_mocks_opus_4_8_request() {
        // 25 in, 42 out, 1000 cache reads, 3 five-minute and 4 one-hour cache writes.
        let cost = Pricing::default().cost(Some("claude-opus-4-8"), &usage(25, 42, 3, 4, 1000));
        let expected = (25.0 * 5.0 + 42.0 * 25.0 + 3.0 * 6.25 + 4.0 * 10.0 + 1000.0 * 0.5) / 1e6;
        assert!(close(cost, expected), "{cost}");
        assert!(close(cost, 0.00173375), "{cost}");
    }

    #[test]
    fn long_context_premium_applies_over_the_threshold_only() {
        let pricing = Pricing::default();
        let under = usage(150_000, 1_000, 0, 0, 50_000);
        let over = usage(150_000, 1_000, 0, 0, 50_001);
        let at = |u: &Usage| pricing.cost(Some("claude-sonnet-4-5[1m]"), u);
        assert!(close(
            at(&under),
            (150_000.0 * 3.0 + 1_000.0 * 15.0 + 50_000.0 * 0.3) / 1e6
        ));
        assert!(close(
            at(&over),
            (150_000.0 * 6.0 + 1_000.0 * 22.5 + 50_001.0 * 0.6) / 1e6
        ));
        // Sonnet 4.6 has no premium in the table.
        let flat = pricing.cost(Some("claude-sonnet-4-6"), &over);
        assert!(close(
            flat,
            (150_000.0 * 3.0 + 1_000.0 * 15.0 + 50_001.0 * 0.3) / 1e6
        ));
    }

    #[test]
    fn overrides_win_and_can_set_every_field() {
        let overrides: BTreeMap<String, Price> = serde_json::from_value(serde_json::json!({
            // As the previous version wrote them: four rates.
            "claude-sonnet": {"input": 1, "output": 1, "cache_write": 1, "cache_read": 1},
            "claude-opus-4-9": {
                "input": 4, "output": 20, "cache_write": 5, "cache_write_1h": 8, "cache_read": 0.4,
                "long_context": {"above_input_tokens": 100, "input": 8, "output": 30, "cache_read": 0.8}
            },
        }))
        .unwrap();
        let pricing = Pricing::new(overrides);
        assert_eq!(
            pricing.price("claude-sonnet-4-20250514").unwrap().input,
            1.0
        );
        assert_eq!(pricing.price("claude-sonnet-5[1m]").unwrap().input, 1.0);
        assert_eq!(pricing.price("claude-sonnetish").map(|p| p.input), None);
        assert_eq!(
            pricing.price("claude-3-haiku-20240307").unwrap().input,
            0.25
        );
        // An older override format's missing 1-hour rate is 2 × input.
        assert!(close(
            pricing.cost(Some("claude-sonnet-4-5"), &usage(0, 0, 0, 1_000_000, 0)),
            2.0
        ));
        let small = usage(10, 10, 0, 10, 10);
        assert!(close(
            pricing.cost(Some("claude-opus-4-9-20270101"), &small),
            (10.0 * 4.0 + 10.0 * 20.0 + 10.0 * 8.0 + 10.0 * 0.4) / 1e6
        ));
        let big = usage(100, 10, 0, 10, 10);
        assert!(close(
            pricing.cost(Some("claude-opus-4-9"), &big),
            (100.0 * 8.0 + 10.0 * 30.0 + 10.0 * 16.0 + 10.0 * 0.8) / 1e6
        ));
        let unknown_field = serde_json::from_value::<Price>(serde_json::json!({
            "input": 1, "output": 1, "cache_write": 1, "cache_read": 1, "cache_writes": 2
        }));
        assert!(unknown_field.is_err());
    }

    #[test]
    fn family_names() {
        for (model, family) in [
            ("claude-opus-4-5-20251101", "claude-opus-4-5"),
            ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5"),
            ("claude-sonnet-4-5-20250929[1m]", "claude-sonnet-4-5"),
            ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
            ("claude-opus-4-8", "claude-opus-4-8"),
            ("claude-opus-4-20250514", "claude-opus-4"),
        ] {
            assert_eq!(family_name(model), family);
        }
    }
}

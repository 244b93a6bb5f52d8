//! Cost estimates: the price table of Anthropic's models, in one place, overridable from the
//! configuration file's `pricing` object.

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
    /// Cache writes (5-minute cache).
    pub cache_write: f64,
    /// Cache reads.
    pub cache_read: f64,
}

const OPUS_4: Price = Price {
    input: 15.0,
    output: 75.0,
    cache_write: 18.75,
    cache_read: 1.50,
};
const SONNET: Price = Price {
    input: 3.0,
    output: 15.0,
    cache_write: 3.75,
    cache_read: 0.30,
};
const HAIKU_3_5: Price = Price {
    input: 0.80,
    output: 4.0,
    cache_write: 1.00,
    cache_read: 0.08,
};
const HAIKU_3: Price = Price {
    input: 0.25,
    output: 1.25,
    cache_write: 0.30,
    cache_read: 0.03,
};

/// Model-name prefixes of each family. Explicit, so that a newer model (say Opus 4.5, priced
/// differently) is not silently billed as an older one.
const BUILT_IN: [(&str, Price); 9] = [
    ("claude-opus-4-1", OPUS_4),
    ("claude-opus-4-0", OPUS_4),
    ("claude-opus-4-2025", OPUS_4),
    ("claude-sonnet-4-0", SONNET),
    ("claude-sonnet-4-2025", SONNET),
    ("claude-3-7-sonnet", SONNET),
    ("claude-3-5-sonnet", SONNET),
    ("claude-3-5-haiku", HAIKU_3_5),
    ("claude-3-haiku", HAIKU_3),
];

/// Prices by model prefix: the built-in table plus the configuration's overrides, which win.
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

    /// The price of `model`: the longest matching override, else the longest built-in prefix.
    pub fn price(&self, model: &str) -> Option<Price> {
        let longest = |entries: &mut dyn Iterator<Item = (&str, Price)>| {
            entries
                .filter(|(prefix, _)| model.starts_with(prefix))
                .max_by_key(|(prefix, _)| prefix.len())
                .map(|(_, p)| p)
        };
        longest(&mut self.overrides.iter().map(|(k, v)| (k.as_str(), *v)))
            .or_else(|| longest(&mut BUILT_IN.iter().copied()))
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
        let per_token = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1_000_000.0;
        per_token(usage.input_tokens, price.input)
            + per_token(usage.output_tokens, price.output)
            + per_token(usage.cache_creation_input_tokens, price.cache_write)
            + per_token(usage.cache_read_input_tokens, price.cache_read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, write: u64, read: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: write,
            cache_read_input_tokens: read,
        }
    }

    #[test]
    fn families_are_priced_from_the_table() {
        let pricing = Pricing::default();
        let million = usage(1_000_000, 1_000_000, 1_000_000, 1_000_000);
        let cost = |model| pricing.cost(Some(model), &million);
        assert_eq!(cost("claude-opus-4-1-20250805"), 15.0 + 75.0 + 18.75 + 1.5);
        assert_eq!(cost("claude-opus-4-20250514"), 15.0 + 75.0 + 18.75 + 1.5);
        assert_eq!(cost("claude-sonnet-4-20250514"), 3.0 + 15.0 + 3.75 + 0.3);
        assert_eq!(cost("claude-3-7-sonnet-latest"), 3.0 + 15.0 + 3.75 + 0.3);
        assert_eq!(cost("claude-3-5-haiku-20241022"), 0.8 + 4.0 + 1.0 + 0.08);
        assert_eq!(cost("claude-3-haiku-20240307"), 0.25 + 1.25 + 0.3 + 0.03);
        assert_eq!(
            cost("claude-opus-4-5-20251101"),
            0.0,
            "not in the table: not billed as Opus 4"
        );
        assert_eq!(pricing.cost(None, &million), 0.0);
        let small = pricing.cost(Some("claude-sonnet-4-20250514"), &usage(25, 42, 7, 1000));
        assert!(
            (small - (25.0 * 3.0 + 42.0 * 15.0 + 7.0 * 3.75 + 1000.0 * 0.3) / 1e6).abs() < 1e-12
        );
    }

    #[test]
    fn overrides_win() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "claude-opus-4-5".to_owned(),
            Price {
                input: 5.0,
                output: 25.0,
                cache_write: 6.25,
                cache_read: 0.5,
            },
        );
        overrides.insert(
            "claude-sonnet".to_owned(),
            Price {
                input: 1.0,
                output: 1.0,
                cache_write: 1.0,
                cache_read: 1.0,
            },
        );
        let pricing = Pricing::new(overrides);
        assert_eq!(
            pricing.price("claude-opus-4-5-20251101").unwrap().input,
            5.0
        );
        assert_eq!(
            pricing.price("claude-sonnet-4-20250514").unwrap().input,
            1.0
        );
        assert_eq!(
            pricing.price("claude-3-haiku-20240307").unwrap().input,
            0.25
        );
    }
}

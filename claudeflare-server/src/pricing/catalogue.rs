//! The price catalogue's format: what `catalogue.json` (the built-in one), `pricing update` and
//! `pricing_url` read, and the shape of the config file's `pricing` overrides. See the README's
//! "Costs" for the format in words.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The format version this build reads.
pub const FORMAT: u32 = 1;

/// A price list: every model it knows, each with its prices over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// The day the list was last checked; of two catalogues, the later one is in force.
    pub as_of: NaiveDate,
    /// Where the prices come from, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The models.
    pub models: Vec<ModelPrices>,
    /// What differs on each provider other than Anthropic (`bedrock`, `vertex`): its own prices
    /// and its regional premium. A provider not listed bills Anthropic's prices.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, ProviderPrices>,
}

/// A provider's prices where they differ from Anthropic's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderPrices {
    /// Where they come from, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The multiplier of a request served by a regional endpoint (any `inference_geo` but
    /// `global`), e.g. 1.1; none: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regional: Option<f64>,
    /// Models the regional multiplier does not apply to (older ones kept their prices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regional_except: Vec<String>,
    /// Models this provider prices otherwise than Anthropic (the shape of `models`); the
    /// others bill Anthropic's prices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelPrices>,
}

/// One model: its id, the other ids it answers to, and its prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrices {
    /// The API id, e.g. `claude-opus-5-5` (its dated ids and `-latest` find it too).
    pub model: String,
    /// A name for people, e.g. `Claude Opus 5.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other ids of the same model, e.g. `claude-opus-4-5` for `claude-opus-4-5-20251101`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Its prices, each in force from its `effective_from` to the next one's.
    pub prices: Vec<Price>,
}

/// Prices per million tokens, from an instant on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// In force for requests from this instant (a date is midnight UTC); none: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_from: Option<Since>,
    /// Uncached input.
    pub input: f64,
    /// Output (thinking included).
    pub output: f64,
    /// Writes to the 5-minute cache; 1.25 × `input` when not given. (`cache_write`, the name
    /// of earlier versions, is read as this.)
    #[serde(
        default,
        alias = "cache_write",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write_5m: Option<f64>,
    /// Writes to the 1-hour cache; 2 × `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Cache reads; 0.1 × `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Prices of requests whose prompt (input + cache reads + cache writes) is over a number of
    /// tokens, for every token of the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bands: Vec<Band>,
    /// Prices when the answer says `usage.speed` is `"fast"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<Rates>,
    /// Multipliers by `usage.inference_geo`, e.g. `{"us": 1.1}`; 1 for any other region.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inference_geo: BTreeMap<String, f64>,
    /// The long-context premium as earlier versions wrote it: read as a band.
    #[serde(default, skip_serializing)]
    long_context: Option<LongContext>,
}

/// Prices over a prompt length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Applies to requests with more prompt tokens than this.
    pub above_prompt_tokens: u64,
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// 5-minute cache writes; the base rate scaled like `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<f64>,
    /// 1-hour cache writes; likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Cache reads; likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

impl Band {
    /// Its rates.
    pub fn rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
            cache_read: self.cache_read,
        }
    }
}

/// Rates that replace a price's own (a band's, fast mode's): cache rates not given are the
/// replaced ones scaled like `input`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Uncached input.
    pub input: f64,
    /// Output.
    pub output: f64,
    /// 5-minute cache writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m: Option<f64>,
    /// 1-hour cache writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h: Option<f64>,
    /// Cache reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongContext {
    above_input_tokens: u64,
    input: f64,
    output: f64,
    #[serde(default)]
    cache_write: Option<f64>,
    #[serde(default)]
    cache_write_1h: Option<f64>,
    #[serde(default)]
    cache_read: Option<f64>,
}

/// The five rates of one request, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub input: f64,
    pub output: f64,
    pub write_5m: f64,
    pub write_1h: f64,
    pub read: f64,
}

impl Resolved {
    /// `rates` in place of these: what `rates` does not give is scaled like `input`.
    fn replaced_by(self, rates: &Rates) -> Self {
        let scale = if self.input > 0.0 {
            rates.input / self.input
        } else {
            1.0
        };
        Self {
            input: rates.input,
            output: rates.output,
            write_5m: rates.cache_write_5m.unwrap_or(self.write_5m * scale),
            write_1h: rates.cache_write_1h.unwrap_or(self.write_1h * scale),
            read: rates.cache_read.unwrap_or(self.read * scale),
        }
    }

    /// Every rate times `factor`.
    pub(crate) fn times(self, factor: f64) -> Self {
        Self {
            input: self.input * factor,
            output: self.output * factor,
            write_5m: self.write_5m * factor,
            write_1h: self.write_1h * factor,
            read: self.read * factor,
        }
    }
}

impl Price {
    /// A price of `input` and `output` with the usual cache multipliers.
    #[cfg(test)]
    pub fn new(input: f64, output: f64) -> Self {
        Self {
            effective_from: None,
            input,
            output,
            cache_write_5m: None,
            cache_write_1h: None,
            cache_read: None,
            bands: Vec::new(),
            fast: None,
            inference_geo: BTreeMap::new(),
            long_context: None,
        }
    }

    /// The base rates, with the defaults filled in.
    pub fn base(&self) -> Resolved {
        Resolved {
            input: self.input,
            output: self.output,
            write_5m: self.cache_write_5m.unwrap_or(1.25 * self.input),
            write_1h: self.cache_write_1h.unwrap_or(2.0 * self.input),
            read: self.cache_read.unwrap_or(0.1 * self.input),
        }
    }

    /// The rates of a request with `prompt_tokens`, at `fast` speed or not, run in
    /// `inference_geo`.
    pub fn rates(&self, prompt_tokens: u64, fast: bool, inference_geo: Option<&str>) -> Resolved {
        let base = self.base();
        let mut rates = self
            .bands
            .iter()
            .filter(|band| prompt_tokens > band.above_prompt_tokens)
            .max_by_key(|band| band.above_prompt_tokens)
            .map_or(base, |band| base.replaced_by(&band.rates()));
        if fast {
            if let Some(fast) = &self.fast {
                rates = rates.replaced_by(fast);
            }
        }
        let geo = inference_geo
            .and_then(|geo| self.inference_geo.get(geo))
            .copied()
            .unwrap_or(1.0);
        rates.times(geo)
    }

    /// Read an older format's `long_context` as a band, and check every number.
    pub(crate) fn normalize(&mut self, at: &dyn fmt::Display) -> Result<(), CatalogueError> {
        if let Some(premium) = self.long_context.take() {
            self.bands.push(Band {
                above_prompt_tokens: premium.above_input_tokens,
                input: premium.input,
                output: premium.output,
                cache_write_5m: premium.cache_write,
                cache_write_1h: premium.cache_write_1h,
                cache_read: premium.cache_read,
            });
        }
        check_rates(
            at,
            &[
                ("input", Some(self.input)),
                ("output", Some(self.output)),
                ("cache_write_5m", self.cache_write_5m),
                ("cache_write_1h", self.cache_write_1h),
                ("cache_read", self.cache_read),
            ],
        )?;
        self.bands.sort_by_key(|band| band.above_prompt_tokens);
        for pair in self.bands.windows(2) {
            if pair[0].above_prompt_tokens == pair[1].above_prompt_tokens {
                return Err(CatalogueError::new(format!(
                    "{at}: two bands start above {} prompt tokens",
                    pair[0].above_prompt_tokens
                )));
            }
        }
        for band in &self.bands {
            let at = format!(
                "{at}, band above {} prompt tokens",
                band.above_prompt_tokens
            );
            band.rates().check(&at)?;
        }
        if let Some(fast) = &self.fast {
            fast.check(&format!("{at}, fast"))?;
        }
        for (geo, multiplier) in &self.inference_geo {
            if !multiplier.is_finite() || *multiplier <= 0.0 {
                return Err(CatalogueError::new(format!(
                    "{at}: the `inference_geo` multiplier of `{geo}` is {multiplier}; it must be a number over 0"
                )));
            }
        }
        Ok(())
    }
}

impl Rates {
    fn check(&self, at: &dyn fmt::Display) -> Result<(), CatalogueError> {
        check_rates(
            at,
            &[
                ("input", Some(self.input)),
                ("output", Some(self.output)),
                ("cache_write_5m", self.cache_write_5m),
                ("cache_write_1h", self.cache_write_1h),
                ("cache_read", self.cache_read),
            ],
        )
    }
}

fn check_rates(at: &dyn fmt::Display, rates: &[(&str, Option<f64>)]) -> Result<(), CatalogueError> {
    for (name, rate) in rates {
        if let Some(rate) = rate {
            if !rate.is_finite() || *rate < 0.0 {
                return Err(CatalogueError::new(format!(
                    "{at}: `{name}` is {rate}; a price is dollars per million tokens, 0 or more"
                )));
            }
        }
    }
    Ok(())
}

/// When a price comes into force: a date (midnight UTC) or an RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Since(pub DateTime<Utc>);

impl Since {
    fn parse(text: &str) -> Option<Self> {
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Some(Self(day.and_time(chrono::NaiveTime::MIN).and_utc()));
        }
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| Self(at.with_timezone(&Utc)))
    }
}

impl fmt::Display for Since {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.time() == chrono::NaiveTime::MIN {
            write!(f, "{}", self.0.format("%Y-%m-%d"))
        } else {
            write!(
                f,
                "{}",
                self.0.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )
        }
    }
}

impl Serialize for Since {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Since {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`effective_from` is \"{text}\"; write a date (2026-10-07) or an RFC 3339 instant (2026-10-07T00:00:00Z)"
            ))
        })
    }
}

/// Why a catalogue (or a price override) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CatalogueError(String);

impl CatalogueError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Catalogue {
    /// The built-in catalogue: the prices of the day this version was released.
    pub fn built_in() -> Self {
        Self::parse(BUILT_IN).expect("the built-in catalogue is valid (a test checks it)")
    }

    /// Read and check a catalogue; the error names the problem and where it is.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let mut catalogue: Catalogue = serde_json::from_str(text)
            .map_err(|error| CatalogueError::new(format!("not a price catalogue: {error}")))?;
        catalogue.check()?;
        Ok(catalogue)
    }

    /// Check what serde cannot: the version, the ids, the numbers, the dates.
    fn check(&mut self) -> Result<(), CatalogueError> {
        if self.format != FORMAT {
            return Err(CatalogueError::new(format!(
                "the catalogue's `format` is {}; this version reads format {FORMAT}",
                self.format
            )));
        }
        if self.models.is_empty() {
            return Err(CatalogueError::new("the catalogue lists no model"));
        }
        check_models(&mut self.models, "models")?;
        for (name, provider) in &mut self.providers {
            check_id(name)
                .map_err(|problem| CatalogueError::new(format!("providers: {problem}")))?;
            if let Some(regional) = provider.regional {
                if !regional.is_finite() || regional <= 0.0 {
                    return Err(CatalogueError::new(format!(
                        "providers.{name}: `regional` is {regional}; it must be a number over 0"
                    )));
                }
            }
            for id in &provider.regional_except {
                check_id(id).map_err(|problem| {
                    CatalogueError::new(format!("providers.{name}.regional_except: {problem}"))
                })?;
            }
            if !provider.models.is_empty() {
                check_models(&mut provider.models, &format!("providers.{name}.models"))?;
            }
        }
        Ok(())
    }

    /// The catalogue as stored and printed: indented JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Check a list of models: their ids, their prices in order, no id twice.
fn check_models(models: &mut [ModelPrices], list: &str) -> Result<(), CatalogueError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (index, model) in models.iter_mut().enumerate() {
        let at = format!("{list}[{index}] ({})", model.model);
        for id in std::iter::once(&model.model).chain(&model.aliases) {
            check_id(id).map_err(|problem| CatalogueError::new(format!("{at}: {problem}")))?;
        }
        if model.prices.is_empty() {
            return Err(CatalogueError::new(format!("{at}: `prices` is empty")));
        }
        for (number, price) in model.prices.iter_mut().enumerate() {
            price.normalize(&format_args!("{at}, prices[{number}]"))?;
        }
        model.prices.sort_by_key(|price| price.effective_from);
        for pair in model.prices.windows(2) {
            if pair[0].effective_from == pair[1].effective_from {
                let from = pair[0]
                    .effective_from
                    .map_or_else(|| "always".to_owned(), |from| from.to_string());
                return Err(CatalogueError::new(format!(
                    "{at}: two prices are in force from {from}; give each its own `effective_from`"
                )));
            }
        }
    }
    for model in models.iter() {
        for id in std::iter::once(&model.model).chain(&model.aliases) {
            if let Some(other) = seen.insert(id, &model.model) {
                return Err(CatalogueError::new(format!(
                    "the id `{id}` is listed twice (for `{other}` and for `{}`); each id prices one model",
                    model.model
                )));
            }
        }
    }
    Ok(())
}

/// A model id must be one whole id: no blanks, no wildcard, no `[1m]`-style suffix.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an id is empty".into());
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '*' | '[' | ']'))
    {
        return Err(format!(
            "the id `{id}` is not one whole model id (no blanks, `*` or `[…]`)"
        ));
    }
    Ok(())
}

/// The built-in catalogue's text.
pub const BUILT_IN: &str = include_str!("catalogue.json");

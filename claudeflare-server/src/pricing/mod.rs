//! Cost estimates. Prices are data: a catalogue ([`Catalogue`], JSON) that ships built in, that
//! `pricing update` and `pricing_url` replace at run time through the database, and that the
//! config file's `pricing` overrides.
//!
//! A request is costed when it is recorded, at the prices in force at its time, and the cost is
//! stored with it: a later price never rewrites history. Its cost is that of the model that
//! served it (the answer's `model`), and when the answer lists `usage.iterations` (a server-side
//! fallback), each attempt is priced at its own model and the cost is their sum. Bands by
//! prompt length, fast mode and the region's multiplier are applied per attempt.
//!
//! Ids are matched whole: `claude-opus-5` is not `claude-opus-5-5`. A `[1m]` suffix (a Claude
//! Code selector) is taken off first, and a dated id or `-latest` finds its undated model. A
//! model no price is found for costs 0, is flagged (`price_known: false`), and is named once in
//! the log.

mod catalogue;
mod store;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use claudeflare_tower::{Billing, Iteration, RequestRecord, Usage};
use serde::{Deserialize, Serialize};

pub use catalogue::{Catalogue, CatalogueError, ModelPrices, Price};
pub use store::{Origin, keep_current, load_in_force, read_checked, shown, store};

/// What a request cost, and whether a price was found for all of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "WireCost")]
pub struct Cost {
    /// Estimated USD.
    pub usd: f64,
    /// False when some tokens were of a model without a price (and so counted as 0).
    pub known: bool,
}

impl Cost {
    /// Nothing to pay, and nothing unknown.
    pub const ZERO: Self = Self {
        usd: 0.0,
        known: true,
    };

    /// `usd`, priced.
    pub const fn priced(usd: f64) -> Self {
        Self { usd, known: true }
    }
}

/// A cost as the spill file holds it: a number (before prices could be unknown) or the whole.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireCost {
    Usd(f64),
    Whole { usd: f64, known: bool },
}

impl From<WireCost> for Cost {
    fn from(wire: WireCost) -> Self {
        match wire {
            WireCost::Usd(usd) => Self { usd, known: true },
            WireCost::Whole { usd, known } => Self { usd, known },
        }
    }
}

/// A catalogue, indexed by every id it prices.
#[derive(Debug)]
pub struct Table {
    catalogue: Catalogue,
    origin: Origin,
    ids: HashMap<String, usize>,
    /// Per provider, its own models' ids.
    provider_ids: HashMap<String, HashMap<String, usize>>,
}

static BUILT_IN: LazyLock<Arc<Table>> =
    LazyLock::new(|| Arc::new(Table::new(Catalogue::built_in(), Origin::BuiltIn)));

impl Table {
    /// Index `catalogue`, which came from `origin`.
    pub fn new(catalogue: Catalogue, origin: Origin) -> Self {
        let index = |models: &[ModelPrices]| {
            let mut ids = HashMap::new();
            for (index, model) in models.iter().enumerate() {
                for id in std::iter::once(&model.model).chain(&model.aliases) {
                    ids.insert(id.clone(), index);
                }
            }
            ids
        };
        let ids = index(&catalogue.models);
        let provider_ids = catalogue
            .providers
            .iter()
            .map(|(name, provider)| (name.clone(), index(&provider.models)))
            .collect();
        Self {
            catalogue,
            origin,
            ids,
            provider_ids,
        }
    }

    /// The built-in catalogue.
    pub fn built_in() -> Arc<Self> {
        Arc::clone(&BUILT_IN)
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Where it came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The model `id` names: the whole id, or the model of a dated id or `-latest`.
    fn model(&self, id: &str) -> Option<&ModelPrices> {
        let index = lookup(&self.ids, id)?;
        self.catalogue.models.get(index)
    }

    /// The model `id` names on `provider`: its own price when it lists one, else Anthropic's.
    fn model_on(&self, provider: Option<&str>, id: &str) -> Option<&ModelPrices> {
        let own = provider.and_then(|name| {
            let index = lookup(self.provider_ids.get(name)?, id)?;
            self.catalogue.providers.get(name)?.models.get(index)
        });
        own.or_else(|| self.model(id))
    }

    /// The regional multiplier of `provider` for `model` served in `geo`.
    fn regional(&self, provider: Option<&str>, model: &str, geo: Option<&str>) -> Option<f64> {
        let prices = self.catalogue.providers.get(provider?)?;
        if geo.is_none_or(|geo| geo == "global") {
            return Some(1.0);
        }
        let model = self.model(model).map_or(model, |m| m.model.as_str());
        if prices.regional_except.iter().any(|id| id == model) {
            return Some(1.0);
        }
        Some(prices.regional.unwrap_or(1.0))
    }
}

/// The index of `id` in `ids`: the whole id, or its undated form.
fn lookup(ids: &HashMap<String, usize>, id: &str) -> Option<usize> {
    ids.get(id)
        .or_else(|| undated(id).and_then(|id| ids.get(id)))
        .copied()
}

/// The price of `prices` in force at `at`: the last one that started by then.
fn in_force(prices: &[Price], at: DateTime<Utc>) -> Option<&Price> {
    prices
        .iter()
        .rev()
        .find(|price| price.effective_from.is_none_or(|from| from.0 <= at))
}

/// `model` as the catalogue names it: without a `[…]` suffix (`claude-opus-5-5[1m]`: a Claude
/// Code selector, same price), and a cloud's id as Anthropic's (Bedrock's
/// `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, Vertex's `claude-sonnet-4-5@20250929`).
fn selector_off(model: &str) -> Cow<'_, str> {
    let model = model.trim();
    // Anthropic's own ids have none of these: they are taken as they are, without the
    // substring searches below (about 1,600 instructions a request; callgrind).
    if !model.bytes().any(|b| matches!(b, b'[' | b'.' | b'@')) {
        return Cow::Borrowed(model);
    }
    let model = match model.find('[') {
        Some(at) if model.ends_with(']') => &model[..at],
        _ => model,
    };
    // Bedrock: a geography's or `global.` prefix, `anthropic.`, and a `-v1:0` version.
    let bedrock = model
        .split_once("anthropic.")
        .filter(|(prefix, _)| prefix.is_empty() || !prefix.trim_end_matches('.').contains('.'))
        .map(|(_, id)| id);
    let model = match bedrock {
        Some(id) => match id.rsplit_once("-v") {
            Some((id, version)) if version.bytes().all(|b| b.is_ascii_digit() || b == b':') => id,
            _ => id,
        },
        None => model,
    };
    if model.contains('@') {
        Cow::Owned(model.replace('@', "-"))
    } else {
        Cow::Borrowed(model)
    }
}

/// The undated id of a dated one (`-YYYYMMDD`) or of `-latest`.
fn undated(id: &str) -> Option<&str> {
    if let Some(id) = id.strip_suffix("-latest") {
        return Some(id);
    }
    match id.rsplit_once('-') {
        Some((id, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => Some(id),
        _ => None,
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The config file's `pricing`: whole ids, or patterns with `*`.
#[derive(Debug, Default)]
struct Overrides {
    exact: HashMap<String, Price>,
    /// Most specific (most characters other than `*`) first.
    patterns: Vec<(String, Price)>,
}

impl Overrides {
    fn new(overrides: &BTreeMap<String, Price>) -> Self {
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        for (key, price) in overrides {
            let mut price = price.clone();
            // Checked when the configuration was read; a bad one is left out, not guessed at.
            if price.normalize(&key).is_err() {
                continue;
            }
            let key = selector_off(key).into_owned();
            if key.contains('*') {
                patterns.push((key, price));
            } else {
                exact.insert(key, price);
            }
        }
        patterns.sort_by_key(|(key, _)| std::cmp::Reverse(key.replace('*', "").len()));
        Self { exact, patterns }
    }

    fn price(&self, id: &str, at: DateTime<Utc>) -> Option<&Price> {
        let found = self
            .exact
            .get(id)
            .or_else(|| undated(id).and_then(|id| self.exact.get(id)))
            .or_else(|| {
                self.patterns
                    .iter()
                    .find(|(pattern, _)| glob(pattern, id))
                    .map(|(_, price)| price)
            })?;
        found
            .effective_from
            .is_none_or(|from| from.0 <= at)
            .then_some(found)
    }
}

/// Check the config file's `pricing` overrides: the numbers, and keys that are whole ids or
/// patterns with `*`.
pub fn check_overrides(overrides: &BTreeMap<String, Price>) -> Result<(), CatalogueError> {
    for (key, price) in overrides {
        if key.trim().is_empty() {
            return Err(CatalogueError::new("`pricing` has an empty model id"));
        }
        price
            .clone()
            .normalize(&format_args!("`pricing` of `{key}`"))?;
    }
    Ok(())
}

/// Prices in force: a catalogue with the configuration's overrides on top, which win.
#[derive(Debug)]
pub struct Pricing {
    table: Arc<Table>,
    overrides: Overrides,
    warned: Mutex<HashSet<String>>,
}

impl Default for Pricing {
    fn default() -> Self {
        Self::new(Table::built_in(), &BTreeMap::new())
    }
}

impl Pricing {
    /// `table` with `overrides` on top.
    pub fn new(table: Arc<Table>, overrides: &BTreeMap<String, Price>) -> Self {
        Self {
            table,
            overrides: Overrides::new(overrides),
            warned: Mutex::default(),
        }
    }

    /// The catalogue under the overrides.
    #[cfg(test)]
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The price of `model` in force at `at`: an override's, else the catalogue's.
    #[cfg(test)]
    pub fn price(&self, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.price_on(None, model, at)
    }

    /// The price of `model` on `provider` (none: Anthropic) in force at `at`: an override's,
    /// else the provider's own, else Anthropic's.
    pub fn price_on(
        &self,
        provider: Option<&str>,
        model: &str,
        at: DateTime<Utc>,
    ) -> Option<&Price> {
        let id = selector_off(model);
        self.overrides.price(&id, at).or_else(|| {
            self.table
                .model_on(provider, &id)
                .and_then(|model| in_force(&model.prices, at))
        })
    }

    /// What `record` cost, at its time, provider, model and usage.
    pub fn cost(&self, record: &RequestRecord) -> Cost {
        self.cost_on(
            record.provider.as_deref(),
            record.model.as_deref(),
            &record.usage,
            &record.billing,
            record.timestamp,
        )
    }

    /// What `usage` served by `model` cost at `at`: each attempt of `billing.iterations` at
    /// its own model when the answer listed them, else the whole usage at `model`.
    #[cfg(test)]
    pub fn cost_of(
        &self,
        model: Option<&str>,
        usage: &Usage,
        billing: &Billing,
        at: DateTime<Utc>,
    ) -> Cost {
        self.cost_on(None, model, usage, billing, at)
    }

    /// What `usage` served by `model` on `provider` (none: Anthropic) cost at `at`: each
    /// attempt of `billing.iterations` at its own model when the answer listed them, else the
    /// whole usage at `model`; the provider's own prices and its regional premium.
    pub fn cost_on(
        &self,
        provider: Option<&str>,
        model: Option<&str>,
        usage: &Usage,
        billing: &Billing,
        at: DateTime<Utc>,
    ) -> Cost {
        let provider = provider.filter(|p| *p != "anthropic");
        if billing.iterations.is_empty() {
            return self.part(provider, model, usage, billing, at);
        }
        let fell_back = billing
            .iterations
            .iter()
            .any(|i| i.kind == Iteration::FALLBACK_MESSAGE);
        billing
            .iterations
            .iter()
            // An attempt declined before any output is not billed, its input neither.
            .filter(|i| !(fell_back && i.kind == "message" && i.usage.output_tokens == 0))
            .map(|i| {
                self.part(
                    provider,
                    i.model.as_deref().or(model),
                    &i.usage,
                    billing,
                    at,
                )
            })
            .fold(Cost::ZERO, |sum, part| Cost {
                usd: sum.usd + part.usd,
                known: sum.known && part.known,
            })
    }

    fn part(
        &self,
        provider: Option<&str>,
        model: Option<&str>,
        usage: &Usage,
        billing: &Billing,
        at: DateTime<Utc>,
    ) -> Cost {
        if *usage == Usage::default() {
            return Cost::ZERO;
        }
        let Some(price) = model.and_then(|model| self.price_on(provider, model, at)) else {
            self.warn_unknown(model.unwrap_or_default());
            return Cost {
                usd: 0.0,
                known: false,
            };
        };
        let prompt = usage
            .input_tokens
            .saturating_add(usage.cache_read_input_tokens)
            .saturating_add(usage.cache_creation_input_tokens);
        let fast = billing.speed.as_deref() == Some("fast");
        let geo = billing.inference_geo.as_deref();
        // A cloud prices its regions its own way; Anthropic by the model's `inference_geo`.
        let rates = match model.and_then(|m| self.table.regional(provider, &selector_off(m), geo)) {
            Some(multiplier) => price.rates(prompt, fast, None).times(multiplier),
            None => price.rates(prompt, fast, geo),
        };
        let per_token = |tokens: u64, per_million: f64| tokens as f64 * per_million / 1_000_000.0;
        Cost {
            usd: per_token(usage.input_tokens, rates.input)
                + per_token(usage.output_tokens, rates.output)
                + per_token(usage.cache_creation_5m_input_tokens(), rates.write_5m)
                + per_token(usage.cache_creation_1h_input_tokens, rates.write_1h)
                + per_token(usage.cache_read_input_tokens, rates.read),
            known: true,
        }
    }

    fn warn_unknown(&self, model: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.insert(model.to_owned()) {
            tracing::warn!(
                model,
                "no price known for this model; its cost counts as 0 (run `claudeflare-server pricing update FILE|URL`, or add it under `pricing` in the config file)"
            );
        }
    }
}

#[cfg(test)]
mod tests;

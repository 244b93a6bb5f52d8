//! [`ModelMap`]: which models an account serves, and the name each goes upstream as.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `PATTERN=MODEL` pairs, in order: a request for a model goes upstream as the `MODEL` of the
/// first `PATTERN` (a glob: `*` any run of characters, `?` one) that matches it. An account
/// with a map serves only the models it matches; an empty map serves every model unchanged.
///
/// ```
/// use claudeflare_tower::ModelMap;
/// let map: ModelMap = "claude-opus-*=glm-4.6,claude-*=glm-4.5-air".parse().unwrap();
/// assert_eq!(map.target("claude-opus-5"), Some("glm-4.6"));
/// assert_eq!(map.target("claude-haiku-4-5"), Some("glm-4.5-air"));
/// assert_eq!(map.target("gpt-5"), None);
/// assert_eq!(map.to_string(), "claude-opus-*=glm-4.6,claude-*=glm-4.5-air");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: glob::Pattern,
    model: String,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.model == other.model
    }
}

impl Eq for Rule {}

/// One `pattern` → `model` pair, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    /// The glob the requested model is matched against.
    pub pattern: String,
    /// The model sent upstream instead.
    pub model: String,
}

/// A map that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid model map `{map}`: {problem} (expected PATTERN=MODEL pairs separated by commas, e.g. `claude-opus-*=glm-4.6,claude-*=glm-4.5-air`)"
)]
pub struct InvalidModelMap {
    map: String,
    problem: String,
}

impl ModelMap {
    /// Whether it maps nothing (the account serves every model, unchanged).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The upstream name of `model`, when the map serves it. An empty map serves every model as
    /// it is.
    pub fn target<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        if self.rules.is_empty() {
            return Some(model);
        }
        self.rules
            .iter()
            .find(|rule| rule.pattern.matches(model))
            .map(|rule| rule.model.as_str())
    }

    /// Whether an account with this map can take a request for `model` (`None`: the request
    /// names none, which only an account without a map takes).
    pub fn serves(&self, model: Option<&str>) -> bool {
        match model {
            _ if self.rules.is_empty() => true,
            Some(model) => self.target(model).is_some(),
            None => false,
        }
    }

    /// The pairs, in order.
    pub fn entries(&self) -> Vec<MapEntry> {
        self.rules
            .iter()
            .map(|rule| MapEntry {
                pattern: rule.pattern.as_str().to_owned(),
                model: rule.model.clone(),
            })
            .collect()
    }

    /// A map of these pairs.
    pub fn from_entries(entries: &[MapEntry]) -> Result<Self, InvalidModelMap> {
        let text = entries
            .iter()
            .map(|e| format!("{}={}", e.pattern, e.model))
            .collect::<Vec<_>>()
            .join(",");
        text.parse()
    }

    /// `body` (a JSON request) with its top-level `model` renamed by the map, or `None` when
    /// nothing changes (no map, no model, a model the map sends as it is, or a body that is not
    /// a JSON object).
    pub fn rewrite(&self, body: &[u8]) -> Option<Bytes> {
        if self.rules.is_empty() {
            return None;
        }
        // The conversation is kept as raw JSON: only the top level is parsed.
        let mut object: BTreeMap<Cow<'_, str>, &RawValue> = serde_json::from_slice(body).ok()?;
        let requested: Cow<'_, str> = serde_json::from_str(object.get("model")?.get()).ok()?;
        let target = self.target(&requested)?;
        if target == requested {
            return None;
        }
        let renamed = serde_json::value::to_raw_value(target).ok()?;
        object.insert(Cow::Borrowed("model"), &renamed);
        serde_json::to_vec(&object).ok().map(Bytes::from)
    }
}

impl FromStr for ModelMap {
    type Err = InvalidModelMap;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |problem: String| InvalidModelMap {
            map: text.to_owned(),
            problem,
        };
        let mut rules = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((pattern, model)) = pair.split_once('=') else {
                return Err(invalid(format!("`{pair}` has no `=`")));
            };
            let (pattern, model) = (pattern.trim(), model.trim());
            if pattern.is_empty() || model.is_empty() {
                return Err(invalid(format!("`{pair}` needs a pattern and a model")));
            }
            let pattern = glob::Pattern::new(pattern)
                .map_err(|e| invalid(format!("pattern `{pattern}`: {e}")))?;
            rules.push(Rule {
                pattern,
                model: model.to_owned(),
            });
        }
        Ok(Self { rules })
    }
}

impl fmt::Display for ModelMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={}", rule.pattern.as_str(), rule.model)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_pattern_wins() {
        let map: ModelMap = "claude-opus-*=glm-4.6, claude-*=glm-4.5-air"
            .parse()
            .unwrap();
        assert_eq!(map.target("claude-opus-4-7"), Some("glm-4.6"));
        assert_eq!(map.target("claude-sonnet-5"), Some("glm-4.5-air"));
        assert!(!map.serves(Some("gpt-5")));
        assert!(!map.serves(None));
        assert!(ModelMap::default().serves(None));
        assert_eq!(ModelMap::from_entries(&map.entries()).unwrap(), map);
        for bad in ["claude-*", "=glm", "claude-[=glm"] {
            let error = bad.parse::<ModelMap>().unwrap_err().to_string();
            assert!(error.contains("PATTERN=MODEL"), "{error}");
        }
    }

    #[test]
    fn only_the_top_level_model_is_renamed() {
        let map: ModelMap = "claude-*=glm-4.6".parse().unwrap();
        let body = br#"{"model":"claude-opus-5","max_tokens":5,"messages":[{"role":"user","content":"say \"model\": claude-x"}],"metadata":{"model":"keep"}}"#;
        let rewritten = map.rewrite(body).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&rewritten).unwrap();
        assert_eq!(value["model"], "glm-4.6");
        assert_eq!(value["metadata"]["model"], "keep");
        assert_eq!(
            value["messages"][0]["content"], "say \"model\": claude-x",
            "the conversation is untouched"
        );
        assert_eq!(map.rewrite(br#"{"model":"glm-4.6"}"#), None, "not matched");
        assert_eq!(map.rewrite(b"not json"), None);
        assert_eq!(ModelMap::default().rewrite(body), None);
    }
}

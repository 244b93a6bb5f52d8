//! Configuration files written by earlier versions: their default OAuth URLs stopped working in
//! June 2026 (Anthropic moved them to `platform.claude.com`), and a default a user never chose must not leave them stuck.

use std::path::Path;

use super::{ConfigError, write_atomically};

/// Today's OAuth endpoints (moved to `platform.claude.com` in June 2026).
const OAUTH_DEFAULTS: [(&str, &str); 4] = [
    (
        "oauth_token_url",
        claudeflare_tower::Anthropic::DEFAULT_TOKEN_URL,
    ),
    (
        "oauth_authorize_url_max",
        "https://claude.com/cai/oauth/authorize",
    ),
    (
        "oauth_authorize_url_console",
        "https://platform.claude.com/oauth/authorize",
    ),
    (
        "oauth_redirect_uri",
        "https://platform.claude.com/oauth/code/callback",
    ),
];

/// Defaults of earlier versions that stopped working (the old token URL answers 404 to every
/// grant since June 2026): a file holding one of them holds a default, not a choice, and gets
/// today's.
const OLD_DEFAULTS: [(&str, &str); 4] = [
    (
        "oauth_token_url",
        "https://console.anthropic.com/v1/oauth/token",
    ),
    (
        "oauth_authorize_url_max",
        "https://claude.ai/oauth/authorize",
    ),
    (
        "oauth_authorize_url_console",
        "https://console.anthropic.com/oauth/authorize",
    ),
    (
        "oauth_redirect_uri",
        "https://console.anthropic.com/oauth/code/callback",
    ),
];

/// Today's default for `key` if `value` is an old default of it.
pub(super) fn upgraded(key: &str, value: &str) -> Option<&'static str> {
    OLD_DEFAULTS
        .iter()
        .any(|(old_key, old)| *old_key == key && value.trim_end_matches('/') == *old)
        .then(|| {
            OAUTH_DEFAULTS
                .iter()
                .find(|(new_key, _)| *new_key == key)
                .map(|(_, new)| *new)
        })
        .flatten()
}

pub(super) fn oauth_default(key: &str) -> String {
    OAUTH_DEFAULTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| (*v).to_owned())
        .unwrap_or_default()
}

/// Replace the defaults of earlier versions that no longer work (the `console.anthropic.com`
/// OAuth URLs) in the file at `path` with today's, atomically. Values a user chose are kept.
/// Returns the keys replaced (none when the file holds no old default, or is not a JSON object:
/// [`super::load`] reports that).
pub fn upgrade_file(path: &Path) -> Result<Vec<&'static str>, ConfigError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(&text) else {
        return Ok(Vec::new());
    };
    let mut replaced = Vec::new();
    for (key, _) in OLD_DEFAULTS {
        let today = map
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|value| upgraded(key, value));
        if let Some(today) = today {
            map.insert(key.to_owned(), serde_json::Value::from(today));
            replaced.push(key);
        }
    }
    if !replaced.is_empty() {
        let text =
            serde_json::to_string_pretty(&serde_json::Value::Object(map)).unwrap_or_default();
        write_atomically(path, &text)?;
    }
    Ok(replaced)
}

/// The one line that says the file was upgraded.
pub fn upgrade_message(path: &Path, keys: &[&str]) -> String {
    format!(
        "{}: replaced the pre-June-2026 OAuth defaults of {} (console.anthropic.com answers 404 since) with today's platform.claude.com ones",
        path.display(),
        keys.join(", ")
    )
}

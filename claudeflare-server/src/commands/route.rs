//! The settings of an account beyond its credential: its provider, priority, model map and
//! egress proxy (`add … --provider --base-url --auth-header --priority --model-map --proxy`,
//! and `edit`).

use anyhow::{Context as _, bail};
use claudeflare_tower::provider::AuthStyle;
use claudeflare_tower::{Backend, EgressProxy, ModelMap, Route};
use http::Uri;

use crate::cli::{AuthHeaderArg, ProviderArg, RouteArgs};
use crate::db::accounts;

/// What `add` was told about the account's provider.
#[derive(Debug, Clone)]
pub struct Adding {
    /// `--provider`.
    pub provider: ProviderArg,
    /// `--base-url`.
    pub base_url: Option<String>,
    /// `--auth-header`.
    pub auth_header: Option<AuthHeaderArg>,
    /// `--priority`, `--model-map`, `--proxy`.
    pub route: RouteArgs,
}

impl Adding {
    /// Whether the account is a compatible backend's.
    pub fn compatible(&self) -> bool {
        self.provider == ProviderArg::AnthropicCompatible
    }

    /// The route of the new account.
    pub fn route(&self) -> anyhow::Result<Route> {
        let mut route = Route::default();
        if self.compatible() {
            let Some(base_url) = &self.base_url else {
                bail!(
                    "--provider anthropic-compatible needs --base-url (the backend's API, e.g. https://api.z.ai/api/anthropic)"
                );
            };
            let auth = match self.auth_header {
                Some(AuthHeaderArg::Bearer) => AuthStyle::Bearer,
                _ => AuthStyle::XApiKey,
            };
            route.backend = Backend::Compatible {
                base_url: base_url_of(base_url)?,
                auth,
            };
        } else if self.base_url.is_some() || self.auth_header.is_some() {
            bail!(
                "--base-url and --auth-header are for --provider anthropic-compatible (Anthropic's own URL is the config's upstream_url)"
            );
        }
        apply(&mut route, &self.route)?;
        Ok(route)
    }
}

/// A compatible backend's base URL: https, or http to this machine (a local model server, a
/// test mock). Plain http elsewhere would send the key in clear.
pub fn base_url_of(text: &str) -> anyhow::Result<Uri> {
    let text = text.trim();
    let uri: Uri = text
        .parse()
        .with_context(|| format!("--base-url `{text}` is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => bail!(
            "--base-url `{text}`: plain http would send the key in clear; use https (http is accepted on loopback only)"
        ),
        _ => bail!("--base-url `{text}` must be an https:// URL (or http:// on loopback)"),
    }
    if uri.query().is_some() {
        bail!("--base-url `{text}` must not have a query");
    }
    Ok(uri)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Put `--priority`, `--model-map` and `--proxy` (`none` removes) on `route`.
fn apply(route: &mut Route, args: &RouteArgs) -> anyhow::Result<()> {
    if let Some(priority) = args.priority {
        route.priority = priority;
    }
    if let Some(map) = &args.model_map {
        route.model_map = if map.trim() == "none" {
            ModelMap::default()
        } else {
            map.parse()?
        };
    }
    if let Some(group) = &args.group {
        let group = group.trim();
        route.group = match group {
            "none" => None,
            "" => bail!("--group needs a name (or `none`)"),
            _ if group.contains(',') || group.chars().any(char::is_control) => bail!(
                "--group `{}`: a name without commas or control characters",
                group.escape_default()
            ),
            _ => Some(group.to_owned()),
        };
    }
    if let Some(proxy) = &args.proxy {
        route.proxy = if proxy.trim() == "none" {
            None
        } else {
            Some(proxy.parse::<EgressProxy>()?)
        };
    }
    Ok(())
}

/// `edit NAME [--priority N] [--model-map MAP|none] [--proxy URL|none] [--group G|none]
/// [--base-url URL]`.
pub async fn edit(name: &str, base_url: Option<String>, args: RouteArgs) -> anyhow::Result<()> {
    if base_url.is_none()
        && args.priority.is_none()
        && args.model_map.is_none()
        && args.proxy.is_none()
        && args.group.is_none()
    {
        bail!("nothing to change: pass --priority, --model-map, --proxy, --group or --base-url");
    }
    let context = super::open().await?;
    let model = accounts::find(&context.db, name).await?;
    let account = accounts::to_account(&model, &context.cipher)?;
    let mut route = account.route.clone();
    if let Some(base_url) = base_url {
        let Backend::Compatible { auth, .. } = &route.backend else {
            bail!(
                "`{}` is an {} account: --base-url is for anthropic-compatible ones",
                model.name,
                route.backend.name()
            );
        };
        route.backend = Backend::Compatible {
            base_url: base_url_of(&base_url)?,
            auth: *auth,
        };
    }
    apply(&mut route, &args)?;
    accounts::set_route(&context.db, &context.cipher, &model.id, &route).await?;
    println!("Changed `{}`: {}.", model.name, describe(&route));
    Ok(())
}

/// The route in words, password hidden.
pub fn describe(route: &Route) -> String {
    let mut parts = vec![format!("provider {}", route.backend.name())];
    if let Some(base_url) = route.backend.base_url() {
        parts.push(format!("base URL {base_url}"));
    }
    parts.push(format!("priority {}", route.priority));
    if !route.model_map.is_empty() {
        parts.push(format!("model map {}", route.model_map));
    }
    if let Some(proxy) = &route.proxy {
        parts.push(format!("proxy {proxy}"));
    }
    if let Some(group) = &route.group {
        parts.push(format!("group {group}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_https_or_loopback_http() {
        assert!(base_url_of("https://api.z.ai/api/anthropic").is_ok());
        assert!(base_url_of("http://127.0.0.1:8000").is_ok());
        assert!(base_url_of("http://localhost:8000/v").is_ok());
        assert!(base_url_of("http://[::1]:8000").is_ok());
        let clear = base_url_of("http://api.example.com")
            .unwrap_err()
            .to_string();
        assert!(clear.contains("in clear"), "{clear}");
        assert!(base_url_of("ftp://x").is_err());
        assert!(base_url_of("https://x/?a=1").is_err());
    }
}

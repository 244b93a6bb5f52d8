//! The settings of an account beyond its credential: its provider, priority, model map and
//! egress proxy (`add … --provider --base-url --auth-header --priority --model-map --proxy`,
//! and `edit`).

use anyhow::{Context as _, bail};
use claudeflare_tower::{AuthStyle, Vertex};
use claudeflare_tower::{AwsKeys, Backend, Credentials, EgressProxy, ModelMap, Route};
use http::Uri;

use crate::cli::{AuthHeaderArg, CloudArgs, ProviderArg, RouteArgs};
use crate::db::accounts::{self, AwsSource};

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
    /// `--region`, `--project` and the cloud's credentials.
    pub cloud: Box<CloudArgs>,
}

impl Adding {
    /// Whether the account is on a cloud (Bedrock, Vertex AI).
    pub fn cloud(&self) -> bool {
        matches!(self.provider, ProviderArg::Bedrock | ProviderArg::Vertex)
    }

    /// Whether the account is a compatible backend's.
    pub fn compatible(&self) -> bool {
        self.provider == ProviderArg::AnthropicCompatible
    }

    /// The route of the new account.
    pub fn route(&self) -> anyhow::Result<Route> {
        let mut route = Route::default();
        if self.auth_header.is_some() && !self.compatible() {
            bail!("--auth-header is for --provider anthropic-compatible");
        }
        if self.cloud.any() && !self.cloud() {
            bail!(
                "--region, --project, --service-account-file and the --aws-… and --bedrock-api-key options are for --provider bedrock or vertex"
            );
        }
        let base_url = self.base_url.as_deref().map(base_url_of).transpose()?;
        let region = || {
            self.cloud
                .region
                .as_deref()
                .with_context(|| format!("--provider {} needs --region", self.provider_name()))
        };
        route.backend = match self.provider {
            ProviderArg::AnthropicCompatible => {
                let Some(base_url) = base_url else {
                    bail!(
                        "--provider anthropic-compatible needs --base-url (the backend's API, e.g. https://api.z.ai/api/anthropic)"
                    );
                };
                let auth = match self.auth_header {
                    Some(AuthHeaderArg::Bearer) => AuthStyle::Bearer,
                    _ => AuthStyle::XApiKey,
                };
                Backend::Compatible { base_url, auth }
            }
            ProviderArg::Bedrock => {
                if self.cloud.project.is_some() || self.cloud.service_account_file.is_some() {
                    bail!("--project and --service-account-file are for --provider vertex");
                }
                Backend::bedrock(region()?, base_url).map_err(|e| anyhow::anyhow!("{}", e.0))?
            }
            ProviderArg::Vertex => {
                let project =
                    self.cloud.project.as_deref().context(
                        "--provider vertex needs --project (the Google Cloud project id)",
                    )?;
                Backend::vertex(project, region()?, base_url)
                    .map_err(|e| anyhow::anyhow!("{}", e.0))?
            }
            ProviderArg::Anthropic if base_url.is_some() => bail!(
                "--base-url is for --provider anthropic-compatible, bedrock and vertex (Anthropic's own URL is the config's upstream_url)"
            ),
            ProviderArg::Anthropic => Backend::Anthropic,
        };
        apply(&mut route, &self.route)?;
        Ok(route)
    }

    fn provider_name(&self) -> &'static str {
        match self.provider {
            ProviderArg::Anthropic => "anthropic",
            ProviderArg::AnthropicCompatible => claudeflare_tower::Compatible::NAME,
            ProviderArg::Bedrock => claudeflare_tower::Bedrock::NAME,
            ProviderArg::Vertex => claudeflare_tower::Vertex::NAME,
        }
    }

    /// A cloud account's credentials, and for Bedrock where they come from: what `add` was
    /// given, checked (a profile is read, a service account's key file parsed).
    pub fn cloud_credentials(&self) -> anyhow::Result<(Credentials, Option<AwsSource>)> {
        let cloud = &self.cloud;
        if self.provider == ProviderArg::Vertex {
            if cloud.aws_access_key_id.is_some()
                || cloud.aws_secret_access_key.is_some()
                || cloud.aws_session_token.is_some()
                || cloud.aws_profile.is_some()
                || cloud.bedrock_api_key.is_some()
            {
                bail!("the --aws-… options and --bedrock-api-key are for --provider bedrock");
            }
            let path = cloud.service_account_file.as_ref().context(
                "--provider vertex needs --service-account-file (the service account's key file, JSON)",
            )?;
            let key = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let email = Vertex::check_service_account(&key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("Service account {email}.");
            return Ok((Credentials::service_account(key), None));
        }
        let keys = (&cloud.aws_access_key_id, &cloud.aws_secret_access_key);
        let given = [
            keys.0.is_some() || keys.1.is_some(),
            cloud.aws_profile.is_some(),
            cloud.bedrock_api_key.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!(
                "give one of --aws-access-key-id with --aws-secret-access-key, --aws-profile or --bedrock-api-key"
            );
        }
        if cloud.aws_session_token.is_some() && keys.0.is_none() {
            bail!("--aws-session-token goes with --aws-access-key-id and --aws-secret-access-key");
        }
        if let Some(key) = &cloud.bedrock_api_key {
            let key = key.trim();
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("--bedrock-api-key must be the key as Bedrock gave it, without spaces");
            }
            return Ok((
                Credentials::ApiKey(key.to_owned().into()),
                Some(AwsSource::ApiKey),
            ));
        }
        if let Some(name) = &cloud.aws_profile {
            let keys = crate::aws::from_profile(name)?;
            return Ok((
                Credentials::Aws(keys),
                Some(AwsSource::Profile(name.clone())),
            ));
        }
        match keys {
            (Some(id), Some(secret)) => Ok((
                Credentials::Aws(AwsKeys::new(
                    id.trim(),
                    secret.trim(),
                    cloud.aws_session_token.clone(),
                )),
                Some(AwsSource::Keys),
            )),
            (None, None) => {
                println!(
                    "No keys given: the server signs with its environment's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
                );
                Ok((
                    Credentials::ApiKey(String::new().into()),
                    Some(AwsSource::Environment),
                ))
            }
            _ => bail!("--aws-access-key-id and --aws-secret-access-key go together"),
        }
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
        let new = base_url_of(&base_url)?;
        match &mut route.backend {
            Backend::Compatible { base_url, .. }
            | Backend::Bedrock { base_url, .. }
            | Backend::Vertex { base_url, .. } => *base_url = new,
            other => bail!(
                "`{}` is an {} account: --base-url is for anthropic-compatible, bedrock and vertex ones",
                model.name,
                other.name()
            ),
        }
    }
    apply(&mut route, &args)?;
    accounts::set_route(&context.db, &context.cipher, &model.id, &route).await?;
    println!("Changed `{}`: {}.", model.name, describe(&route));
    Ok(())
}

/// The route in words, password hidden.
pub fn describe(route: &Route) -> String {
    let mut parts = vec![format!("provider {}", route.backend.name())];
    match &route.backend {
        Backend::Bedrock { region, .. } => parts.push(format!("region {region}")),
        Backend::Vertex {
            project, region, ..
        } => parts.push(format!("project {project}, region {region}")),
        _ => {}
    }
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

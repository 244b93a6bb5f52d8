//! AWS credentials for Bedrock accounts that do not store their own: a profile of the shared
//! credentials file, or the server's environment, read when the server loads the account.
//!
//! Only static keys are read (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`); a profile that gets its keys another way (`sso_session`,
//! `credential_process`, `role_arn`) is refused with a message saying so.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use claudeflare_tower::AwsKeys;

/// The keys of profile `name`: `[name]` of the credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
/// else `~/.aws/credentials`), else `[profile name]` of the config file (`AWS_CONFIG_FILE`,
/// else `~/.aws/config`).
pub fn from_profile(name: &str) -> anyhow::Result<AwsKeys> {
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = file("AWS_CONFIG_FILE", "config");
    let sections = [
        (credentials.as_ref(), name.to_owned()),
        (config.as_ref(), format!("profile {name}")),
        (config.as_ref(), name.to_owned()),
    ];
    let mut looked = Vec::new();
    for (path, section) in sections {
        let Some(path) = path else { continue };
        if !path.exists() {
            continue;
        }
        let ini = ini::Ini::load_from_file(path)
            .with_context(|| format!("reading the AWS file {}", path.display()))?;
        looked.push(path.display().to_string());
        let Some(properties) = ini.section(Some(section.as_str())) else {
            continue;
        };
        let get = |key: &str| properties.get(key).map(str::trim).filter(|v| !v.is_empty());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => {
                return Ok(AwsKeys::new(
                    id,
                    secret,
                    get("aws_session_token").map(str::to_owned),
                ));
            }
            _ if [
                "sso_session",
                "sso_start_url",
                "credential_process",
                "role_arn",
            ]
            .iter()
            .any(|key| get(key).is_some()) =>
            {
                bail!(
                    "AWS profile `{name}` gets its keys through SSO, a process or a role, which claudeflare does not run: give it static keys, or add the account with --aws-access-key-id and --aws-secret-access-key"
                );
            }
            _ => {}
        }
    }
    if looked.is_empty() {
        bail!(
            "AWS profile `{name}`: there is no AWS credentials or config file (~/.aws/credentials)"
        );
    }
    bail!(
        "AWS profile `{name}` has no aws_access_key_id and aws_secret_access_key in {}",
        looked.join(" or ")
    )
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
pub fn from_environment() -> anyhow::Result<AwsKeys> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(AwsKeys::new(id, secret, var("AWS_SESSION_TOKEN"))),
        _ => bail!(
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set in the server's environment"
        ),
    }
}

fn file(variable: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".aws").join(name))
}

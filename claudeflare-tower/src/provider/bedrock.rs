//! Claude on AWS Bedrock.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};

use super::anthropic;
use super::cloud::{self, CloudError, CloudTap};
use super::{
    Backend, Classification, InvalidUpstream, ModelMap, Outcome, Provider, RefreshError,
    StreamError, TokenPair, join_uri,
};
use crate::BoxFuture;
use crate::account::{AccountEntry, AccountInfo, AwsKeys, Credentials};

/// The provider's name in the API and the CLI.
pub(crate) const NAME: &str = "bedrock";

/// The paths Bedrock's Messages API serves, as the client sends them.
const PATHS: [&str; 2] = ["/v1/messages", "/v1/messages/count_tokens"];

/// Claude on AWS Bedrock.
///
/// Claude on AWS Bedrock, through the Messages API it serves natively at
/// `{base}/anthropic/v1/messages` (Claude Opus 4.7 and later), answering Anthropic's JSON and
/// SSE.
///
/// Each account carries its region and base URL in its [`Backend::Bedrock`] (by default
/// `https://bedrock-runtime.{region}.amazonaws.com`; a `bedrock-mantle` host works too), and
/// its credential: AWS keys ([`Credentials::Aws`]), with which every request is signed with
/// SigV4 (service `bedrock`, or `bedrock-mantle` on a mantle host), or a Bedrock API key,
/// sent as a bearer.
///
/// Requests keep Anthropic's shape with these changes: the model is Bedrock's id, the
/// account's [`ModelMap`] target or else `anthropic.` + the Anthropic id (map to an inference
/// profile, `global.anthropic.…` or `us.anthropic.…`, where the model needs one); the betas
/// move from the `anthropic-beta` header into the body's `anthropic_beta`, since Bedrock
/// refuses some in the header; and the `tags` field and its beta, which Bedrock refuses, are
/// left out. Only `/v1/messages` and `/v1/messages/count_tokens` are served.
///
/// Errors are AWS's (`x-amzn-errortype`, `{"message"}`): throttling and exhausted quotas bench
/// the account (Bedrock gives no retry hint, so for [`DEFAULT_COOLDOWN`](super::DEFAULT_COOLDOWN));
/// access denied takes it out of rotation with AWS's words; a refused signature or key makes
/// it need re-authentication; a model the account's region does not offer is refused for that
/// request only. The client gets Anthropic's envelope, without AWS's words (they name account
/// ids and ARNs; the log has them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bedrock;

impl Bedrock {
    /// The provider's name in the API, the CLI and records.
    pub const NAME: &str = NAME;

    /// The model id Bedrock gets for the Anthropic id `model`: the map's target, else
    /// `anthropic.` + `model` (an id that already names a Bedrock model goes as it is).
    /// `None` when the map does not serve it.
    pub fn model_id(map: &ModelMap, model: &str) -> Option<String> {
        if !map.is_empty() {
            return map.target(model).map(str::to_owned);
        }
        if model.contains("anthropic.") {
            return Some(model.to_owned());
        }
        Some(format!("anthropic.{model}"))
    }
}

/// Where the id says the model runs: `global`, a geography of a cross-region profile (`us`,
/// `eu`, …), or else (a model id in-region) the account's region.
fn geo_of(model: Option<&str>, region: &str) -> String {
    match model.and_then(|model| model.split_once(".anthropic.")) {
        Some((prefix, _)) if !prefix.contains(['.', ':', '/']) => prefix.to_owned(),
        _ => region.to_owned(),
    }
}

impl Provider for Bedrock {
    type Tap = CloudTap;

    fn prepare(
        &self,
        account: &AccountEntry,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<(), InvalidUpstream> {
        let route = account.route();
        let Backend::Bedrock { region, base_url } = &route.backend else {
            return Err(InvalidUpstream(format!(
                "account `{}` is not a {NAME} account",
                account.name()
            )));
        };
        let path = req.uri().path();
        if !PATHS.contains(&path) {
            return Err(InvalidUpstream(format!(
                "{NAME} serves /v1/messages, not {path}"
            )));
        }
        // Bedrock takes no query (`?beta=true`).
        let upstream: Uri = format!("/anthropic{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| InvalidUpstream(e.to_string()))?;
        *req.uri_mut() = join_uri(base_url, &upstream)?;
        let headers = req.headers_mut();
        anthropic::strip_client_credentials(headers);
        let betas = cloud::take_betas(headers);
        let body = cloud::rewrite_body(req, |body| {
            if let Some(model) = body.str("model") {
                let id = Bedrock::model_id(&route.model_map, &model).ok_or_else(|| {
                    InvalidUpstream(format!(
                        "account `{}` does not serve {model}",
                        account.name()
                    ))
                })?;
                body.set("model", id);
            }
            body.remove("tags");
            if !betas.is_empty() {
                body.set("anthropic_beta", &betas);
            }
            Ok(())
        })?;
        let keys = account
            .with_credentials(|credentials| match credentials {
                Credentials::Aws(keys) => Some(keys.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                InvalidUpstream(format!("account `{}` has no usable key", account.name()))
            })?;
        match keys {
            Some(keys) => sign_request(req, &body, &keys, region, service(base_url)),
            None => {
                let credential = account.credential(Credentials::bearer).ok_or_else(|| {
                    InvalidUpstream(format!("account `{}` has no usable key", account.name()))
                })?;
                req.headers_mut().insert(header::AUTHORIZATION, credential);
                Ok(())
            }
        }
    }

    fn needs_body(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        _headers: &HeaderMap,
    ) -> bool {
        status.is_client_error() || status.is_server_error()
    }

    fn classify(
        &self,
        _account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Classification {
        if !cloud::is_error(status) {
            return Classification::new(Outcome::Success);
        }
        let error = CloudError::read(headers, body);
        let outcome = match (status.as_u16(), error.kind.as_str()) {
            (_, "ModelNotReadyException") => Outcome::ServerError,
            (_, "ThrottlingException" | "ServiceQuotaExceededException" | "rate_limit_error")
            | (429, _) => return cloud::throttled(headers, now),
            (_, "AccessDeniedException" | "permission_error") => {
                return cloud::forbidden(error.reason(NAME, status));
            }
            (401, _)
            | (
                403,
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException",
            ) => Outcome::AuthFailed,
            (403, _) => return cloud::forbidden(error.reason(NAME, status)),
            // A model the region does not offer (or whose use-case form is missing), an id that
            // needs an inference profile: another account may serve it.
            (404, _) => Outcome::ScopedRefusal,
            (400, "ValidationException") if names_the_model(&error.message) => {
                Outcome::ScopedRefusal
            }
            (503 | 529, _) | (_, "ServiceUnavailableException" | "overloaded_error") => {
                Outcome::Overloaded
            }
            (408 | 424, _) | (500..=599, _) => Outcome::ServerError,
            _ => Outcome::ClientError,
        };
        Classification::new(outcome)
    }

    fn error_body(
        &self,
        account: &AccountEntry,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Bytes> {
        let error = CloudError::read(headers, Some(body));
        let too_long = status == StatusCode::BAD_REQUEST && error.message == cloud::INPUT_TOO_LONG;
        cloud::client_error(NAME, account.name(), status, &error, too_long)
    }

    fn classify_stream_error(
        &self,
        _account: &AccountEntry,
        error: &StreamError,
        now: DateTime<Utc>,
    ) -> Classification {
        anthropic::classify::classify_stream_error(error, now)
    }

    fn tap(&self, account: Option<&AccountEntry>, headers: &HeaderMap) -> CloudTap {
        let region =
            account.and_then(|account| account.route().backend.region().map(str::to_owned));
        CloudTap::new(headers, region, geo_of)
    }

    fn refresh<'a>(
        &'a self,
        _account: &'a AccountInfo,
        _refresh_token: &'a SecretString,
    ) -> BoxFuture<'a, Result<TokenPair, RefreshError>> {
        Box::pin(async {
            Err(RefreshError::Rejected(format!(
                "a {NAME} account has keys, not a token to refresh"
            )))
        })
    }
}

/// Whether a `ValidationException` is about the model (not offered on demand, an id Bedrock
/// does not know) rather than the request.
fn names_the_model(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("model identifier")
        || message.contains("on-demand throughput")
        || message.contains("inference profile")
}

/// The SigV4 service of a Bedrock host.
fn service(base_url: &Uri) -> &'static str {
    if base_url
        .host()
        .is_some_and(|host| host.starts_with("bedrock-mantle."))
    {
        "bedrock-mantle"
    } else {
        "bedrock"
    }
}

/// Sign `req` (its URL, `content-type` and `body`) with `keys` for `service` in `region`: the
/// `authorization`, `x-amz-date` and (for temporary keys) `x-amz-security-token` headers.
pub(crate) fn sign_request<B>(
    req: &mut Request<B>,
    body: &[u8],
    keys: &AwsKeys,
    region: &str,
    service: &str,
) -> Result<(), InvalidUpstream> {
    let identity = aws_credential_types::Credentials::new(
        keys.access_key_id.expose_secret(),
        keys.secret_access_key.expose_secret(),
        keys.session_token
            .as_ref()
            .map(|token| token.expose_secret().to_owned()),
        None,
        "claudeflare",
    )
    .into();
    let invalid = |error: &dyn std::fmt::Display| InvalidUpstream(format!("SigV4: {error}"));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| invalid(&e))?
        .into();
    let uri = req.uri().to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let signed = content_type
        .as_deref()
        .map(|value| ("content-type", value))
        .into_iter();
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri,
        signed,
        SignableBody::Bytes(body),
    )
    .map_err(|e| invalid(&e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| invalid(&e))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

//! What the cloud providers ([Bedrock](super::bedrock), [Vertex AI](super::vertex)) share:
//! the request body rewritten at its top level, the betas they take, their error bodies read
//! and answered in Anthropic's envelope, and usage read with the region it was served in.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::anthropic::{self, AnthropicTap, OAUTH_BETA};
use super::{
    Classification, DEFAULT_COOLDOWN, InvalidUpstream, Outcome, TapSummary, UsageTap, retry_after,
};

/// The beta flag of the top-level `tags` field, which the clouds refuse (as they refuse the
/// field).
pub(crate) const REQUEST_TAGS_BETA: &str = "request-tags-2026-08-21";

/// The message Claude Code's recovery (drop older images, then compact) matches whole, sent
/// for a cloud's "too long" refusal.
pub(crate) const INPUT_TOO_LONG: &str = "Input is too long.";

pub(crate) fn endpoint(url: &str) -> Result<Uri, InvalidUpstream> {
    url.parse()
        .map_err(|_| InvalidUpstream(format!("`{url}` is not a valid URL")))
}

/// A region name as the clouds spell them (`us-east-1`, `europe-west1`, `global`).
pub(crate) fn region(region: &str) -> Result<String, InvalidUpstream> {
    name(region, "region")
}

/// A Google Cloud project id.
pub(crate) fn project(project: &str) -> Result<String, InvalidUpstream> {
    name(project, "project")
}

fn name(value: &str, what: &str) -> Result<String, InvalidUpstream> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(InvalidUpstream(format!(
            "invalid {what} `{value}`: lowercase letters, digits and hyphens"
        )))
    }
}

/// A JSON request body's top level, each value kept as raw JSON.
pub(crate) struct TopLevel(BTreeMap<String, Box<RawValue>>);

impl TopLevel {
    /// `None` when the body is not a JSON object (the upstream answers that itself).
    pub(crate) fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok().map(Self)
    }

    /// The string at `key`.
    pub(crate) fn str(&self, key: &str) -> Option<String> {
        serde_json::from_str(self.0.get(key)?.get()).ok()
    }

    /// Whether `key` is `true`.
    pub(crate) fn is_true(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| v.get() == "true")
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Serialize) {
        if let Ok(raw) = serde_json::value::to_raw_value(&value) {
            self.0.insert(key.to_owned(), raw);
        }
    }

    /// The body it makes.
    pub(crate) fn into_bytes(self) -> Option<Bytes> {
        serde_json::to_vec(&self.0).ok().map(Bytes::from)
    }
}

/// Rewrite `req`'s JSON body at its top level with `change` (a body that is not a JSON object
/// is left for the upstream to refuse), keeping `content-length` true. Returns the body sent.
pub(crate) fn rewrite_body(
    req: &mut Request<Full<Bytes>>,
    change: impl FnOnce(&mut TopLevel) -> Result<(), InvalidUpstream>,
) -> Result<Bytes, InvalidUpstream> {
    let original = crate::body::take_full(req.body_mut());
    let body = match TopLevel::parse(&original) {
        Some(mut top) => {
            change(&mut top)?;
            top.into_bytes().unwrap_or(original)
        }
        None => original,
    };
    req.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *req.body_mut() = Full::new(body.clone());
    Ok(body)
}

/// Take the betas off `headers`: all of them but the subscription flag and request tags, which
/// the clouds refuse.
pub(crate) fn take_betas(headers: &mut HeaderMap) -> Vec<String> {
    let betas = anthropic::betas(headers)
        .into_iter()
        .filter(|beta| *beta != OAUTH_BETA && *beta != REQUEST_TAGS_BETA)
        .map(str::to_owned)
        .collect();
    headers.remove(anthropic::ANTHROPIC_BETA);
    betas
}

/// An error answer of a cloud, as read for classifying it and answering the client.
#[derive(Debug, Default)]
pub(crate) struct CloudError {
    /// The cloud's name for the error (`ThrottlingException`, `RESOURCE_EXHAUSTED`), or
    /// Anthropic's `error.type` when the answer is in Anthropic's envelope.
    pub(crate) kind: String,
    /// Its message, for the operator's log and the account's status (it may name cloud
    /// account ids, ARNs and projects, so the client does not get it).
    pub(crate) message: String,
    /// Whether the body was Anthropic's own envelope (Claude's error, relayed by the cloud).
    pub(crate) anthropic: bool,
}

impl CloudError {
    /// Read `body`: Anthropic's envelope, Google's `{"error": {"status", "message"}}` (alone or
    /// in a list), or AWS's `{"message"}` with its type in `x-amzn-errortype`.
    pub(crate) fn read(headers: &HeaderMap, body: Option<&[u8]>) -> Self {
        let value: Value = body
            .and_then(|body| serde_json::from_slice(body).ok())
            .unwrap_or(Value::Null);
        let value = match value {
            Value::Array(mut list) if !list.is_empty() => list.swap_remove(0),
            other => other,
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        if value["type"] == "error" {
            return Self {
                kind: text(value.pointer("/error/type")),
                message: text(value.pointer("/error/message")),
                anthropic: true,
            };
        }
        if value["error"].is_object() {
            return Self {
                kind: text(value.pointer("/error/status")),
                message: text(value.pointer("/error/message")),
                anthropic: false,
            };
        }
        // `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`
        let kind = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned())
            .or_else(|| {
                value["__type"]
                    .as_str()
                    .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
            })
            .unwrap_or_default();
        let message = text(value.get("message").or_else(|| value.get("Message")));
        Self {
            kind,
            message,
            anthropic: false,
        }
    }

    /// The reason an account is out of rotation, in words.
    pub(crate) fn reason(&self, provider: &str, status: StatusCode) -> String {
        let what = if self.kind.is_empty() {
            status.as_u16().to_string()
        } else {
            self.kind.clone()
        };
        if self.message.is_empty() {
            format!("{provider} refused the account ({what})")
        } else {
            format!("{provider} refused the account ({what}): {}", self.message)
        }
    }
}

/// Whether a status is an error answer, whose body a cloud's classification reads.
pub(crate) fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// A 429 (or a throttling error by another status): the account rests until the cloud's
/// `retry-after`, or for [`DEFAULT_COOLDOWN`].
pub(crate) fn throttled(headers: &HeaderMap, now: DateTime<Utc>) -> Classification {
    let until = retry_after(headers, now).unwrap_or(now + DEFAULT_COOLDOWN);
    Classification::new(Outcome::RateLimited { until })
}

/// An account the cloud refused, out of rotation with the reason.
pub(crate) fn forbidden(reason: String) -> Classification {
    let mut seen = Classification::new(Outcome::Forbidden);
    seen.reason = Some(reason);
    seen
}

/// What the client gets for a cloud's error answer: Anthropic's envelope, with a message that
/// names the cloud's error but none of its words (they may name account ids, ARNs and
/// projects; the operator's log has them). Anthropic's own 400 and 413 envelopes go through
/// as they are, and a size refusal says [`INPUT_TOO_LONG`]: clients recover from both by their
/// message. `None` when the body needs no change.
pub(crate) fn client_error(
    provider: &str,
    account: &str,
    status: StatusCode,
    error: &CloudError,
    too_long: bool,
) -> Option<Bytes> {
    if error.anthropic && matches!(status.as_u16(), 400 | 413) {
        return None;
    }
    if !error.message.is_empty() {
        tracing::warn!(
            provider,
            account,
            status = status.as_u16(),
            kind = %error.kind,
            message = %error.message,
            "the upstream answered an error"
        );
    }
    let kind = if error.anthropic && !error.kind.is_empty() {
        error.kind.as_str()
    } else {
        crate::error::error_type(status)
    };
    let message = if too_long {
        INPUT_TOO_LONG.to_owned()
    } else if error.kind.is_empty() || error.anthropic {
        format!("{provider} answered {}", status.as_u16())
    } else {
        format!("{provider} answered {} ({})", status.as_u16(), error.kind)
    };
    Some(Bytes::from(crate::error::error_envelope(kind, &message)))
}

/// Where a cloud served a request, from the model it names and the account's region.
pub(crate) type GeoOf = fn(model: Option<&str>, region: &str) -> String;

/// Reads a cloud's answers as Anthropic's (they send the same events and JSON), and notes
/// where they were served (`usage.inference_geo`, unless the answer said: `global`, a
/// geography, or the account's region), which the clouds price.
#[derive(Debug)]
pub struct CloudTap {
    inner: AnthropicTap,
    geo: Option<(String, GeoOf)>,
}

impl CloudTap {
    pub(crate) fn new(headers: &HeaderMap, region: Option<String>, geo_of: GeoOf) -> Self {
        Self {
            inner: AnthropicTap::for_headers(headers),
            geo: region.map(|region| (region, geo_of)),
        }
    }

    fn with_geo(&self, mut summary: TapSummary) -> TapSummary {
        if let (None, Some((region, geo_of))) = (&summary.billing.inference_geo, &self.geo) {
            summary.billing.inference_geo = Some(geo_of(summary.model.as_deref(), region));
        }
        summary
    }
}

impl UsageTap for CloudTap {
    fn feed(&mut self, chunk: &[u8]) {
        self.inner.feed(chunk);
    }

    fn is_stream(&self) -> bool {
        self.inner.is_stream()
    }

    fn at_boundary(&self) -> bool {
        self.inner.at_boundary()
    }

    fn error_event(&self, kind: &str, message: &str) -> Bytes {
        self.inner.error_event(kind, message)
    }

    fn finish(&mut self) -> TapSummary {
        let summary = self.inner.finish();
        self.with_geo(summary)
    }

    fn so_far(&self) -> TapSummary {
        self.with_geo(self.inner.so_far())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_in_each_clouds_shape() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        );
        let aws = CloudError::read(&headers, Some(br#"{"message":"Too many requests"}"#));
        assert_eq!(
            (aws.kind.as_str(), aws.message.as_str()),
            ("ThrottlingException", "Too many requests")
        );
        let none = HeaderMap::new();
        let google = CloudError::read(
            &none,
            Some(br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#),
        );
        assert_eq!(google.kind, "RESOURCE_EXHAUSTED");
        assert!(!google.anthropic);
        let claude = CloudError::read(
            &none,
            Some(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
        );
        assert!(claude.anthropic);
        assert_eq!(claude.kind, "overloaded_error");
    }

    #[test]
    fn clients_get_anthropics_envelope_without_the_clouds_words() {
        let error = CloudError {
            kind: "AccessDeniedException".into(),
            message: "User: arn:aws:iam::123456789012:user/x is not authorized".into(),
            anthropic: false,
        };
        let body = client_error("bedrock", "a", StatusCode::FORBIDDEN, &error, false).unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("permission_error"), "{body}");
        assert!(body.contains("AccessDeniedException"), "{body}");
        assert!(!body.contains("123456789012"), "{body}");
        let long = client_error("vertex", "a", StatusCode::BAD_REQUEST, &error, true).unwrap();
        assert!(String::from_utf8_lossy(&long).contains(r#""message":"Input is too long.""#));
        let prompt = CloudError {
            kind: "invalid_request_error".into(),
            message: "prompt is too long: 300000 tokens > 200000 maximum".into(),
            anthropic: true,
        };
        assert!(client_error("vertex", "a", StatusCode::BAD_REQUEST, &prompt, false).is_none());
    }
}

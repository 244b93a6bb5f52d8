//! What an upstream response means: one classifier for every status, in the spirit of
//! tower-http's `ClassifyResponse`.
//!
//! Some answers look alike but mean different things (as Anthropic's API sends them today):
//! a 403 `permission_error` is a disabled or banned account, not a client mistake; a 429 about
//! long-context extra usage, or one carrying `overage-disabled-reason: out_of_credits`, refuses
//! this request's model or beta, not the account; a 400 about extra usage is a billing-policy
//! refusal, not a rate limit. Telling them apart needs the error's type and message, so error
//! bodies of those statuses are read (they are small JSON envelopes).

use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::headers::RateLimitInfo;
use crate::provider::{Classification, DEFAULT_COOLDOWN, Outcome, StreamError};

/// `error.type` and `error.message` of Anthropic's error envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    /// `error.type`, e.g. `permission_error`.
    pub kind: String,
    /// `error.message`.
    pub message: String,
}

impl ErrorBody {
    /// Read an error envelope; `None` when `bytes` is not one.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "type")]
            kind: Option<String>,
            message: Option<String>,
        }
        let envelope: Envelope = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            kind: envelope.error.kind.unwrap_or_default(),
            message: envelope.error.message.unwrap_or_default(),
        })
    }

    fn mentions_extra_usage(&self) -> bool {
        self.message.to_ascii_lowercase().contains("extra usage")
    }
}

/// Whether the meaning of a response with `status` depends on its error body.
pub(crate) fn needs_body(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 403 | 429)
}

/// Classify a response from its status, rate-limit headers and error body (when it has one and
/// it was read), received at `now`.
pub(crate) fn outcome(
    status: StatusCode,
    info: &RateLimitInfo,
    error: Option<&ErrorBody>,
    now: DateTime<Utc>,
) -> Outcome {
    let extra_usage = error.is_some_and(ErrorBody::mentions_extra_usage);
    match status.as_u16() {
        429 if info.overage_disabled_reason.as_deref() == Some("out_of_credits") || extra_usage => {
            Outcome::ScopedRefusal
        }
        429 => Outcome::RateLimited {
            until: info.limited_until(now),
        },
        403 if error.is_some_and(|e| e.kind == "permission_error") => Outcome::Forbidden,
        400 if extra_usage => Outcome::ExtraUsageRequired,
        // Not implemented, HTTP version not supported: the same answer however often asked.
        _ => Outcome::from_status(status),
    }
}

/// The whole reading of a response: its outcome, when to bench the account, its limits and the
/// upstream's reason.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: DateTime<Utc>,
) -> Classification {
    let info = RateLimitInfo::from_headers(headers, now);
    let error = body.and_then(ErrorBody::parse);
    let outcome = outcome(status, &info, error.as_ref(), now);
    let bench_until = match outcome {
        Outcome::RateLimited { until } => Some(until),
        // A refusal scoped to one model or beta says nothing about the account's other requests.
        Outcome::ScopedRefusal => None,
        // A limited unified status on another response still means the next request will fail.
        _ if info.status_is_limited() => Some(info.limited_until(now)),
        _ => None,
    };
    let mut classification = Classification::new(outcome);
    classification.bench_until = bench_until;
    classification.limits = info.limits();
    classification.reason = error.map(|e| e.message).filter(|m| !m.is_empty());
    classification
}

/// An error event inside a 200 stream: a rate limit announced there still benches the account
/// (for the default cooldown: the event carries no reset); anything else (`overloaded_error`,
/// `api_error`) failed this request only.
pub(crate) fn classify_stream_error(error: &StreamError, now: DateTime<Utc>) -> Classification {
    let outcome = match error.kind.as_str() {
        "rate_limit_error" => Outcome::RateLimited {
            until: now + DEFAULT_COOLDOWN,
        },
        _ => Outcome::ServerError,
    };
    let mut classification = Classification::new(outcome);
    classification.reason = Some(error.message.clone()).filter(|m| !m.is_empty());
    classification
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: &str, message: &str) -> ErrorBody {
        ErrorBody {
            kind: kind.into(),
            message: message.into(),
        }
    }

    #[test]
    fn statuses_classify() {
        let now = Utc::now();
        let info = RateLimitInfo::default();
        let c = |s: u16| outcome(StatusCode::from_u16(s).unwrap(), &info, None, now);
        assert_eq!(c(200), Outcome::Success);
        assert_eq!(c(400), Outcome::ClientError);
        assert_eq!(c(401), Outcome::AuthFailed);
        assert_eq!(
            c(403),
            Outcome::ClientError,
            "a 403 without a body says nothing"
        );
        assert_eq!(c(500), Outcome::ServerError);
        assert_eq!(c(503), Outcome::ServerError);
        assert_eq!(c(501), Outcome::ClientError, "not retried");
        assert_eq!(c(505), Outcome::ClientError, "not retried");
        assert_eq!(c(529), Outcome::Overloaded);
        assert_eq!(
            c(429),
            Outcome::RateLimited {
                until: now + DEFAULT_COOLDOWN
            },
            "no reset information: the default cooldown"
        );
    }

    #[test]
    fn answers_that_look_alike_are_told_apart() {
        let now = Utc::now();
        let info = RateLimitInfo::default();
        let c =
            |s: u16, e: &ErrorBody| outcome(StatusCode::from_u16(s).unwrap(), &info, Some(e), now);
        let ban = error(
            "permission_error",
            "OAuth authentication is currently not allowed for this organization.",
        );
        assert_eq!(c(403, &ban), Outcome::Forbidden);
        let long_context = error(
            "rate_limit_error",
            "Extra usage is required for long context requests.",
        );
        assert_eq!(c(429, &long_context), Outcome::ScopedRefusal);
        let limited = error(
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
        );
        assert!(matches!(c(429, &limited), Outcome::RateLimited { .. }));
        let billing = error(
            "invalid_request_error",
            "Third-party apps now draw from your extra usage, not your plan limits.",
        );
        assert_eq!(c(400, &billing), Outcome::ExtraUsageRequired);
        let plain = error("invalid_request_error", "max_tokens: field required");
        assert_eq!(c(400, &plain), Outcome::ClientError);
        assert_eq!(c(403, &error("forbidden", "nope")), Outcome::ClientError);

        let out_of_credits = RateLimitInfo {
            overage_disabled_reason: Some("out_of_credits".into()),
            ..RateLimitInfo::default()
        };
        assert_eq!(
            outcome(StatusCode::TOO_MANY_REQUESTS, &out_of_credits, None, now),
            Outcome::ScopedRefusal
        );
    }

    #[test]
    fn error_bodies_parse_or_are_not_envelopes() {
        assert_eq!(
            ErrorBody::parse(
                br#"{"type":"error","error":{"type":"permission_error","message":"m"}}"#
            ),
            Some(error("permission_error", "m"))
        );
        assert_eq!(ErrorBody::parse(b"<html>forbidden</html>"), None);
        assert_eq!(ErrorBody::parse(br#"{"error":"invalid_grant"}"#), None);
        assert_eq!(
            ErrorBody::parse(br#"{"error":{}}"#),
            Some(ErrorBody::default())
        );
    }
}

//! What an upstream response means: one classifier for every status, in the spirit of
//! tower-http's `ClassifyResponse`.
//!
//! Some answers look alike but mean different things (anthropic.md, "Responses and errors"):
//! a 403 `permission_error` is a disabled or banned account, not a client mistake; a 429 about
//! long-context extra usage, or one carrying `overage-disabled-reason: out_of_credits`, refuses
//! this request's model or beta, not the account; a 400 about extra usage is a billing-policy
//! refusal, not a rate limit. Telling them apart needs the error's type and message, so error
//! bodies of those statuses are read (they are small JSON envelopes).

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;

use super::headers::RateLimitInfo;

/// What an upstream response means for the request and the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// 1xx–3xx: hand it to the client.
    Success,
    /// A 4xx (or a 501 or 505) that another try or account would answer the same way: hand it
    /// to the client.
    ClientError,
    /// A 400 saying the request needs extra usage (third-party traffic on a subscription billed
    /// to extra usage): a billing-policy refusal, not a rate limit. Handed to the client; no
    /// account is benched.
    ExtraUsageRequired,
    /// 429: the account rests until then; try the next account now.
    RateLimited {
        /// When the account may be used again.
        until: DateTime<Utc>,
    },
    /// A 429 scoped to this request's model or beta (long context needing extra usage,
    /// `out_of_credits`): try the next account, keep this one in rotation.
    ScopedRefusal,
    /// A 403 `permission_error`: the account is disabled or banned. Try the next account; this
    /// one stays out of rotation until a person acts.
    Forbidden,
    /// 401: the credential was refused.
    AuthFailed,
    /// 529: Anthropic is overloaded; retry with backoff, then the next account.
    Overloaded,
    /// 5xx: retry with backoff, then the next account.
    ServerError,
}

/// `error.type` and `error.message` of Anthropic's error envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error.type`, e.g. `permission_error`.
    pub kind: String,
    /// `error.message`.
    pub message: String,
}

impl ErrorBody {
    /// Read an error envelope; `None` when `bytes` is not one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
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

impl Outcome {
    /// Classify a response from its status, rate-limit headers and error body (when it has one
    /// and it was read), received at `now`.
    pub fn classify(
        status: StatusCode,
        info: &RateLimitInfo,
        error: Option<&ErrorBody>,
        now: DateTime<Utc>,
    ) -> Self {
        let extra_usage = error.is_some_and(ErrorBody::mentions_extra_usage);
        match status.as_u16() {
            429 if info.overage_disabled_reason.as_deref() == Some("out_of_credits")
                || extra_usage =>
            {
                Outcome::ScopedRefusal
            }
            429 => Outcome::RateLimited {
                until: info.limited_until(now),
            },
            403 if error.is_some_and(|e| e.kind == "permission_error") => Outcome::Forbidden,
            400 if extra_usage => Outcome::ExtraUsageRequired,
            401 => Outcome::AuthFailed,
            529 => Outcome::Overloaded,
            // Not implemented, HTTP version not supported: the same answer however often asked.
            501 | 505 => Outcome::ClientError,
            500..=599 => Outcome::ServerError,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Success,
        }
    }

    /// Classify from the status alone (a response that did not pass through `RateLimit`).
    pub fn from_status(status: StatusCode) -> Self {
        Self::classify(status, &RateLimitInfo::default(), None, Utc::now())
    }

    /// A short, recognisable label for a request record of this outcome, when it is one of the
    /// answers that look alike (so the history tells them apart).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Outcome::ExtraUsageRequired => {
                Some("extra usage required (billing refusal; no account benched)")
            }
            Outcome::ScopedRefusal => Some("refused for this model or beta (account kept)"),
            Outcome::Forbidden => Some("account refused by the upstream (out of rotation)"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::DEFAULT_COOLDOWN;

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
        let c = |s: u16| Outcome::classify(StatusCode::from_u16(s).unwrap(), &info, None, now);
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
        let c = |s: u16, e: &ErrorBody| {
            Outcome::classify(StatusCode::from_u16(s).unwrap(), &info, Some(e), now)
        };
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
            Outcome::classify(StatusCode::TOO_MANY_REQUESTS, &out_of_credits, None, now),
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

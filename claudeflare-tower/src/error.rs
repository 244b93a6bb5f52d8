//! Responses claudeflare makes itself, in Anthropic's error envelope so SDKs show them cleanly.

use http::{HeaderValue, Response, StatusCode, header};

use bytes::Bytes;

/// The `error.type` of Anthropic's envelope for a status claudeflare answers with.
pub(crate) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Anthropic's error envelope, `{"type":"error","error":{"type":KIND,"message":MESSAGE}}`, as
/// JSON: the one place it is written.
pub fn error_envelope(kind: &str, message: &str) -> String {
    serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message },
    })
    .to_string()
}

/// The envelope of an answer claudeflare makes itself: its message starts with `claudeflare: `.
pub fn claudeflare_envelope(kind: &str, message: &str) -> String {
    error_envelope(kind, &format!("claudeflare: {message}"))
}

/// The header that tells Anthropic's SDKs (and Claude Code) whether to retry a request.
pub const SHOULD_RETRY: &str = "x-should-retry";

/// `response` marked as one that retrying cannot help (`x-should-retry: false`): the SDKs then
/// show the error at once rather than retrying for minutes.
pub(crate) fn final_for_client<B>(mut response: Response<B>) -> Response<B> {
    response
        .headers_mut()
        .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
    response
}

/// An error response with `status` and Anthropic's envelope around `message`, in any body
/// made from bytes.
pub(crate) fn error_response<B: From<Bytes>>(status: StatusCode, message: &str) -> Response<B> {
    let envelope = claudeflare_envelope(error_type(status), message);
    let mut response = Response::new(B::from(Bytes::from(envelope)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyBody;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn envelope_is_anthropic_shaped_and_escaped() {
        let response: Response<ProxyBody> =
            error_response(StatusCode::PAYLOAD_TOO_LARGE, "body \"too\" large");
        assert_eq!(response.status(), 413);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "request_too_large");
        assert_eq!(json["error"]["message"], "claudeflare: body \"too\" large");
    }
}

//! HTTP for the control plane (token refresh, and in the server the OAuth exchange, API-key
//! creation and usage polling): reqwest, with a connect and a total timeout and a cap on what is
//! read back. The proxy's own path keeps its hyper client ([`crate::upstream`]), tuned for it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::BoxError;
use crate::egress::EgressProxy;

/// How long a control-plane call may wait for its connection.
pub const CONTROL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control-plane call may take in all.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a control-plane answer may hold (they are small JSON documents).
const MAX_ANSWER: usize = 1024 * 1024;

/// A control-plane client: rustls with ring and the webpki roots, 10 s to connect,
/// [`CONTROL_TIMEOUT`] in all.
///
/// A new one per call, not one shared by the process: a pooled connection is driven by a task
/// on the runtime that opened it, and these calls come from several runtimes (the server's, the
/// CLI's, a test's), rarely (a refresh every few hours, a usage poll every few minutes).
pub fn client() -> Result<reqwest::Client, BoxError> {
    client_via(None)
}

/// [`client`], going through `proxy` when there is one (an account's egress proxy: its token
/// refreshes and usage polls leave the way its requests do).
pub fn client_via(proxy: Option<&EgressProxy>) -> Result<reqwest::Client, BoxError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONTROL_CONNECT_TIMEOUT)
        .timeout(CONTROL_TIMEOUT);
    if let Some(proxy) = proxy {
        // reqwest takes the credentials from the URL; its errors would print the URL, so they
        // are replaced by one that shows the proxy redacted.
        let via = reqwest::Proxy::all(proxy.expose_url())
            .map_err(|_| BoxError::from(format!("unusable proxy {proxy}")))?;
        builder = builder.proxy(via);
    }
    builder.build().map_err(Into::into)
}

/// Send `request` and read its answer whole ([`read`]), a timeout said plainly.
pub async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError> {
    let response = request.send().await.map_err(describe)?;
    read(response).await
}

/// An answer's status, headers and body (at most 1 MiB).
pub async fn read(
    mut response: reqwest::Response,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError> {
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the answer is larger than {MAX_ANSWER} bytes").into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, body.freeze()))
}

/// A reqwest error in words: a timeout says so plainly.
pub fn describe(error: reqwest::Error) -> BoxError {
    if error.is_timeout() {
        format!("no answer within {} s", CONTROL_TIMEOUT.as_secs()).into()
    } else {
        error.into()
    }
}

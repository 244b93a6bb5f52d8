//! HTTP for the server's control plane (the OAuth code exchange and refresh, API-key creation,
//! usage polling): reqwest, with a connect and a total timeout and a cap on what is read back.
//! The proxy's own path is the balancer's hyper client, tuned for it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use claudeflare_tower::{BoxError, EgressProxy};

/// How long a control-plane call may wait for its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a control-plane call may take in all.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most a control-plane answer may hold (they are small JSON documents).
const MAX_ANSWER: usize = 1024 * 1024;

/// A control-plane client: rustls with ring and the webpki roots, 10 s to connect, 30 s in
/// all, going through `proxy` when there is one (an account's egress proxy: its sign-in, token
/// refreshes and usage polls leave the way its requests do).
///
/// A new one per call, not one shared by the process: a pooled connection is driven by a task
/// on the runtime that opened it, and these calls come from several runtimes (the server's, the
/// CLI's), rarely (a refresh every few hours, a usage poll every few minutes).
pub(crate) fn client_via(proxy: Option<&EgressProxy>) -> Result<reqwest::Client, BoxError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TIMEOUT);
    if let Some(proxy) = proxy {
        // reqwest takes the credentials from the URL; its errors would print the URL, so they
        // are replaced by one that shows the proxy redacted.
        let via = reqwest::Proxy::all(proxy.expose_url())
            .map_err(|_| BoxError::from(format!("unusable proxy {proxy}")))?;
        builder = builder.proxy(via);
    }
    builder.build().map_err(Into::into)
}

/// Send `request` and read its answer whole: status, headers and body (at most 1 MiB). A
/// timeout is said plainly.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError> {
    let mut response = request.send().await.map_err(describe)?;
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
fn describe(error: reqwest::Error) -> BoxError {
    if error.is_timeout() {
        format!("no answer within {} s", TIMEOUT.as_secs()).into()
    } else {
        error.into()
    }
}

//! The access rules as a layer: who may send a request (see the `access` module), checked
//! before anything else runs, and for a proxied request of a client key, its place under the
//! key's limits, held until the response body ends.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use claudeflare_tower::{RequestContext, Setting};
use http::header;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::access::{Access, InFlight, Refusal};
use crate::api::gateway;
use crate::config::Config;
use crate::{api, budget, dashboard};

/// Puts [`Gate`] in front of a service.
#[derive(Clone)]
pub struct GateLayer {
    access: Access,
    config: Setting<Config>,
}

impl GateLayer {
    /// The rules of `access`, and the configuration's `models`.
    pub fn new(access: Access, config: Setting<Config>) -> Self {
        Self { access, config }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            access: self.access.clone(),
            config: self.config.clone(),
        }
    }
}

/// The access rules in front of `S`. See the [module docs](self).
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    access: Access,
    config: Setting<Config>,
}

impl<S> Gate<S> {
    /// The access rules, checked before anything else runs: who may send this request
    /// (see the `access` module). For a proxied request of a client key, its place under the
    /// key's limits.
    fn check(&self, req: &mut Request, proxied: bool) -> Result<Option<InFlight>, Refusal> {
        let access = &self.access;
        let refuse = Err;
        if access.cross_site(req.method(), req.headers()) {
            return refuse(Refusal::forbidden(
                "cross-site requests are refused: a web page may not use or change claudeflare",
            ));
        }
        let path = req.uri().path();
        if !proxied
            && path.starts_with("/api/")
            && changes_state(req.method())
            && has_body(req.headers())
        {
            let json = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("application/json")
                });
            if !json {
                return refuse(Refusal::new(
                    http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "request bodies must be JSON (content-type: application/json)",
                ));
            }
        }
        if !access.keys_exist() {
            if !access.host_allowed(req.headers()) {
                return refuse(Refusal::forbidden(
                    "this server answers only its own machine (a loopback Host) until a client key exists; add the name to allowed_hosts to reach it by another",
                ));
            }
            if proxied {
                self.allow_configured_models(req);
            }
            return Ok(None);
        }
        let key = Access::presented(req.headers()).and_then(|k| access.find(&k));
        if proxied {
            let Some(key) = key else {
                return refuse(Refusal::new(
                    http::StatusCode::UNAUTHORIZED,
                    "a valid client key is required (x-api-key or authorization: Bearer)",
                ));
            };
            let admitted = match access.admit(&key) {
                Ok(admitted) => admitted,
                Err(refusal) => return refuse(refusal),
            };
            let context = RequestContext::get_or_insert(req);
            context.set_client(Arc::clone(&key.name));
            if let Some(accounts) = &key.accounts {
                context.allow_accounts(Arc::clone(accounts));
            }
            if let Some(models) = key.models.clone() {
                context.allow_models(Arc::clone(&models));
                req.extensions_mut().insert(gateway::AllowedModels(models));
            } else {
                self.allow_configured_models(req);
            }
            return Ok(Some(admitted));
        }
        // Signing in needs no key yet: the sign-in is what gets one.
        if SIGN_IN_PATHS.contains(&path) {
            return Ok(None);
        }
        // A key's own spend and policy, for any key (Claude Code asks with the key or bearer
        // it was given).
        if path == "/api/oauth/usage" || path == "/managed/settings" {
            let Some(key) = key else {
                return refuse(Refusal::new(
                    http::StatusCode::UNAUTHORIZED,
                    "a valid client key is required (authorization: Bearer)",
                ));
            };
            req.extensions_mut().insert(gateway::CallerKey(key));
            return Ok(None);
        }
        if matches!(path, "/health" | "/login" | "/logout") {
            return Ok(None);
        }
        match access.admin(req.headers()) {
            Ok(()) => Ok(None),
            Err(refusal) => refuse(refusal),
        }
    }

    /// Limit the request to the config file's `models`, when it lists some.
    fn allow_configured_models(&self, req: &mut Request) {
        let config = self.config.current();
        if config.models.is_empty() {
            return;
        }
        let models = Arc::clone(&config.models);
        RequestContext::get_or_insert(req).allow_models(Arc::clone(&models));
        req.extensions_mut().insert(gateway::AllowedModels(models));
    }
}

impl<S, B> Service<Request> for Gate<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let proxied = req.uri().path().starts_with("/v1/");
        let admitted = match self.check(&mut req, proxied) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let response = refusal_response(&refusal, proxied, req.uri().path());
                return GateFuture {
                    state: State::Refused {
                        response: Some(response),
                    },
                };
            }
        };
        // A key with a budget learns where it stands on each answer to a message.
        let limits = admitted
            .as_ref()
            .filter(|_| {
                req.method() == http::Method::POST
                    && req.uri().path() == "/v1/messages"
                    && crate::app::balanced(&req)
            })
            .and_then(|admitted| self.access.standing(admitted.key()))
            .map(|standing| standing.allowed_headers());
        GateFuture {
            state: State::Admitted {
                future: self.inner.call(req),
                admitted,
                limits,
            },
        }
    }
}

pin_project! {
    /// The future of [`Gate`].
    pub struct GateFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Let in, with its place under its key's limits.
        Admitted {
            #[pin] future: F,
            admitted: Option<InFlight>,
            // The usage-limit headers of the key's budget, for a successful answer.
            limits: Option<Vec<(&'static str, String)>>,
        },
        // Refused before anything ran.
        Refused { response: Option<Response> },
    }
}

impl<F, B> Future for GateFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted {
                future,
                admitted,
                limits,
            } => {
                let mut response = std::task::ready!(future.poll(cx));
                if let (Ok(response), Some(limits)) = (&mut response, limits.take()) {
                    if response.status().is_success() {
                        budget::replace_limit_headers(response.headers_mut(), limits);
                    }
                }
                // The key's place is held until the response body ends.
                let admitted = admitted.take();
                Poll::Ready(response.map(|response| {
                    response.map(|body| match admitted {
                        Some(admitted) => Body::new(Holding {
                            body,
                            _held: admitted,
                        }),
                        None => Body::new(body),
                    })
                }))
            }
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("gate::GateFuture polled after completion"),
            },
        }
    }
}

/// The sign-in endpoints of Claude Code's `/login`, open to anyone (cross-site checks apply).
const SIGN_IN_PATHS: [&str; 5] = [
    "/.well-known/oauth-authorization-server",
    "/oauth/device_authorization",
    "/oauth/token",
    "/oauth/revoke",
    "/device",
];

pin_project! {
    /// A response body that holds something (a key's place under its limits) until it ends or
    /// is dropped.
    struct Holding<B, T> {
        #[pin]
        body: B,
        _held: T,
    }
}

impl<B: http_body::Body, T> http_body::Body for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn changes_state(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// A refusal as the client expects it: Anthropic's envelope on `/v1`, the login page for a
/// person on the dashboard who is not logged in, `{"error"}` elsewhere.
fn refusal_response(refusal: &Refusal, proxied: bool, path: &str) -> Response {
    let mut response = if proxied {
        api::error::envelope(refusal.status, refusal.kind, &refusal.message)
    } else if refusal.status == http::StatusCode::UNAUTHORIZED
        && !path.starts_with("/api/")
        && path != "/metrics"
    {
        let page = axum::response::Html(dashboard::login_page(None).into_string());
        (refusal.status, page).into_response()
    } else {
        api::error::ApiError::Status(refusal.status, refusal.message.clone()).into_response()
    };
    let headers = response.headers_mut();
    if let Some(seconds) = refusal.retry_after {
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    if !refusal.retry {
        headers.insert(
            claudeflare_tower::SHOULD_RETRY,
            http::HeaderValue::from_static("false"),
        );
    }
    for (name, value) in &refusal.headers {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

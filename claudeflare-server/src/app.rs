//! The axum application: the proxy on `/v1/*`, the JSON API, metrics and the dashboard.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use claudeflare_tower::{BalancerService, RequestContext};
use http::{HeaderName, header};
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::access::{Access, InFlight, Refusal};
use crate::api::gateway;
use crate::budget;
use crate::state::AppState;
use crate::{api, dashboard};

/// The whole application: `/v1/…` goes straight to the balancer, everything else through the
/// router, on the main runtime.
///
/// The proxy is the busy path. Routed, each of its requests would pay for the route lookup, for
/// the path parameters axum attaches (which the balancer copies into every upstream attempt) and
/// for a boxed clone of the route's service.
///
/// Each HTTP thread has an `App` of its own, whose balancer has its own upstream client, so a
/// proxied request stays on one thread (see the `threads` module). The API, the dashboard and the
/// metrics use the database, whose connections belong to the main runtime: their requests are
/// run there.
#[derive(Clone)]
pub struct App {
    balancer: BalancerService,
    router: Router,
    main: Handle,
    access: Access,
    config: claudeflare_tower::Setting<crate::config::Config>,
}

impl App {
    /// The application over `state`, proxying through `balancer`, running everything else on
    /// `main`.
    pub fn new(state: AppState, balancer: BalancerService, main: Handle) -> Self {
        Self {
            balancer,
            access: state.access.clone(),
            config: state.config.clone(),
            router: router(state),
            main,
        }
    }

    /// The access rules, checked before anything else runs: who may send this request
    /// (see the `access` module). For a proxied request of a client key, its place under the
    /// key's limits.
    fn gate(&self, req: &mut Request, proxied: bool) -> Result<Option<InFlight>, Refusal> {
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

/// The sign-in endpoints of Claude Code's `/login`, open to anyone (cross-site checks apply).
const SIGN_IN_PATHS: [&str; 5] = [
    "/.well-known/oauth-authorization-server",
    "/oauth/device_authorization",
    "/oauth/token",
    "/oauth/revoke",
    "/device",
];

/// Whether a `/v1` request is answered here rather than by an account: Claude Code's
/// telemetry, and the model list of a request limited to some models.
fn answered_here(req: &Request) -> bool {
    let path = req.uri().path();
    match *req.method() {
        http::Method::POST => gateway::TELEMETRY.contains(&path),
        http::Method::GET => {
            path == "/v1/models" && req.extensions().get::<gateway::AllowedModels>().is_some()
        }
        _ => false,
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = AppFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The balancer is always ready (it queues on its own), but ask it anyway. The router is
        // called through `oneshot`, which asks it.
        Service::<Request>::poll_ready(&mut self.balancer, cx)
    }

    fn call(&mut self, mut req: Request) -> AppFuture {
        let proxied = req.uri().path().starts_with("/v1/");
        let admitted = match self.gate(&mut req, proxied) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                let response = refusal_response(&refusal, proxied, req.uri().path());
                return AppFuture {
                    kind: Kind::Answer {
                        response: Some(response),
                    },
                };
            }
        };
        if proxied && !answered_here(&req) {
            // A key with a budget learns where it stands on each answer to a message.
            let limits = admitted
                .as_ref()
                .filter(|_| {
                    req.method() == http::Method::POST && req.uri().path() == "/v1/messages"
                })
                .and_then(|admitted| self.access.standing(admitted.key()))
                .map(|standing| standing.allowed_headers());
            let future = self.balancer.call(req);
            AppFuture {
                kind: Kind::Proxy {
                    future,
                    admitted,
                    limits,
                },
            }
        } else {
            let task = self.main.spawn(self.router.clone().oneshot(req));
            AppFuture {
                kind: Kind::Other { task },
            }
        }
    }
}

pin_project! {
    /// The future of [`App`].
    pub struct AppFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    /// The proxy variant is the large and the common one (every proxied request): boxing it
    /// would cost an allocation per request to save bytes on the rare one.
    #[project = KindProj]
    enum Kind {
        // A proxied request, and its place under its key's limits.
        Proxy {
            #[pin] future: <BalancerService as Service<Request>>::Future,
            admitted: Option<InFlight>,
            // The usage-limit headers of the key's budget, for a successful answer.
            limits: Option<Vec<(&'static str, String)>>,
        },
        // Refused before anything ran.
        Answer { response: Option<Response> },
        // Anything else, on the main runtime.
        Other { task: JoinHandle<Result<Response, Infallible>> },
    }
}

impl Future for AppFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Proxy {
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
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("app::AppFuture polled after completion"),
            },
            KindProj::Other { task } => Pin::new(task).poll(cx).map(|joined| {
                joined.unwrap_or_else(|error| {
                    // A handler panicked (or the runtime is shutting down).
                    tracing::error!(%error, "a request handler failed");
                    let body = serde_json::json!({ "error": "internal error" }).to_string();
                    let mut response = Response::new(Body::from(body));
                    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok(response)
                })
            }),
        }
    }
}

/// The router of everything but the proxy: the API and metrics, and the dashboard, each
/// part's own routes merged here.
fn router(state: AppState) -> Router {
    Router::new()
        // A span per API request, so what a handler logs says which request it was.
        .merge(api::router().layer(TraceLayer::new_for_http()))
        // The page is mostly repeated markup: gzip takes it to a fraction for a remote browser.
        .merge(dashboard::router().layer(CompressionLayer::new()))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        // Credentials are never shown by whatever logs or debugs a request.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            HeaderName::from_static("x-api-key"),
        ]))
        .with_state(state)
}

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

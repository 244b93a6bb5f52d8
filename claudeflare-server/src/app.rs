//! The axum application: the proxy on `/v1/*`, the JSON API, metrics and the dashboard.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http_body_util::Either;

use claudeflare_tower::BalancerService;
use http::{HeaderName, header};
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::api::gateway;
use crate::gate::{Gate, GateLayer};
use crate::state::AppState;
use crate::{api, dashboard};

/// The whole application: the access rules ([`Gate`]) in front of the dispatch.
pub type App = Gate<Dispatch>;

/// The application over `state`, proxying through `balancer`, running everything else on
/// `main`.
pub fn app(state: AppState, balancer: BalancerService, main: Handle) -> App {
    GateLayer::new(state.access.clone(), state.config.clone()).layer(Dispatch {
        balancer,
        router: router(state),
        main,
    })
}

/// `/v1/…` goes straight to the balancer, everything else through the router, on the main
/// runtime.
///
/// The proxy is the busy path. Routed, each of its requests would pay for the route lookup, for
/// the path parameters axum attaches (which the balancer copies into every upstream attempt) and
/// for a boxed clone of the route's service: about 4,500 instructions per request by callgrind
/// (docs/benchmarks-history.md, third round).
///
/// Each HTTP thread has an `App` of its own, whose balancer has its own upstream client, so a
/// proxied request stays on one thread (see the `threads` module). The API, the dashboard and the
/// metrics use the database, whose connections belong to the main runtime: their requests are
/// run there.
#[derive(Clone)]
pub struct Dispatch {
    balancer: BalancerService,
    router: Router,
    main: Handle,
}

/// Whether a request goes to the balancer: a `/v1` request not answered here (Claude Code's
/// telemetry, and the model list of a request limited to some models, are).
pub(crate) fn balanced(req: &Request) -> bool {
    let path = req.uri().path();
    if !path.starts_with("/v1/") {
        return false;
    }
    let answered_here = match *req.method() {
        http::Method::POST => gateway::TELEMETRY.contains(&path),
        http::Method::GET => {
            path == "/v1/models" && req.extensions().get::<gateway::AllowedModels>().is_some()
        }
        _ => false,
    };
    !answered_here
}

/// The body of a balanced answer.
type Balanced =
    claudeflare_tower::RecordBody<claudeflare_tower::ProxyBody, claudeflare_tower::Providers>;

/// An answer of [`Dispatch`]: the balancer's body as it is (the gate boxes it once, holding
/// the key's place), or the router's.
pub type DispatchBody = Either<Balanced, Body>;

impl Service<Request> for Dispatch {
    type Response = Response<DispatchBody>;
    type Error = Infallible;
    type Future = DispatchFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The balancer is always ready (it queues on its own), but ask it anyway. The router is
        // called through `oneshot`, which asks it.
        Service::<Request>::poll_ready(&mut self.balancer, cx)
    }

    fn call(&mut self, req: Request) -> DispatchFuture {
        if balanced(&req) {
            DispatchFuture {
                kind: Kind::Proxy {
                    future: self.balancer.call(req),
                },
            }
        } else {
            let task = self.main.spawn(self.router.clone().oneshot(req));
            DispatchFuture {
                kind: Kind::Other { task },
            }
        }
    }
}

pin_project! {
    /// The future of [`Dispatch`].
    pub struct DispatchFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        // A proxied request.
        Proxy { #[pin] future: <BalancerService as Service<Request>>::Future },
        // Anything else, on the main runtime.
        Other { task: JoinHandle<Result<Response, Infallible>> },
    }
}

impl Future for DispatchFuture {
    type Output = Result<Response<DispatchBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Proxy { future } => future
                .poll(cx)
                .map(|response| response.map(|response| response.map(Either::Left))),
            KindProj::Other { task } => Pin::new(task).poll(cx).map(|joined| {
                let response = joined.unwrap_or_else(|error| {
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
                });
                response.map(|response| response.map(Either::Right))
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

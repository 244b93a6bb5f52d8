//! The axum application: the proxy on `/v1/*`, the JSON API, metrics and the dashboard.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use claudeflare_tower::BalancerService;
use http::{HeaderName, header};
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

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
}

impl App {
    /// The application over `state`, proxying through `balancer`, running everything else on
    /// `main`.
    pub fn new(state: AppState, balancer: BalancerService, main: Handle) -> Self {
        Self {
            balancer,
            router: router(state),
            main,
        }
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

    fn call(&mut self, req: Request) -> AppFuture {
        if req.uri().path().starts_with("/v1/") {
            let future = self.balancer.call(req);
            AppFuture {
                kind: Kind::Proxy { future },
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
        // A proxied request.
        Proxy { #[pin] future: <BalancerService as Service<Request>>::Future },
        // Anything else, on the main runtime.
        Other { task: JoinHandle<Result<Response, Infallible>> },
    }
}

impl Future for AppFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Proxy { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Body::new))),
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

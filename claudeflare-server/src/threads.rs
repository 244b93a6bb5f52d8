//! The threads that serve HTTP: one single-threaded runtime per core. The main runtime accepts
//! connections and deals them out in turn; a connection then stays on its thread, with every
//! request it carries, the upstream connections those use (each thread has its own upstream
//! client, see [`App`]) and the response bodies streamed back.
//!
//! On tokio's work-stealing runtime, a proxied request hops between cores: the client
//! connection's task, the upstream connection's task and the wakers between them land on
//! whichever worker is free, so memory allocated on one core is written and freed on the other,
//! locks and reference counts bounce between them, and idle workers are woken with
//! inter-processor interrupts. Measured under load on 2 cores, keeping each connection on one
//! thread takes about a third off claudeflare's CPU time per request (docs/benchmarks-history.md).
//!
//! Everything that is not proxying (the API, the dashboard, the database, token refreshes,
//! background tasks) stays on the main runtime: [`App`] sends those requests there.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::App;

/// A connection handed to an HTTP thread, with its place under the connection limit.
type Handed = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// How connections are served: the limits a client cannot hold the server hostage past.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's headers, and how long a keep-alive
    /// connection may sit idle waiting for the next request (hyper starts the same timer then).
    pub header_read_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// After a stop, how long requests in flight (streams included) may take to finish.
    pub grace: Duration,
}

/// The HTTP threads, and how they are stopped.
pub struct HttpThreads {
    stop: CancellationToken,
    acceptor: tokio::task::JoinHandle<()>,
    ended: mpsc::UnboundedReceiver<io::Result<()>>,
}

impl HttpThreads {
    /// Start one thread per app in `apps`, fed from `listener` by a task on the current runtime.
    /// After a stop, a thread gives its requests in flight `limits.grace` to finish; then it
    /// cancels `cut` (streams end with an SSE error event) and closes what is left.
    pub fn start(
        listener: TcpListener,
        apps: Vec<App>,
        limits: Limits,
        cut: CancellationToken,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Self> {
        if apps.is_empty() {
            return Err(io::Error::other("no HTTP thread to start"));
        }
        let stop = CancellationToken::new();
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut threads = Vec::with_capacity(apps.len());
        for (index, app) in apps.into_iter().enumerate() {
            let (sender, connections) = mpsc::unbounded_channel();
            let stopped = stop.clone();
            let ended = ended_tx.clone();
            let cut = cut.clone();
            let tls = tls.clone();
            std::thread::Builder::new()
                .name(format!("claudeflare-http-{index}"))
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|runtime| {
                            runtime.block_on(serve(connections, app, stopped, limits, cut, tls))
                        });
                    let _ = ended.send(result);
                })?;
            threads.push(sender);
        }
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let acceptor = tokio::spawn(accept(listener, threads, slots, stop.clone()));
        Ok(Self {
            stop,
            acceptor,
            ended,
        })
    }

    /// Wait until a thread fails (which it should not), or `signal` completes; then stop
    /// accepting and wait for the threads to finish their requests (at most the grace period).
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> io::Result<()> {
        let failed = tokio::select! {
            () = signal => None,
            ended = self.ended.recv() => Some(ended.unwrap_or(Ok(())).err().unwrap_or_else(|| {
                io::Error::other("an HTTP thread stopped on its own")
            })),
        };
        self.stop.cancel();
        let _ = self.acceptor.await;
        while let Some(ended) = self.ended.recv().await {
            if let Err(error) = ended {
                tracing::error!(%error, "an HTTP thread could not start");
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// How long streams cut at the end of the grace period get to send their last event.
const CUT_FLUSH: Duration = Duration::from_secs(2);

/// One thread's server: serve the connections dealt to it until `stopped`, then let those in
/// flight finish (at most `limits.grace`), cut the streams still running, and close the rest.
async fn serve(
    mut connections: mpsc::UnboundedReceiver<Handed>,
    app: App,
    stopped: CancellationToken,
    limits: Limits,
    cut: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // A timer always due within a second. tokio wakes its I/O driver (an eventfd write, and one
    // more turn of `epoll_wait`) whenever a new timer is due sooner than every pending one, even
    // from the driver's own thread; without this one, the timers each request arms (hyper's
    // header-read timeout, the upstream's first-byte timeout) did so 0.86 times per request
    // under wrk at 1 connection (strace). Dropped with the thread's runtime.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
        }
    });
    loop {
        let (stream, peer, permit) = tokio::select! {
            handed = connections.recv() => match handed {
                Some(handed) => handed,
                None => break,
            },
            () = stopped.cancelled() => break,
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, %peer, "could not take over a connection");
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone().map_request(
            move |request: http::Request<Incoming>| {
                let mut request = request.map(Body::new);
                // Who is asking, for the sign-in page's per-address limit (only that page
                // reads it: the proxy's requests carry nothing more).
                if request.uri().path() == "/device" {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                request
            },
        ));
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    // A client that was too slow with its headers, or went away: its business.
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                // Its place under the connection limit is free again.
                drop(permit);
            });
            continue;
        };
        // The handshake first, under the same timeout as a request's headers; then the
        // connection is served like any other (the graceful shutdown watches it from then on).
        let (tls, http, watcher) = (tls.clone(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    let connection =
                        watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            drop(permit);
        });
    }
    let finished = graceful.shutdown();
    tokio::pin!(finished);
    if tokio::time::timeout(limits.grace, &mut finished)
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        seconds = limits.grace.as_secs(),
        "requests still running after the grace period are being cut"
    );
    cut.cancel();
    // The cut streams send their error event and end; whatever is still open after that is
    // closed when this thread's runtime stops.
    let _ = tokio::time::timeout(CUT_FLUSH, &mut finished).await;
}

/// Accept connections until `stopped`, dealing them to the threads in turn. Past the limit a
/// connection is answered 503 and closed at once, so idle or slow clients cannot use up the
/// process's file descriptors (and with them the database, the upstream and `/health`).
async fn accept(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<Handed>>,
    slots: Arc<Semaphore>,
    stopped: CancellationToken,
) {
    let refused = AtomicU64::new(0);
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin on the error.
                    tracing::error!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = stopped.cancelled() => return,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refuse(&stream);
            let count = refused.fetch_add(1, Ordering::Relaxed) + 1;
            if count == 1 || count % 1000 == 0 {
                tracing::warn!(
                    refused = count,
                    "the connection limit is reached; new connections are answered 503"
                );
            }
            continue;
        };
        // No Nagle delay: a streamed event goes out at once, not when the previous one is
        // acknowledged (up to 40 ms later on a real network with delayed acknowledgements).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
        }
        match stream.into_std() {
            Ok(stream) => {
                let _ = threads[next].send((stream, peer, permit));
                next = (next + 1) % threads.len();
            }
            Err(error) => tracing::debug!(%error, "could not hand a connection over"),
        }
    }
}

/// Answer a connection over the limit with 503 in Anthropic's envelope, without waiting on it:
/// a fresh socket's send buffer takes these few bytes at once, and if it does not, the client
/// gets the closed connection.
fn refuse(stream: &TcpStream) {
    static RESPONSE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let body = claudeflare_tower::claudeflare_envelope(
            "overloaded_error",
            "too many connections; try again shortly",
        );
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    });
    let _ = stream.try_write(RESPONSE.as_bytes());
}

/// Errors of one connection that went away before it was accepted, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

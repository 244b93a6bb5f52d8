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
//! thread takes about a third off claudeflare's CPU time per request (BENCHMARKS.md).
//!
//! Everything that is not proxying (the API, the dashboard, the database, token refreshes,
//! background tasks) stays on the main runtime: [`App`] sends those requests there.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::ServiceExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::app::App;

/// A connection handed to an HTTP thread.
type Handed = (std::net::TcpStream, SocketAddr);

/// The connections dealt to one HTTP thread, as the listener its server accepts from.
struct Dealt {
    connections: mpsc::UnboundedReceiver<Handed>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Some((stream, peer)) = self.connections.recv().await else {
                // The acceptor has stopped: so has the server, which stops asking soon.
                return std::future::pending().await;
            };
            match TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(error) => tracing::debug!(%error, "could not take over a connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The HTTP threads, and how they are stopped.
pub struct HttpThreads {
    stop: watch::Sender<bool>,
    acceptor: tokio::task::JoinHandle<()>,
    ended: mpsc::UnboundedReceiver<io::Result<()>>,
}

impl HttpThreads {
    /// Start one thread per app in `apps`, fed from `listener` by a task on the current runtime.
    /// After a stop, a thread gives its requests in flight `grace` to finish, then cuts them.
    pub fn start(listener: TcpListener, apps: Vec<App>, grace: Duration) -> io::Result<Self> {
        if apps.is_empty() {
            return Err(io::Error::other("no HTTP thread to start"));
        }
        let local = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut threads = Vec::with_capacity(apps.len());
        for (index, app) in apps.into_iter().enumerate() {
            let (sender, connections) = mpsc::unbounded_channel();
            let listener = Dealt { connections, local };
            let stopped = stopped.clone();
            let ended = ended_tx.clone();
            std::thread::Builder::new()
                .name(format!("claudeflare-http-{index}"))
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|runtime| runtime.block_on(serve(listener, app, stopped, grace)));
                    let _ = ended.send(result);
                })?;
            threads.push(sender);
        }
        let acceptor = tokio::spawn(accept(listener, threads, stopped));
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
        let _ = self.stop.send(true);
        let _ = self.acceptor.await;
        while let Some(ended) = self.ended.recv().await {
            if let Err(error) = ended {
                tracing::error!(%error, "an HTTP thread could not start");
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// One thread's server, until `stopped` and its connections are done (or `grace` has passed).
async fn serve(listener: Dealt, app: App, stopped: watch::Receiver<bool>, grace: Duration) {
    let signal = {
        let mut stopped = stopped.clone();
        async move { until_stopped(&mut stopped).await }
    };
    let server = axum::serve(listener, app.into_make_service()).with_graceful_shutdown(signal);
    let mut stopped = stopped;
    tokio::select! {
        // It only ends once stopped: accepting never fails.
        _ = server.into_future() => {}
        () = async {
            until_stopped(&mut stopped).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(seconds = grace.as_secs(), "requests still running after the grace period were cut");
        }
    }
}

/// Accept connections until `stopped`, dealing them to the threads in turn.
async fn accept(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<Handed>>,
    mut stopped: watch::Receiver<bool>,
) {
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
            () = until_stopped(&mut stopped) => return,
        };
        // No Nagle delay: a streamed event goes out at once, not when the previous one is
        // acknowledged (up to 40 ms later on a real network with delayed acknowledgements).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a connection");
        }
        match stream.into_std() {
            Ok(stream) => {
                let _ = threads[next].send((stream, peer));
                next = (next + 1) % threads.len();
            }
            Err(error) => tracing::debug!(%error, "could not hand a connection over"),
        }
    }
}

/// Until the stop is given (or can no longer be).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
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

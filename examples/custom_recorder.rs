//! # A recorder of your own
//!
//! The balancer hands one `RequestRecord` per request to a `Recorder`, on the response path. A
//! recorder must never block it, so this one does what the reference server does: a bounded
//! channel to a task that writes in batches, counting what did not fit instead of waiting. Here
//! the "database" is a JSON line per request on stdout, and a cost summary every 10 seconds.
//!
//! ```sh
//! CLAUDE_KEY_A=… cargo run -p claudeflare-examples --example custom_recorder
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use claudeflare_tower::{Account, AccountPool, Balancer};
use claudeflare_tower::{Recorder, RequestRecord};
use tokio::sync::mpsc;

/// Queues records for a writer task; drops (and counts) them when the queue is full.
struct ChannelRecorder {
    queue: mpsc::Sender<RequestRecord>,
    dropped: AtomicU64,
}

impl Recorder for ChannelRecorder {
    fn record(&self, record: RequestRecord) {
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes records in batches of up to 64, as they come.
async fn writer(mut queue: mpsc::Receiver<RequestRecord>, recorder: Arc<ChannelRecorder>) {
    let mut batch = Vec::with_capacity(64);
    let mut tokens = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            received = queue.recv_many(&mut batch, 64) => {
                if received == 0 {
                    return;
                }
                for record in batch.drain(..) {
                    tokens += record.usage.input_tokens + record.usage.output_tokens;
                    match serde_json::to_string(&record) {
                        Ok(line) => println!("{line}"),
                        Err(error) => eprintln!("unserialisable record: {error}"),
                    }
                }
            }
            _ = tick.tick() => {
                let dropped = recorder.dropped.load(Ordering::Relaxed);
                eprintln!("{tokens} tokens so far, {dropped} records dropped");
            }
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (sender, receiver) = mpsc::channel(4096);
    let recorder = Arc::new(ChannelRecorder {
        queue: sender,
        dropped: AtomicU64::new(0),
    });
    tokio::spawn(writer(receiver, Arc::clone(&recorder)));

    let pool = AccountPool::new(vec![Account::api_key(
        "a",
        std::env::var("CLAUDE_KEY_A").unwrap_or_default(),
    )]);
    let service = Balancer::new(pool).recorder(recorder).build();

    let app = axum::Router::new().route_service("/v1/{*path}", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

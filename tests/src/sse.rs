//! Real SSE as Anthropic sends it, cut into awkward chunks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};

use crate::mock::{
    CACHE_CREATION_1H_TOKENS, CACHE_CREATION_5M_TOKENS, CACHE_CREATION_TOKENS, CACHE_READ_TOKENS,
    INPUT_TOKENS, OUTPUT_TOKENS,
};

/// The full event stream of one message from `model`, with multi-byte characters in its text.
pub fn message_stream(model: &str) -> Vec<u8> {
    let events = [
        ("message_start", format!(
            r#"{{"type":"message_start","message":{{"id":"msg_mock","type":"message","role":"assistant","model":"{model}","content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{INPUT_TOKENS},"cache_creation_input_tokens":{CACHE_CREATION_TOKENS},"cache_creation":{{"ephemeral_5m_input_tokens":{CACHE_CREATION_5M_TOKENS},"ephemeral_1h_input_tokens":{CACHE_CREATION_1H_TOKENS}}},"cache_read_input_tokens":{CACHE_READ_TOKENS},"output_tokens":1}}}}}}"#
        )),
        ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
        ("ping", r#"{"type": "ping"}"#.to_owned()),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello from the mock, "}}"#.to_owned()),
        ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüße, 世界 🌍"}}"#.to_owned()),
        ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#.to_owned()),
        ("message_delta", format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{OUTPUT_TOKENS}}}}}"#
        )),
        ("message_stop", r#"{"type":"message_stop"}"#.to_owned()),
    ];
    let mut out = Vec::new();
    for (event, data) in events {
        out.extend_from_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
    }
    out
}

/// Cut `bytes` into chunks of sizes 1, 7, 3, 29, 2, 13, … so splits fall inside lines, inside
/// `data:` prefixes and inside multi-byte characters.
pub fn odd_chunks(bytes: &[u8]) -> Vec<Bytes> {
    const SIZES: [usize; 8] = [1, 7, 3, 29, 2, 13, 61, 5];
    let mut chunks = Vec::new();
    let mut at = 0;
    for size in SIZES.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        chunks.push(Bytes::copy_from_slice(&bytes[at..end]));
        at = end;
    }
    chunks
}

/// Told how a stream ended.
pub trait StreamObserver: Send + Sync {
    /// `completed`: sent to the end; otherwise the client went away (or the stream was broken).
    fn finished(&self, completed: bool);
}

/// A body sending chunks with a delay between them, optionally breaking after some.
///
/// Chunk `i` is due `i × delay` after the first, on a fixed schedule: a chunk sent late (the
/// timer has a 1 ms resolution, the task may wait for a core) does not push the later ones back,
/// so timings measured through a proxy compare with a direct connection's event by event.
pub struct ChunkedBody {
    chunks: std::collections::VecDeque<Bytes>,
    delay: Duration,
    /// When the first chunk went out.
    started: Option<tokio::time::Instant>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent: usize,
    fail_after: Option<usize>,
    observer: Option<Arc<dyn StreamObserver>>,
}

impl ChunkedBody {
    /// Send `chunks` with `delay` between them; break after `fail_after` chunks.
    pub fn new(
        chunks: Vec<Bytes>,
        delay: Duration,
        fail_after: Option<usize>,
        observer: Arc<dyn StreamObserver>,
    ) -> Self {
        Self {
            chunks: chunks.into(),
            delay,
            started: None,
            sleep: None,
            sent: 0,
            fail_after,
            observer: Some(observer),
        }
    }

    fn end(&mut self, completed: bool) {
        if let Some(observer) = self.observer.take() {
            observer.finished(completed);
        }
    }
}

impl Drop for ChunkedBody {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(tokio::time::Instant::now);
        if this.sent > 0 && !this.delay.is_zero() {
            let due = started + this.delay * u32::try_from(this.sent).unwrap_or(u32::MAX);
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            std::task::ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if this.fail_after == Some(this.sent) {
            // Let what was sent reach the client first, so the break is truly mid-stream.
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
            std::task::ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
            this.end(false);
            return Poll::Ready(Some(Err(std::io::Error::other(
                "mock: connection broken mid-stream",
            ))));
        }
        match this.chunks.pop_front() {
            Some(chunk) => {
                this.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            None => {
                this.end(true);
                Poll::Ready(None)
            }
        }
    }
}

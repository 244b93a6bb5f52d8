//! The response body of `Record`: passes every frame through as it comes, reading usage on the
//! way, and finishes the record when the body ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::Utc;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::Guard;
use super::usage::{JsonTap, SseTap};
use crate::BoxError;
use crate::error::envelope_json;
use crate::ratelimit::DEFAULT_COOLDOWN;

enum Tap {
    Sse(SseTap),
    Json(JsonTap),
    None,
}

pin_project! {
    /// Body of a recorded response. See [`RecordLayer`](super::RecordLayer).
    pub struct RecordBody<B> {
        #[pin]
        inner: B,
        guard: Guard,
        tap: Tap,
        ended: bool,
        // The server's shutdown, to end a stream cleanly when its grace period is over.
        #[pin]
        shutdown: Shutdown,
        shutdown_token: Option<CancellationToken>,
    }

    impl<B> PinnedDrop for RecordBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.ended {
                return;
            }
            // Cut short (the client went away, or the server's shutdown closed the connection):
            // the tokens seen so far were used all the same.
            keep_usage_so_far(this.guard, this.tap);
            if this.shutdown_token.as_ref().is_some_and(CancellationToken::is_cancelled) {
                this.guard.finish(Some(SHUTDOWN_CUT.to_owned()));
            }
            // Otherwise the guard records that the client went away.
        }
    }
}

pin_project! {
    #[project = ShutdownProj]
    enum Shutdown {
        Watching { #[pin] cancelled: WaitForCancellationFutureOwned },
        Off,
    }
}

/// What the record of a response cut by the server's shutdown says.
const SHUTDOWN_CUT: &str = "cut by the server's shutdown";

impl<B> RecordBody<B> {
    pub(crate) fn new(
        inner: B,
        guard: Guard,
        is_sse: bool,
        is_json: bool,
        shutdown: Option<CancellationToken>,
    ) -> Self {
        let tap = if is_sse {
            Tap::Sse(SseTap::default())
        } else if is_json {
            Tap::Json(JsonTap::default())
        } else {
            Tap::None
        };
        // Only a stream can be ended cleanly (with an `event: error`); other bodies are short,
        // and if one is still running when the connection is closed, the drop records it.
        let watching = match (&shutdown, is_sse) {
            (Some(token), true) => Shutdown::Watching {
                cancelled: token.clone().cancelled_owned(),
            },
            _ => Shutdown::Off,
        };
        Self {
            inner,
            guard,
            tap,
            ended: false,
            shutdown: watching,
            shutdown_token: shutdown,
        }
    }
}

/// The frame that tells an SSE client the stream broke: Anthropic's `event: error`.
fn error_frame(at_boundary: bool, kind: &str, message: &str) -> Bytes {
    let lead = if at_boundary { "" } else { "\n\n" };
    let json = envelope_json(kind, message);
    Bytes::from(format!("{lead}event: error\ndata: {json}\n\n"))
}

impl<B> Body for RecordBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let polled = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                let ShutdownProj::Watching { cancelled } = this.shutdown.project() else {
                    return Poll::Pending;
                };
                std::task::ready!(cancelled.poll(cx));
                // The grace period is over: end the stream the way Anthropic ends a broken
                // one, so the client knows it is incomplete, and say so in the record.
                *this.ended = true;
                let at_boundary = tap_boundary(this.tap);
                let _ = take_usage(this.guard, this.tap);
                this.guard.finish(Some(SHUTDOWN_CUT.to_owned()));
                let message = "the server is shutting down; this stream was cut before its end";
                let frame = error_frame(at_boundary, "overloaded_error", message);
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.guard.first_byte();
                    match this.tap {
                        Tap::Sse(tap) => tap.feed(data),
                        Tap::Json(tap) => tap.feed(data),
                        Tap::None => {}
                    }
                }
                // A server stops polling once the body says it is complete (content-length
                // reached), so the record is finished here rather than on a final `None`.
                if this.inner.is_end_stream() {
                    *this.ended = true;
                    let error = take_usage(this.guard, this.tap);
                    this.guard.finish(error);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                let message = format!("upstream stream failed: {error}");
                *this.ended = true;
                let is_sse = matches!(this.tap, Tap::Sse(_));
                let at_boundary = tap_boundary(this.tap);
                // Our message says more than an error event the stream may have carried.
                let _ = take_usage(this.guard, this.tap);
                this.guard.finish(Some(message.clone()));
                if is_sse {
                    let frame = error_frame(at_boundary, "api_error", &message);
                    Poll::Ready(Some(Ok(Frame::data(frame))))
                } else {
                    Poll::Ready(Some(Err(error)))
                }
            }
            None => {
                *this.ended = true;
                let error = take_usage(this.guard, this.tap);
                this.guard.finish(error);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn tap_boundary(tap: &Tap) -> bool {
    match tap {
        Tap::Sse(tap) => tap.at_boundary(),
        _ => true,
    }
}

/// A body cut short: move the usage read so far into the record (input and cache counts from
/// `message_start`, output from the last `usage` seen).
fn keep_usage_so_far(guard: &mut Guard, tap: &mut Tap) {
    let Some(record) = guard.record_mut() else {
        return;
    };
    if let Tap::Sse(tap) = tap {
        record.usage = tap.usage();
        if record.model.is_none() {
            record.model = tap.model().map(str::to_owned);
        }
    }
}

/// Move what the tap read into the record; returns the error the body itself reported.
fn take_usage(guard: &mut Guard, tap: &mut Tap) -> Option<String> {
    let account = guard.account.clone();
    let record = guard.record_mut()?;
    match tap {
        Tap::Sse(tap) => {
            tap.finish();
            record.usage = tap.usage();
            if record.model.is_none() {
                record.model = tap.model().map(str::to_owned);
            }
            let error = tap.error()?;
            // A limit announced inside a 200 stream still benches the account.
            if error.kind == "rate_limit_error" {
                if let Some(account) = account {
                    account.mark_rate_limited(Utc::now() + DEFAULT_COOLDOWN);
                }
            }
            Some(format!("stream error: {}: {}", error.kind, error.message))
        }
        Tap::Json(tap) => {
            let summary = tap.finish();
            record.usage = summary.usage;
            if record.model.is_none() {
                record.model = summary.model;
            }
            summary.error
        }
        Tap::None => None,
    }
}

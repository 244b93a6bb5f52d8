//! The response body of `Record`: passes every frame through as it comes, reading usage on the
//! way, and finishes the record when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::Utc;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

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
    }
}

impl<B> RecordBody<B> {
    pub(crate) fn new(inner: B, guard: Guard, is_sse: bool, is_json: bool) -> Self {
        let tap = if is_sse {
            Tap::Sse(SseTap::default())
        } else if is_json {
            Tap::Json(JsonTap::default())
        } else {
            Tap::None
        };
        Self {
            inner,
            guard,
            tap,
            ended: false,
        }
    }
}

/// The frame that tells an SSE client the stream broke: Anthropic's `event: error`.
fn error_frame(at_boundary: bool, message: &str) -> Bytes {
    let lead = if at_boundary { "" } else { "\n\n" };
    let json = envelope_json("api_error", message);
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
        match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
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
                    Poll::Ready(Some(Ok(Frame::data(error_frame(at_boundary, &message)))))
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

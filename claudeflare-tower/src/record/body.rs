//! The response body of `Record`: passes every frame through as it comes, reading usage on the
//! way, and finishes the record when the body ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::Utc;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Guard;
use crate::BoxError;
use crate::provider::{Provider, TapSummary, UsageTap};

pin_project! {
    /// Body of a recorded response. See [`RecordLayer`](super::RecordLayer).
    pub struct RecordBody<B, P: Provider> {
        #[pin]
        inner: B,
        guard: Guard<P>,
        tap: P::Tap,
        ended: bool,
        // The server's shutdown, to end a stream cleanly when its grace period is over.
        #[pin]
        shutdown: Shutdown,
    }

    impl<B, P: Provider> PinnedDrop for RecordBody<B, P> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.ended {
                return;
            }
            // Cut short (the client went away, or the server's shutdown closed the connection):
            // the tokens seen so far were used all the same.
            keep(this.guard, this.tap.so_far());
            let shutdown = this.guard.shared.shutdown.as_ref();
            if shutdown.is_some_and(tokio_util::sync::CancellationToken::is_cancelled) {
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

impl<B, P: Provider> RecordBody<B, P> {
    pub(crate) fn new(inner: B, guard: Guard<P>, tap: P::Tap) -> Self {
        // Only a stream can be ended cleanly (with an error event); other bodies are short,
        // and if one is still running when the connection is closed, the drop records it.
        let shutdown = match &guard.shared.shutdown {
            Some(token) if tap.is_stream() => Shutdown::Watching {
                cancelled: token.clone().cancelled_owned(),
            },
            _ => Shutdown::Off,
        };
        Self {
            inner,
            guard,
            tap,
            ended: false,
            shutdown,
        }
    }
}

impl<B, P> Body for RecordBody<B, P>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    P: Provider,
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
                let message = "the server is shutting down; this stream was cut before its end";
                let frame = this.tap.error_event("overloaded_error", message);
                let _ = take_usage(this.guard, this.tap);
                this.guard.finish(Some(SHUTDOWN_CUT.to_owned()));
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
        };
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.guard.first_byte();
                    this.tap.feed(data);
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
                let frame = this
                    .tap
                    .is_stream()
                    .then(|| this.tap.error_event("api_error", &message));
                // Our message says more than an error event the stream may have carried.
                let _ = take_usage(this.guard, this.tap);
                this.guard.finish(Some(message));
                if let Some(frame) = frame {
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

/// Move what a body cut short said so far into the record (input and cache counts from the
/// stream's start, output from the last usage seen).
fn keep<P>(guard: &mut Guard<P>, summary: TapSummary) {
    let Some(record) = guard.record_mut() else {
        return;
    };
    record.usage = summary.usage;
    record.billing = summary.billing;
    if summary.model.is_some() {
        record.model = summary.model;
    }
}

/// Move what the tap read into the record, and apply an error announced inside the stream to
/// the account as the provider classifies it; returns the error the body itself reported.
fn take_usage<P: Provider>(guard: &mut Guard<P>, tap: &mut P::Tap) -> Option<String> {
    let mut summary = tap.finish();
    let error = summary.error.take();
    if let (Some(stream_error), Some(account), Some(pool)) =
        (&summary.stream_error, &guard.account, &guard.shared.pool)
    {
        let now = Utc::now();
        let classification =
            guard
                .shared
                .provider
                .classify_stream_error(account, stream_error, now);
        pool.observe_in_stream(account, &classification, now);
    }
    keep(guard, summary);
    error
}

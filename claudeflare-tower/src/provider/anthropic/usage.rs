//! Reading token usage from a response as it streams by, without holding any byte back.
//!
//! For SSE, input and cache counts come from `message_start` and the final `output_tokens` from
//! the last `message_delta`; an `event: error` is remembered. The served model is
//! `message_start`'s, unless a server-side fallback relabels it: a `fallback` content block
//! (`to.model`) or a `fallback_message` entry of `usage.iterations`. Only the lines of those
//! events are copied (and only when a line spans chunks); the bulk of a stream, the content
//! deltas, is skipped with `memchr`. A JSON body is collected (up to a cap) and read at its end.
//!
//! Hand-written rather than a general SSE parser because it runs over every streamed byte:
//! Criterion measures it at 5.5 GiB/s on a 5,000-event stream (`hot_paths`, docs/benchmarks-history.md),
//! against an aim of 1 GB/s; a parser that decodes every event would copy each content delta.

use std::borrow::Cow;

use serde::Deserialize;

use crate::provider::{Billing, Iteration, StreamError, Usage};

/// Lines longer than this are never needed (usage events are small) and are skipped.
const MAX_LINE: usize = 256 * 1024;
/// A non-streaming body larger than this is passed through without reading its usage.
const MAX_JSON: usize = 16 * 1024 * 1024;
/// A `content_block_start` longer than this is not a `fallback` block (which is a few hundred
/// bytes), and is skipped: a web search's results start with one of a hundred kilobytes.
const MAX_BLOCK_START: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// No `event:` line yet in this event.
    Unnamed,
    /// An event whose data holds usage or an error.
    Wanted,
    /// A `content_block_start`: wanted when it is a small `fallback` block.
    BlockStart,
    /// Any other event (`content_block_delta`, `ping`, …).
    Other,
}

/// Incremental SSE parser that keeps only usage, model and errors.
#[derive(Debug)]
pub(crate) struct SseTap {
    event: Event,
    /// A line that started in an earlier chunk.
    partial: Vec<u8>,
    /// The rest of the current line is not needed.
    skipping: bool,
    /// `data:` of the current wanted event.
    data: Vec<u8>,
    /// The last complete line was blank (or nothing came yet): an error frame can follow cleanly.
    at_boundary: bool,
    usage: Usage,
    model: Option<String>,
    /// `to.model` of the last `fallback` block.
    fallback_to: Option<String>,
    billing: Billing,
    error: Option<StreamError>,
}

impl Default for SseTap {
    fn default() -> Self {
        Self {
            event: Event::Unnamed,
            partial: Vec::new(),
            skipping: false,
            data: Vec::new(),
            at_boundary: true,
            usage: Usage::default(),
            model: None,
            fallback_to: None,
            billing: Billing::default(),
            error: None,
        }
    }
}

fn event_kind(name: &[u8]) -> Event {
    match name {
        b"message_start" | b"message_delta" | b"error" => Event::Wanted,
        b"content_block_start" => Event::BlockStart,
        _ => Event::Other,
    }
}

/// Whether the data of a `content_block_start` can be a `fallback` block.
fn fallback_block(data: &[u8]) -> bool {
    data.len() <= MAX_BLOCK_START && memchr::memmem::find(data, b"\"fallback\"").is_some()
}

fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// Whether a `data:` payload of an unnamed event is one of the wanted types.
fn wanted_data(data: &[u8]) -> bool {
    [
        &b"{\"type\":\"message_start\""[..],
        b"{\"type\":\"message_delta\"",
        b"{\"type\":\"error\"",
        b"{\"type\":\"content_block_start\"",
    ]
    .iter()
    .any(|prefix| data.starts_with(prefix) || prefix.starts_with(data))
}

#[derive(Deserialize)]
struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_creation: Option<WireCacheCreation>,
    speed: Option<String>,
    inference_geo: Option<String>,
    iterations: Option<Vec<WireIteration>>,
}

/// One entry of `usage.iterations`: its kind and model beside the token counts of a usage.
/// (`flatten` costs serde a buffer per entry; entries come only with a fallback or a tool
/// loop, a few per answer.)
#[derive(Deserialize)]
struct WireIteration {
    #[serde(rename = "type")]
    kind: Option<String>,
    model: Option<String>,
    #[serde(flatten)]
    tokens: WireUsage,
}

#[derive(Deserialize)]
struct WireCacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

impl WireUsage {
    fn merge_into(&self, usage: &mut Usage) {
        let set = |slot: &mut u64, value: Option<u64>| {
            if let Some(value) = value {
                *slot = value;
            }
        };
        set(&mut usage.input_tokens, self.input_tokens);
        set(&mut usage.output_tokens, self.output_tokens);
        set(
            &mut usage.cache_read_input_tokens,
            self.cache_read_input_tokens,
        );
        set(
            &mut usage.cache_creation_input_tokens,
            self.cache_creation_input_tokens,
        );
        if let Some(split) = &self.cache_creation {
            usage.split_cache_creation(
                split.ephemeral_5m_input_tokens,
                split.ephemeral_1h_input_tokens,
            );
        }
    }

    /// Move speed, region and attempts into `billing` (each only when this usage names it).
    fn billing_into(self, billing: &mut Billing) {
        if self.speed.is_some() {
            billing.speed = self.speed;
        }
        if self.inference_geo.is_some() {
            billing.inference_geo = self.inference_geo;
        }
        if let Some(iterations) = self.iterations {
            billing.iterations = iterations.into_iter().map(WireIteration::into).collect();
        }
    }
}

impl From<WireIteration> for Iteration {
    fn from(wire: WireIteration) -> Self {
        let mut usage = Usage::default();
        wire.tokens.merge_into(&mut usage);
        Iteration::new(wire.kind.unwrap_or_default(), wire.model, usage)
    }
}

#[derive(Deserialize)]
struct WireMessage {
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct WireModel {
    model: Option<String>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: Option<String>,
    to: Option<WireModel>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(rename = "type")]
    kind: String,
    message: Option<WireMessage>,
    usage: Option<WireUsage>,
    error: Option<WireError>,
    content_block: Option<WireBlock>,
}

impl SseTap {
    /// Feed the next chunk of the stream.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = chunk.split_at(end);
            chunk = &rest[1..];
            if self.skipping {
                self.skipping = false;
                self.at_boundary = false;
            } else if self.partial.is_empty() {
                self.line(head);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line);
                line.clear();
                self.partial = line;
            }
        }
        if !chunk.is_empty() && !self.skipping {
            self.partial.extend_from_slice(chunk);
            if !self.partial_may_be_wanted() {
                self.partial.clear();
                self.skipping = true;
            }
        }
    }

    /// Decide as early as possible whether an unfinished line can matter, so a long content
    /// delta split over many chunks is never accumulated.
    fn partial_may_be_wanted(&self) -> bool {
        let line = self.partial.as_slice();
        if line.len() > MAX_LINE {
            return false;
        }
        // The first half of a CRLF blank line: the end of an event, which must not be skipped
        // (found by the property test: a cut between `\r` and `\n` lost the next event).
        if line == b"\r" {
            return true;
        }
        if b"event:".starts_with(line) || b"data:".starts_with(line) {
            return true;
        }
        if line.starts_with(b"event:") {
            return true;
        }
        match (field(line, b"data"), self.event) {
            (Some(_), Event::Wanted) => true,
            (Some(data), Event::BlockStart) => data.len() <= MAX_BLOCK_START,
            (Some(data), Event::Unnamed) => wanted_data(data),
            _ => false,
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            self.at_boundary = true;
            return;
        }
        self.at_boundary = false;
        if let Some(name) = field(line, b"event") {
            self.event = event_kind(name);
        } else if let Some(data) = field(line, b"data") {
            let wanted = match self.event {
                Event::Wanted => true,
                Event::BlockStart => fallback_block(data),
                Event::Unnamed => {
                    wanted_data(data)
                        && (!data.starts_with(b"{\"type\":\"content_block_start\"")
                            || fallback_block(data))
                }
                Event::Other => false,
            };
            if wanted && data.len() <= MAX_LINE {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(data);
            }
        }
    }

    fn dispatch(&mut self) {
        self.event = Event::Unnamed;
        if self.data.is_empty() {
            return;
        }
        if let Ok(event) = serde_json::from_slice::<WireEvent>(&self.data) {
            match event.kind.as_str() {
                "message_start" => {
                    if let Some(message) = event.message {
                        if let Some(usage) = message.usage {
                            usage.merge_into(&mut self.usage);
                            usage.billing_into(&mut self.billing);
                        }
                        self.model = message.model.or(self.model.take());
                    }
                }
                "message_delta" => {
                    if let Some(usage) = event.usage {
                        usage.merge_into(&mut self.usage);
                        usage.billing_into(&mut self.billing);
                    }
                }
                "content_block_start" => {
                    if let Some(WireBlock {
                        kind: Some(kind),
                        to: Some(WireModel { model: Some(to) }),
                    }) = event.content_block
                    {
                        if kind == "fallback" {
                            self.fallback_to = Some(to);
                        }
                    }
                }
                "error" => {
                    let error = event.error;
                    self.error = Some(StreamError {
                        kind: error
                            .as_ref()
                            .and_then(|e| e.kind.clone())
                            .unwrap_or_else(|| "error".into()),
                        message: error.and_then(|e| e.message).unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
        self.data.clear();
    }

    /// The stream ended: dispatch an event that lacked its final blank line.
    pub(crate) fn finish(&mut self) {
        if !self.partial.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.dispatch();
    }

    /// Tokens seen so far.
    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }

    /// The model that served: the last `fallback` block's `to.model`, else the
    /// `fallback_message` attempt's, else the one `message_start` named.
    pub(crate) fn model(&self) -> Option<&str> {
        self.fallback_to
            .as_deref()
            .or_else(|| self.billing.fallback_model())
            .or(self.model.as_deref())
    }

    /// Speed, region and attempts, as far as the stream said.
    pub(crate) fn billing(&self) -> &Billing {
        &self.billing
    }

    /// The same, taken out (the stream ended).
    pub(crate) fn take_billing(&mut self) -> Billing {
        std::mem::take(&mut self.billing)
    }

    /// An `event: error` seen in the stream.
    pub(crate) fn error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    /// Whether the bytes so far end at an event boundary (so a frame can be appended cleanly).
    pub(crate) fn at_boundary(&self) -> bool {
        self.at_boundary && self.partial.is_empty() && !self.skipping
    }
}

/// Collects a JSON body to read its `usage` and `model` at the end.
#[derive(Debug, Default)]
pub(crate) struct JsonTap {
    body: Vec<u8>,
    overflow: bool,
}

/// What a finished JSON body said.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct JsonSummary {
    /// Its usage.
    pub usage: Usage,
    /// Its model.
    pub model: Option<String>,
    /// Speed, region and attempts.
    pub billing: Billing,
    /// `error.message` of an error envelope.
    pub error: Option<String>,
}

impl JsonTap {
    /// Feed the next chunk.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len() + chunk.len() > MAX_JSON {
            self.overflow = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// Read the collected body: only its top-level `model`, `usage` and `error` are kept, the
    /// rest (the content) is skipped by serde_json. A body that is not one whole JSON object
    /// tells nothing; a `usage` whose counts are not numbers is left out.
    pub(crate) fn finish(&mut self) -> JsonSummary {
        #[derive(Deserialize)]
        struct WireAnswer<'a> {
            #[serde(borrow)]
            model: Option<Cow<'a, str>>,
            // Skipped over as raw text, then read on its own: a `usage` that does not fit
            // `WireUsage` is left out without costing the rest of the answer. Read into a
            // `serde_json::Value` first instead, each answer cost about 10,000 instructions
            // more (a map and a string per field; callgrind, docs/benchmarks-history.md).
            #[serde(borrow)]
            usage: Option<&'a serde_json::value::RawValue>,
            error: Option<WireError>,
        }
        let body = std::mem::take(&mut self.body);
        let Ok(answer) = serde_json::from_slice::<WireAnswer<'_>>(&body) else {
            return JsonSummary::default();
        };
        let mut summary = JsonSummary {
            model: answer.model.map(Cow::into_owned),
            error: answer.error.and_then(|e| e.message),
            ..JsonSummary::default()
        };
        if let Some(usage) = answer
            .usage
            .and_then(|u| serde_json::from_str::<WireUsage>(u.get()).ok())
        {
            usage.merge_into(&mut summary.usage);
            usage.billing_into(&mut summary.billing);
        }
        if summary.model.is_none() {
            summary.model = summary.billing.fallback_model().map(str::to_owned);
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":7,\"cache_creation\":{\"ephemeral_5m_input_tokens\":3,\"ephemeral_1h_input_tokens\":4},\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
        "\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Grüße, 世界 🌍! event: message_delta\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":42}}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    const EXPECTED: Usage = Usage {
        input_tokens: 25,
        output_tokens: 42,
        cache_read_input_tokens: 1000,
        cache_creation_input_tokens: 7,
        cache_creation_1h_input_tokens: 4,
    };

    fn run(chunks: &[&[u8]]) -> SseTap {
        let mut tap = SseTap::default();
        for chunk in chunks {
            tap.feed(chunk);
        }
        tap.finish();
        tap
    }

    #[test]
    fn every_split_point_gives_the_same_usage() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let tap = run(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(tap.usage(), EXPECTED, "split at {split}");
            assert_eq!(
                tap.model(),
                Some("claude-sonnet-4-20250514"),
                "split at {split}"
            );
        }
        // And every byte on its own, then every pair of split points in a prefix.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).usage(), EXPECTED);
        for a in (0..bytes.len()).step_by(7) {
            for b in (a..bytes.len()).step_by(13) {
                let tap = run(&[&bytes[..a], &bytes[a..b], &bytes[b..]]);
                assert_eq!(tap.usage(), EXPECTED, "splits at {a},{b}");
            }
        }
    }

    #[test]
    fn crlf_line_ends() {
        let crlf = STREAM.replace('\n', "\r\n");
        let bytes = crlf.as_bytes();
        for split in 0..=bytes.len() {
            assert_eq!(
                run(&[&bytes[..split], &bytes[split..]]).usage(),
                EXPECTED,
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_cut_inside_a_crlf_blank_line_loses_no_event() {
        let crlf = STREAM.replace('\n', "\r\n");
        let bytes = crlf.as_bytes();
        let end_of_start = crlf.find("\r\n\r\n").unwrap() + 3;
        assert_eq!(&bytes[end_of_start - 1..=end_of_start], b"\r\n");
        let tap = run(&[&bytes[..end_of_start], &bytes[end_of_start..]]);
        assert_eq!(tap.usage(), EXPECTED);
        // And with two deltas, the second (the final count) wins wherever the cut falls.
        let twice = format!(
            "{}event: message_delta\r\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":99}}}}\r\n\r\n",
            crlf
        );
        for cut in 0..=twice.len() {
            let tap = run(&[&twice.as_bytes()[..cut], &twice.as_bytes()[cut..]]);
            assert_eq!(tap.usage().output_tokens, 99, "cut at {cut}");
        }
    }

    #[test]
    fn stream_without_message_delta_keeps_start_counts() {
        let cut = STREAM.find("\nevent: message_delta").unwrap() + 1;
        let tap = run(&[&STREAM.as_bytes()[..cut]]);
        assert_eq!(
            tap.usage(),
            Usage {
                output_tokens: 1,
                ..EXPECTED
            },
            "output_tokens stays at message_start's value"
        );
        assert!(tap.at_boundary());
    }

    #[test]
    fn unnamed_events_and_missing_final_blank_line() {
        let stream = "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}";
        let tap = run(&[stream.as_bytes()]);
        assert_eq!(tap.usage().input_tokens, 3);
        assert_eq!(tap.usage().output_tokens, 9);
    }

    #[test]
    fn error_event_is_kept() {
        let stream = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let tap = run(&[stream.as_bytes()]);
        assert_eq!(
            tap.error(),
            Some(&StreamError {
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            })
        );
    }

    #[test]
    fn boundary_tracking() {
        let mut tap = SseTap::default();
        assert!(tap.at_boundary());
        tap.feed(b"event: ping\ndata: {}");
        assert!(!tap.at_boundary());
        tap.feed(b"\n");
        assert!(!tap.at_boundary());
        tap.feed(b"\n");
        assert!(tap.at_boundary());
        tap.feed(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":\"long",
        );
        assert!(!tap.at_boundary(), "inside a skipped line");
    }

    #[test]
    fn long_content_lines_are_not_accumulated() {
        let mut tap = SseTap::default();
        tap.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"x\":\"");
        for _ in 0..1000 {
            tap.feed(&[b'a'; 1024]);
        }
        assert!(tap.partial.capacity() < 4096, "skipped, not buffered");
        tap.feed(b"\"}\n\n");
        tap.finish();
        assert_eq!(tap.usage(), Usage::default());
    }

    #[test]
    fn garbage_is_harmless() {
        let tap = run(&[b"data: {not json\n\n\xff\xfe\n\nevent: message_delta\ndata: [1,2]\n\n"]);
        assert_eq!(tap.usage(), Usage::default());
        assert!(tap.error().is_none());
    }

    #[test]
    fn json_body_usage() {
        let mut tap = JsonTap::default();
        let body = br#"{"id":"msg_1","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":2,"cache_creation_input_tokens":0}}"#;
        for chunk in body.chunks(17) {
            tap.feed(chunk);
        }
        let summary = tap.finish();
        assert_eq!(summary.model.as_deref(), Some("claude-3-5-haiku-20241022"));
        assert_eq!(
            summary.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_input_tokens: 2,
                cache_creation_input_tokens: 0,
                cache_creation_1h_input_tokens: 0,
            }
        );
        // Cache writes split by lifetime; a split without the total still counts.
        let mut tap = JsonTap::default();
        tap.feed(br#"{"model":"m","usage":{"input_tokens":1,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20}}}"#);
        let usage = tap.finish().usage;
        assert_eq!(
            (
                usage.cache_creation_input_tokens,
                usage.cache_creation_1h_input_tokens,
                usage.cache_creation_5m_input_tokens()
            ),
            (30, 20, 10)
        );
        let mut tap = JsonTap::default();
        tap.feed(br#"{"usage":{"cache_creation":{"ephemeral_1h_input_tokens":5}}}"#);
        let usage = tap.finish().usage;
        assert_eq!(
            (
                usage.cache_creation_input_tokens,
                usage.cache_creation_1h_input_tokens
            ),
            (5, 5)
        );
        let mut tap = JsonTap::default();
        tap.feed(br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#);
        assert_eq!(tap.finish().error.as_deref(), Some("bad"));
        // Only the answer's own usage counts, not one quoted in its content or a tool's input.
        let mut tap = JsonTap::default();
        tap.feed(br#"{"content":[{"type":"text","text":"\"usage\":{\"input_tokens\":99}"},{"type":"tool_use","input":{"usage":{"input_tokens":98}}}],"usage":{"input_tokens":7,"output_tokens":null},"model":"m"}"#);
        let summary = tap.finish();
        assert_eq!(summary.model.as_deref(), Some("m"));
        assert_eq!(
            summary.usage,
            Usage {
                input_tokens: 7,
                ..Usage::default()
            }
        );
        // A body cut short tells nothing.
        let mut tap = JsonTap::default();
        tap.feed(br#"{"model":"m","usage":{"input_tokens":7}"#);
        assert_eq!(tap.finish(), JsonSummary::default());
    }

    /// A server-side fallback as the Python SDK's `fallback_response.txt` fixture streams it:
    /// `message_start` names the model asked for, the `fallback` block the one that served.
    const FALLBACK_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fb\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-opus-4-7\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"fallback\",\"from\":{\"model\":\"claude-opus-4-7\"},\"to\":{\"model\":\"claude-sonnet-4-5\"},\"trigger\":{\"type\":\"refusal\",\"category\":null}}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n",
        "\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n",
        "\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"A fallback block: \\\"fallback\\\"\"}}\n",
        "\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n",
        "\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":8,\"iterations\":[{\"type\":\"message\",\"model\":\"claude-opus-4-7\",\"input_tokens\":25,\"output_tokens\":0,\"cache_read_input_tokens\":0,\"cache_creation_input_tokens\":0},{\"type\":\"fallback_message\",\"model\":\"claude-sonnet-4-5\",\"input_tokens\":25,\"output_tokens\":8,\"cache_read_input_tokens\":0,\"cache_creation_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":0}}]}}\n",
        "\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n",
        "\n",
    );

    #[test]
    fn a_fallback_block_names_the_served_model_at_every_split() {
        let bytes = FALLBACK_STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let tap = run(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(tap.model(), Some("claude-sonnet-4-5"), "split at {split}");
            assert_eq!(tap.usage().output_tokens, 8, "split at {split}");
            let iterations = &tap.billing().iterations;
            assert_eq!(iterations.len(), 2, "split at {split}");
            assert_eq!(iterations[0].kind, "message");
            assert_eq!(iterations[0].model.as_deref(), Some("claude-opus-4-7"));
            assert_eq!(iterations[1].kind, Iteration::FALLBACK_MESSAGE);
            assert_eq!(iterations[1].usage.output_tokens, 8);
        }
    }

    #[test]
    fn without_a_block_the_fallback_attempt_or_message_start_names_the_model() {
        // Sticky-routed to the fallback model: no block, only the attempt in the iterations.
        let sticky = FALLBACK_STREAM.replace("\"type\":\"fallback\",", "\"type\":\"other\",");
        assert_eq!(run(&[sticky.as_bytes()]).model(), Some("claude-sonnet-4-5"));
        // As `fallback_credit_response.txt` streams a retry on the model asked for: the model
        // of `message_start`, with `fallback_credit` in the usage (not a token count).
        let credit = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_c\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":8,\"fallback_credit\":{\"status\":{\"type\":\"redeemed\"}}}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let tap = run(&[credit.as_bytes()]);
        assert_eq!(tap.model(), Some("claude-sonnet-4-5"));
        assert_eq!(
            (tap.usage().input_tokens, tap.usage().output_tokens),
            (25, 8)
        );
        assert!(tap.billing().iterations.is_empty());
    }

    #[test]
    fn speed_and_region_are_read_from_the_stream_and_the_json_answer() {
        let stream = STREAM.replace(
            "\"output_tokens\":1}",
            "\"output_tokens\":1,\"speed\":\"fast\",\"inference_geo\":\"us\"}",
        );
        let tap = run(&[stream.as_bytes()]);
        assert_eq!(tap.billing().speed.as_deref(), Some("fast"));
        assert_eq!(tap.billing().inference_geo.as_deref(), Some("us"));

        let mut json = JsonTap::default();
        json.feed(br#"{"model":"claude-sonnet-4-5","content":[{"type":"fallback","from":{"model":"claude-opus-4-7"},"to":{"model":"claude-sonnet-4-5"}}],"usage":{"input_tokens":25,"output_tokens":8,"speed":"standard","inference_geo":"global","iterations":[{"type":"fallback_message","model":"claude-sonnet-4-5","input_tokens":25,"output_tokens":8}]}}"#);
        let summary = json.finish();
        assert_eq!(summary.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(summary.billing.speed.as_deref(), Some("standard"));
        assert_eq!(summary.billing.inference_geo.as_deref(), Some("global"));
        assert_eq!(summary.billing.iterations.len(), 1);
        assert_eq!(summary.billing.iterations[0].usage.input_tokens, 25);
    }

    #[test]
    fn a_large_block_start_is_skipped_not_gathered() {
        // A web search's results open with one big `content_block_start`; it names "fallback"
        // in its text, but is no fallback block and must not relabel the model.
        let big = format!(
            "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"web_search_tool_result\",\"content\":\"{} \\\"fallback\\\"\",\"to\":{{\"model\":\"x\"}}}}}}\n\n",
            "x".repeat(MAX_BLOCK_START)
        );
        let stream = STREAM.replacen(
            "event: content_block_start",
            &format!("{big}event: content_block_start"),
            1,
        );
        let bytes = stream.as_bytes();
        for split in (0..bytes.len()).step_by(97) {
            let tap = run(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(
                tap.model(),
                Some("claude-sonnet-4-20250514"),
                "split at {split}"
            );
            assert!(
                tap.partial.capacity() <= 2 * MAX_BLOCK_START + 1024,
                "split at {split}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A plain reference: split the whole stream into lines, group them into events at blank
    /// lines, read each wanted event's data with serde_json.
    fn reference(stream: &[u8]) -> (Usage, Option<String>, Option<StreamError>) {
        let text = String::from_utf8_lossy(stream);
        let mut usage = Usage::default();
        let mut model = None;
        let mut error = None;
        let mut event: Option<String> = None;
        let mut data: Vec<String> = Vec::new();
        let mut apply = |event: &Option<String>, data: &[String]| {
            if data.is_empty() {
                return;
            }
            let Ok(value) = serde_json::from_str::<Value>(&data.join("\n")) else {
                return;
            };
            let kind = value["type"].as_str().unwrap_or_default();
            if event.as_deref().is_some_and(|e| e != kind && e != "error") {
                return;
            }
            let take = |usage: &mut Usage, u: &Value| {
                for (key, slot) in [
                    ("input_tokens", &mut usage.input_tokens),
                    ("output_tokens", &mut usage.output_tokens),
                    (
                        "cache_read_input_tokens",
                        &mut usage.cache_read_input_tokens,
                    ),
                    (
                        "cache_creation_input_tokens",
                        &mut usage.cache_creation_input_tokens,
                    ),
                ] {
                    if let Some(n) = u[key].as_u64() {
                        *slot = n;
                    }
                }
                if u["cache_creation"].is_object() {
                    let five = u["cache_creation"]["ephemeral_5m_input_tokens"]
                        .as_u64()
                        .unwrap_or(0);
                    let hour = u["cache_creation"]["ephemeral_1h_input_tokens"]
                        .as_u64()
                        .unwrap_or(0);
                    usage.cache_creation_1h_input_tokens = hour;
                    usage.cache_creation_input_tokens =
                        usage.cache_creation_input_tokens.max(five + hour);
                }
            };
            match kind {
                "message_start" => {
                    take(&mut usage, &value["message"]["usage"]);
                    if let Some(m) = value["message"]["model"].as_str() {
                        model = Some(m.to_owned());
                    }
                }
                "message_delta" => take(&mut usage, &value["usage"]),
                "error" => {
                    error = Some(StreamError {
                        kind: value["error"]["type"]
                            .as_str()
                            .unwrap_or("error")
                            .to_owned(),
                        message: value["error"]["message"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    })
                }
                _ => {}
            }
        };
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                apply(&event, &data);
                event = None;
                data.clear();
            } else if let Some(name) = line.strip_prefix("event:") {
                event = Some(name.strip_prefix(' ').unwrap_or(name).to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            }
        }
        apply(&event, &data);
        (usage, model, error)
    }

    fn tapped(
        stream: &[u8],
        cuts: &[prop::sample::Index],
    ) -> (Usage, Option<String>, Option<StreamError>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut tap = SseTap::default();
        let mut from = 0;
        for to in points.into_iter().chain([stream.len()]) {
            tap.feed(&stream[from..to]);
            from = to;
        }
        tap.finish();
        (
            tap.usage(),
            tap.model().map(str::to_owned),
            tap.error().cloned(),
        )
    }

    /// A message stream as Anthropic sends it, with random counts, texts and line ends.
    fn message_stream() -> impl Strategy<Value = (Vec<u8>, Usage)> {
        (
            any::<(u32, u32, u32, u16, u16)>(),
            prop::collection::vec((r#"[a-zé🌍 "\\{}:\n]{0,20}"#, any::<bool>()), 0..5),
            prop::collection::vec(any::<u32>(), 0..3),
            "[a-z0-9-]{1,20}",
            any::<bool>(),
        )
            .prop_map(|((input, read, first_output, five, hour), texts, deltas, model, crlf)| {
                let mut events = vec![(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m", "model": model, "content": [],
                        "usage": {"input_tokens": input, "cache_read_input_tokens": read,
                                  "cache_creation_input_tokens": u32::from(five) + u32::from(hour),
                                  "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
                                  "output_tokens": first_output}}}),
                )];
                for (text, ping) in texts {
                    if ping {
                        events.push(("ping", json!({"type": "ping"})));
                    }
                    events.push((
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                    ));
                }
                for output in &deltas {
                    events.push((
                        "message_delta",
                        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}}),
                    ));
                }
                events.push(("message_stop", json!({"type": "message_stop"})));
                let end = if crlf { "\r\n" } else { "\n" };
                let mut stream = String::new();
                for (name, data) in events {
                    stream.push_str(&format!("event: {name}{end}data: {data}{end}{end}"));
                }
                let expected = Usage {
                    input_tokens: u64::from(input),
                    output_tokens: u64::from(deltas.last().copied().unwrap_or(first_output)),
                    cache_read_input_tokens: u64::from(read),
                    cache_creation_input_tokens: u64::from(five) + u64::from(hour),
                    cache_creation_1h_input_tokens: u64::from(hour),
                };
                (stream.into_bytes(), expected)
            })
    }

    /// Bytes that look like SSE often enough to reach every branch of the tap.
    fn sse_like() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just(b"event: ".to_vec()),
                Just(b"data: ".to_vec()),
                Just(b"message_start".to_vec()),
                Just(b"message_delta".to_vec()),
                Just(b"error".to_vec()),
                Just(
                    br#"{"type":"message_start","message":{"usage":{"input_tokens":5}}}"#.to_vec()
                ),
                Just(br#"{"type":"message_delta","usage":{"output_tokens":7}}"#.to_vec()),
                Just(
                    br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#
                        .to_vec()
                ),
                Just(b"\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b":".to_vec()),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn a_json_answer_reads_as_serde_json_values_say(
            model in prop::option::of(r#"[a-z0-9"\\é-]{0,12}"#),
            input in any::<u32>(),
            output in prop::option::of(any::<u32>()),
            text in r#"[ -~é🌍]{0,64}"#,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut answer = json!({"id": "msg", "content": [{"type": "text", "text": text},
                {"type": "tool_use", "input": {"usage": {"input_tokens": 1}, "model": "not this"}}],
                "usage": {"input_tokens": input, "output_tokens": output}});
            if let Some(model) = &model {
                answer["model"] = json!(model);
            }
            let bytes = serde_json::to_vec(&answer).unwrap();
            let at = cut.index(bytes.len() + 1);
            let mut tap = JsonTap::default();
            tap.feed(&bytes[..at]);
            tap.feed(&bytes[at..]);
            let summary = tap.finish();
            // The reference: the whole answer as a serde_json value.
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(summary.model.as_deref(), value["model"].as_str());
            prop_assert_eq!(summary.usage.input_tokens, value["usage"]["input_tokens"].as_u64().unwrap());
            prop_assert_eq!(summary.usage.output_tokens, value["usage"]["output_tokens"].as_u64().unwrap_or(0));
            // Cut short, it tells nothing.
            if at < bytes.len() {
                let mut tap = JsonTap::default();
                tap.feed(&bytes[..at]);
                prop_assert_eq!(tap.finish(), JsonSummary::default());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_json_tap(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut tap = JsonTap::default();
            tap.feed(&bytes);
            let _ = tap.finish();
        }

        #[test]
        fn a_message_stream_cut_anywhere_gives_its_usage(
            (stream, expected) in message_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let (usage, model, error) = tapped(&stream, &cuts);
            prop_assert_eq!(usage, expected);
            let (ref_usage, ref_model, ref_error) = reference(&stream);
            prop_assert_eq!(usage, ref_usage);
            prop_assert_eq!(model, ref_model);
            prop_assert_eq!(error, ref_error);
        }

        #[test]
        fn arbitrary_bytes_cut_anywhere_never_panic_and_read_alike(
            stream in sse_like(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let whole = tapped(&stream, &[]);
            prop_assert_eq!(tapped(&stream, &cuts), whole);
        }
    }
}

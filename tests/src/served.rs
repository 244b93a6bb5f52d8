//! Answers that say more about how they were served: by another model than the one asked for
//! (a server-side fallback, with its `fallback` block and `usage.iterations`), in fast mode, in
//! the US. Shaped as Anthropic sends them; the streams follow the Python SDK's fixtures
//! `fallback_response.txt` (the answer relabelled by a `fallback` block) and
//! `fallback_credit_response.txt` (`usage.fallback_credit` in the last `message_delta`).

use serde_json::{Value, json};

use crate::mock::{INPUT_TOKENS, OUTPUT_TOKENS, message_json};

/// How an answer was served. The default is a plain answer by the model asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Served {
    /// The model that answers; `None`: the one asked for.
    pub model: Option<String>,
    /// The model asked for declined before answering and `model` took over, in the same turn:
    /// a `fallback` block, and `usage.iterations` with both attempts.
    pub fallback: bool,
    /// Routed straight to `model` (a sticky fallback): no block, only the serving attempt in
    /// `usage.iterations`.
    pub sticky: bool,
    /// `usage.speed`.
    pub speed: Option<String>,
    /// `usage.inference_geo`.
    pub inference_geo: Option<String>,
    /// `usage.fallback_credit` redeemed (the retry of a refused request, on the model that
    /// served it).
    pub credit: bool,
}

impl Served {
    /// Answered by `model`.
    pub fn by(model: &str) -> Self {
        Self {
            model: Some(model.to_owned()),
            ..Self::default()
        }
    }

    /// The model asked for declined, and `model` answered (a server-side fallback).
    pub fn fallback_to(model: &str) -> Self {
        Self {
            fallback: true,
            ..Self::by(model)
        }
    }

    /// In fast mode.
    pub fn fast(mut self) -> Self {
        self.speed = Some("fast".into());
        self
    }

    /// Run in `geo` (`us`).
    pub fn geo(mut self, geo: &str) -> Self {
        self.inference_geo = Some(geo.into());
        self
    }

    fn serving<'a>(&'a self, asked: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(asked)
    }

    /// The mock's usual usage (that of [`message_json`]).
    fn tokens(&self) -> Value {
        message_json("")["usage"].clone()
    }

    /// `usage.iterations`, when the answer has them.
    fn iterations(&self, asked: &str) -> Option<Value> {
        let mut serving = self.tokens();
        serving["type"] = json!("fallback_message");
        serving["model"] = json!(self.serving(asked));
        if self.fallback {
            // The declined attempt: it read the prompt and wrote nothing.
            let declined = json!({
                "type": "message", "model": asked, "input_tokens": INPUT_TOKENS,
                "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
            });
            return Some(json!([declined, serving]));
        }
        self.sticky.then(|| json!([serving]))
    }

    fn block(&self, asked: &str) -> Option<Value> {
        self.fallback.then(|| {
            json!({
                "type": "fallback",
                "from": {"model": asked},
                "to": {"model": self.serving(asked)},
                "trigger": {"type": "refusal", "category": null},
            })
        })
    }

    /// Speed, region and credit, on a usage object.
    fn mark(&self, usage: &mut Value) {
        if let Some(speed) = &self.speed {
            usage["speed"] = json!(speed);
        }
        if let Some(geo) = &self.inference_geo {
            usage["inference_geo"] = json!(geo);
        }
        if self.credit {
            usage["fallback_credit"] = json!({"status": {"type": "redeemed"}});
        }
    }

    /// The JSON answer to a request for `asked`.
    pub fn json(&self, asked: &str) -> Value {
        let mut usage = self.tokens();
        self.mark(&mut usage);
        if let Some(iterations) = self.iterations(asked) {
            usage["iterations"] = iterations;
        }
        let mut content: Vec<Value> = self.block(asked).into_iter().collect();
        content.push(json!({"type": "text", "text": "Hello from the mock, Grüße 🌍"}));
        json!({
            "id": "msg_mock_served",
            "type": "message",
            "role": "assistant",
            // A non-streaming answer names the model that served.
            "model": self.serving(asked),
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": usage,
        })
    }

    /// The event stream answering a request for `asked`.
    pub fn stream(&self, asked: &str) -> Vec<u8> {
        // The stream starts before a fallback happens: `message_start` names the model asked
        // for when one follows, the `fallback` block the one that took over.
        let started_by = if self.fallback {
            asked
        } else {
            self.serving(asked)
        };
        let mut start_usage = self.tokens();
        start_usage["output_tokens"] = json!(1);
        self.mark(&mut start_usage);
        let mut events = vec![(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_mock_served", "type": "message", "role": "assistant", "content": [],
                "model": started_by, "stop_reason": null, "stop_sequence": null,
                "usage": start_usage,
            }}),
        )];
        let mut index = 0;
        if let Some(block) = self.block(asked) {
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": block}),
            ));
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            index += 1;
        }
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": "Hello from the mock, Grüße 🌍"}}),
        ));
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
        let mut delta_usage = json!({"output_tokens": OUTPUT_TOKENS});
        if self.credit {
            delta_usage["fallback_credit"] = json!({"status": {"type": "redeemed"}});
        }
        if let Some(iterations) = self.iterations(asked) {
            delta_usage["iterations"] = iterations;
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": delta_usage}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        let mut out = Vec::new();
        for (event, data) in events {
            out.extend_from_slice(format!("event: {event}\ndata: {data}\n\n").as_bytes());
        }
        out
    }
}

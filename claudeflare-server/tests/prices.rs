//! Prices as data, through the real binary: what Claude Code's defaults cost today, the cost of
//! the model that served (a server-side fallback, fast mode, US inference) in JSON and SSE,
//! models without a price named everywhere, and catalogues installed by `pricing update` and
//! `pricing_url` (checked first, kept across restarts, reaching every instance, never
//! re-pricing the history).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::{
    CACHE_CREATION_1H_TOKENS, CACHE_CREATION_5M_TOKENS, CACHE_READ_TOKENS, INPUT_TOKENS,
    OUTPUT_TOKENS, Reply, Served,
};
use common::{Backend, Env, Server, eventually, key};
use serde_json::{Value, json};

/// The cost of the mock's usual answer at these rates (per million tokens): input, output,
/// 5-minute write, 1-hour write, read.
fn mock_cost([input, output, write_5m, write_1h, read]: [f64; 5]) -> f64 {
    (INPUT_TOKENS as f64 * input
        + OUTPUT_TOKENS as f64 * output
        + CACHE_CREATION_5M_TOKENS as f64 * write_5m
        + CACHE_CREATION_1H_TOKENS as f64 * write_1h
        + CACHE_READ_TOKENS as f64 * read)
        / 1e6
}

fn assert_cost(request: &Value, expected: f64) {
    let cost = request["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() < 1e-12,
        "{cost} != {expected}: {request}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_codes_default_models_are_priced() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    let models = [
        ("claude-opus-5-5", [4.0, 20.0, 5.0, 8.0, 0.20]),
        ("claude-sonnet-5-5", [2.0, 10.0, 2.5, 4.0, 0.10]),
        // Under 100,000 prompt tokens: the lower band.
        ("claude-haiku-5-5", [0.10, 0.50, 0.125, 0.20, 0.01]),
        ("claude-fable-5-2", [8.0, 40.0, 10.0, 16.0, 0.20]),
        // A Claude Code selector some gateways receive as it is: the base model's price.
        ("claude-opus-5-5[1m]", [4.0, 20.0, 5.0, 8.0, 0.20]),
    ];
    for (model, _) in &models {
        assert_eq!(server.ask(model, false).await.status, 200);
    }
    let requests = server.history(models.len()).await;
    for (request, (model, rates)) in requests.iter().rev().zip(models) {
        assert_eq!(request["requested_model"], model, "{request}");
        assert_eq!(
            request["model"], model,
            "the answer named the model asked for"
        );
        assert_eq!(request["price_known"], true, "{request}");
        assert_cost(request, mock_cost(rates));
    }
    assert_eq!(
        server.json("/api/stats").await["unpriced_models"],
        json!([])
    );
}

/// Fable 5.2 declines and Opus 4.8 answers: the record names Opus 4.8, and only its attempt is
/// billed (the declined one wrote nothing).
#[tokio::test(flavor = "multi_thread")]
async fn a_fallback_is_costed_at_the_model_that_served_in_json_and_sse() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let fallback = Served::fallback_to("claude-opus-4-8");
    env.mock.script(
        &key("a"),
        [
            Reply::Served(fallback.clone()),
            Reply::Served(fallback.clone()),
        ],
    );
    let server = env.start();
    let json = server.ask("claude-fable-5-2", false).await;
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["model"], "claude-opus-4-8");
    let stream = server.ask("claude-fable-5-2", true).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.body,
        fallback.stream("claude-fable-5-2"),
        "the stream reaches the client as it was sent"
    );
    let opus_4_8 = mock_cost([5.0, 25.0, 6.25, 10.0, 0.50]);
    for request in server.history(2).await {
        assert_eq!(request["model"], "claude-opus-4-8", "{request}");
        assert_eq!(request["requested_model"], "claude-fable-5-2");
        assert_eq!(request["price_known"], true);
        assert_cost(&request, opus_4_8);
    }
    let page = server.get("/dashboard").await.text();
    assert!(
        page.contains("asked for claude-fable-5-2"),
        "the history shows both models"
    );
    // The per-model chart and the metrics count the model that served.
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"claudeflare_cost_usd_total{account="a",model="claude-opus-4-8"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fast_mode_us_inference_and_another_model_are_priced_as_the_answer_says() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    env.mock.script(
        &key("a"),
        [
            Reply::Served(Served::by("claude-opus-5-5").fast().geo("us")),
            Reply::Served(Served::by("claude-opus-5-5").fast()),
            // Another model answers, with a redeemed fallback credit in its usage (as the
            // SDK's `fallback_credit_response.txt` streams it).
            Reply::Served(Served {
                credit: true,
                ..Served::by("claude-sonnet-5-5")
            }),
        ],
    );
    let server = env.start();
    for stream in [true, false, true] {
        assert_eq!(server.ask("claude-opus-5-5", stream).await.status, 200);
    }
    let requests = server.history(3).await;
    // Fast Opus 5.5: $8/$40, cache writes 1.25× and 2× of 8, reads 0.05× of 8.
    let fast = mock_cost([8.0, 40.0, 10.0, 16.0, 0.40]);
    assert_cost(&requests[2], fast * 1.1);
    assert_cost(&requests[1], fast);
    assert_eq!(requests[0]["model"], "claude-sonnet-5-5");
    assert_eq!(requests[0]["requested_model"], "claude-opus-5-5");
    assert_cost(&requests[0], mock_cost([2.0, 10.0, 2.5, 4.0, 0.10]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_a_price_is_flagged_counted_and_named_with_the_fix() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    for _ in 0..2 {
        assert_eq!(server.ask("claude-opus-9", false).await.status, 200);
    }
    assert_eq!(server.ask("claude-opus-5-5", true).await.status, 200);
    let requests = server.history(3).await;
    assert_eq!(requests[0]["price_known"], true);
    for request in &requests[1..] {
        assert_eq!(request["price_known"], false, "{request}");
        assert_eq!(request["cost_usd"], 0.0);
    }
    let stats = server.json("/api/stats").await;
    assert_eq!(
        stats["unpriced_models"],
        json!([{"model": "claude-opus-9", "requests": 2}])
    );
    let page = server.get("/dashboard").await.text();
    assert!(
        page.contains("no price"),
        "the history marks the unpriced requests"
    );
    assert!(
        page.contains("No price for claude-opus-9 (2 requests)")
            && page.contains("claudeflare-server pricing update FILE|URL"),
        "the dashboard names it and the fix"
    );
    let list = env.cli(&["list"]);
    let warned = String::from_utf8_lossy(&list.stderr);
    assert!(
        list.status.success()
            && warned.contains("No price for claude-opus-9 (2 requests)")
            && warned.contains("pricing update"),
        "{warned}"
    );
    let log = server.wait_log("no price known for this model").await;
    assert!(log.contains("claude-opus-9"), "{log}");
}

/// A catalogue that prices `claude-opus-9` at $1 input until `change`, $2 from then on.
fn catalogue(change: chrono::DateTime<chrono::Utc>) -> String {
    json!({
        "format": 1,
        "as_of": "2026-12-02",
        "source": "a test",
        "models": [
            {"model": "claude-opus-9", "prices": [
                {"input": 1, "output": 0, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 0},
                {"effective_from": change.to_rfc3339(), "input": 2, "output": 0,
                 "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 0},
            ]},
            {"model": "claude-opus-5-5", "prices": [{"input": 4, "output": 20}]},
        ],
    })
    .to_string()
}

/// The input price in force for `claude-opus-9` on `server`, by a request and its record.
async fn opus_9_input_price(server: &Server, seen: usize) -> Value {
    assert_eq!(server.ask("claude-opus-9", false).await.status, 200);
    let requests = server.history(seen + 1).await;
    if requests[0]["price_known"] != true {
        return Value::Null;
    }
    json!(requests[0]["cost_usd"].as_f64().unwrap() * 1e6 / INPUT_TOKENS as f64)
}

#[tokio::test(flavor = "multi_thread")]
async fn pricing_update_reaches_the_running_server_survives_a_restart_and_keeps_history() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let server = env.start();
    assert_eq!(opus_9_input_price(&server, 0).await, Value::Null);

    let change = chrono::Utc::now() + chrono::TimeDelta::seconds(8);
    let file = env.dir.path().join("prices.json");
    std::fs::write(&file, catalogue(change)).unwrap();
    let installed = env.ok(&["pricing", "update", file.to_str().unwrap()]);
    assert!(installed.contains("2 models"), "{installed}");
    // The running server takes it up within 2 seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut seen = 1;
    loop {
        let price = opus_9_input_price(&server, seen).await;
        seen += 1;
        if price == json!(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = server.history(seen).await;
    let priced_before: Vec<Value> = before
        .iter()
        .filter(|r| r["price_known"] == true)
        .map(|r| r["cost_usd"].clone())
        .collect();
    assert!(!priced_before.is_empty());

    // The price changes between two requests, at its `effective_from`.
    let wait = (change - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    assert_eq!(opus_9_input_price(&server, seen).await, json!(2.0));
    seen += 1;
    // The earlier requests keep the cost they were recorded with.
    let after = server.history(seen).await;
    let still: Vec<Value> = after[1..]
        .iter()
        .filter(|r| r["price_known"] == true)
        .map(|r| r["cost_usd"].clone())
        .collect();
    assert_eq!(still, priced_before, "history is never re-priced");
    drop(server);

    // Installed in the database: the next start uses it, and `pricing list` shows it.
    let server = env.start();
    assert_eq!(opus_9_input_price(&server, seen).await, json!(2.0));
    let listed: Value = serde_json::from_str(&env.ok(&["pricing", "list", "--json"])).unwrap();
    assert_eq!(listed["as_of"], "2026-12-02");
    assert!(
        listed["origin"].as_str().unwrap().contains("prices.json"),
        "{listed}"
    );
    assert_eq!(listed["models"].as_array().unwrap().len(), 2);
    let table = env.ok(&["pricing", "list"]);
    assert!(
        table.contains("claude-opus-9") && table.contains("$2"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_catalogue_is_refused_naming_the_problem_and_changes_nothing() {
    let env = Env::sqlite().await;
    let file = env.dir.path().join("prices.json");
    for (text, problem) in [
        (
            r#"{"format": 1, "as_of": "2026-12-02", "models": [{"model": "claude-x", "prices": [{"input": 1, "output": -2}]}]}"#,
            "models[0] (claude-x), prices[0]: `output` is -2",
        ),
        (
            r#"{"format": 1, "as_of": "2026-12-02", "models": [{"model": "claude-x", "prices": [{"input": 1, "outptu": 2}]}]}"#,
            "unknown field `outptu`",
        ),
        (
            r#"{"format": 1, "as_of": "2026-11-01", "models": [{"model": "claude-x", "prices": [{"input": 1, "output": 2}]}]}"#,
            "older than this version's built-in catalogue",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let output = env.cli(&["pricing", "update", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}");
        assert!(stderr.contains(problem), "{stderr} should name {problem:?}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = env.cli(&["pricing", "update", "/nonexistent/prices.json"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/prices.json")
    );
    let listed: Value = serde_json::from_str(&env.ok(&["pricing", "list", "--json"])).unwrap();
    assert_eq!(listed["origin"], "built in", "nothing was installed");
}

#[tokio::test(flavor = "multi_thread")]
async fn pricing_url_installs_at_start_and_a_failed_refresh_keeps_the_last_good_one() {
    let mut env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let far = chrono::Utc::now() + chrono::TimeDelta::days(3650);
    env.mock.serve_document("/prices.json", 200, catalogue(far));
    // A token in the URL's query never shows: not in the log, the database or `pricing list`.
    env.set(
        "CLAUDEFLARE_PRICING_URL",
        &format!("{}/prices.json?token=SECRET-price-token", env.mock.url()),
    );
    let server = env.start();
    assert!(
        eventually(Duration::from_secs(4), || async {
            let listed: Value =
                serde_json::from_str(&env.ok(&["pricing", "list", "--json"])).unwrap();
            listed["origin"]
                .as_str()
                .unwrap_or_default()
                .contains("/prices.json")
        })
        .await,
        "{}",
        server.log()
    );
    assert_eq!(
        env.mock.document_fetches("/prices.json"),
        1,
        "once at start"
    );
    let config = server.json("/api/config").await;
    assert!(
        config["pricing_url"]
            .as_str()
            .unwrap()
            .ends_with("/prices.json"),
        "{config}"
    );
    assert_eq!(opus_9_input_price(&server, 0).await, json!(1.0));
    drop(server);

    // The URL now fails: the server says so, and the installed catalogue stays in force.
    env.mock.serve_document("/prices.json", 500, "{}");
    let server = env.start();
    let log = server
        .wait_log("could not refresh the price catalogue")
        .await;
    assert!(log.contains("answered 500"), "{log}");
    assert!(!log.contains("SECRET"), "{log}");
    assert!(!env.ok(&["pricing", "list", "--json"]).contains("SECRET"));
    assert_eq!(opus_9_input_price(&server, 1).await, json!(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn pricing_update_reaches_a_second_instance_on_postgres() {
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let first = env.start();
    let second = env.start();
    let far = chrono::Utc::now() + chrono::TimeDelta::days(3650);
    let file = env.dir.path().join("prices.json");
    std::fs::write(&file, catalogue(far)).unwrap();
    env.ok(&["pricing", "update", file.to_str().unwrap()]);
    for server in [&first, &second] {
        // The requests are made one at a time: once stored, each is the newest of the
        // history both instances share.
        let reached = eventually(Duration::from_secs(4), || async {
            let stored = server.json("/api/requests?limit=1000").await;
            let stored = stored.as_array().unwrap().len();
            assert_eq!(server.ask("claude-opus-9", false).await.status, 200);
            server.history(stored + 1).await[0]["price_known"] == true
        })
        .await;
        assert!(reached, "{}", server.log());
    }
    drop((first, second));
    let restarted = env.start();
    let stored = restarted.json("/api/requests?limit=1000").await;
    let stored = stored.as_array().unwrap().len();
    assert_eq!(restarted.ask("claude-opus-9", true).await.status, 200);
    let newest = restarted.history(stored + 1).await;
    assert_eq!(newest[0]["stream"], true);
    assert_eq!(
        newest[0]["price_known"], true,
        "a later start: {}",
        newest[0]
    );
}

/// Anthropic's Python SDK reads a fallback through claudeflare as it reads it from Anthropic:
/// the final message names the model that served, in JSON and when streamed.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_sees_the_model_that_served_through_claudeflare() {
    if !common::python_sdk() {
        return;
    }
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let fallback = Served::fallback_to("claude-opus-4-8");
    env.mock.script(
        &key("a"),
        [Reply::Served(fallback.clone()), Reply::Served(fallback)],
    );
    let server = env.start();
    let script = r#"
import anthropic
client = anthropic.Anthropic(api_key="unused", max_retries=0)
ask = dict(model="claude-fable-5-2", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
           betas=["server-side-fallback-2026-07-01"], fallbacks="default")
message = client.beta.messages.create(**ask)
print("json", message.model, [block.type for block in message.content])
with client.beta.messages.stream(**ask) as stream:
    final = stream.get_final_message()
print("stream", final.model, [block.type for block in final.content], final.usage.output_tokens)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .env("ANTHROPIC_BASE_URL", &server.url)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "json claude-opus-4-8 ['fallback', 'text']");
    assert_eq!(
        lines[1],
        format!("stream claude-opus-4-8 ['fallback', 'text'] {OUTPUT_TOKENS}")
    );
    for request in server.history(2).await {
        assert_eq!(request["model"], "claude-opus-4-8");
        assert_eq!(request["requested_model"], "claude-fable-5-2");
    }
}

use chrono::TimeZone;

use super::*;

fn usage(input: u64, output: u64, write_5m: u64, write_1h: u64, read: u64) -> Usage {
    let mut usage = Usage::default();
    usage.input_tokens = input;
    usage.output_tokens = output;
    usage.cache_creation_input_tokens = write_5m + write_1h;
    usage.cache_creation_1h_input_tokens = write_1h;
    usage.cache_read_input_tokens = read;
    usage
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12_f64.max(b.abs() * 1e-12)
}

/// 2026-12-02, noon UTC.
fn today() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap()
}

fn day(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn billing(speed: Option<&str>, geo: Option<&str>) -> Billing {
    let mut billing = Billing::default();
    billing.speed = speed.map(str::to_owned);
    billing.inference_geo = geo.map(str::to_owned);
    billing
}

fn cost(pricing: &Pricing, model: &str, usage: &Usage) -> Cost {
    pricing.cost_of(Some(model), usage, &Billing::default(), today())
}

/// The December 2026 list, typed out again by hand from the sources (not read from the
/// catalogue): input, output, 5-minute write, 1-hour write, read.
const DECEMBER: [(&str, [f64; 5]); 25] = [
    ("claude-fable-5-2", [8.0, 40.0, 10.0, 16.0, 0.20]),
    ("claude-mythos-5-2", [8.0, 40.0, 10.0, 16.0, 0.20]),
    ("claude-fable-5-1", [10.0, 50.0, 12.5, 20.0, 0.25]),
    ("claude-mythos-5-1", [10.0, 50.0, 12.5, 20.0, 0.25]),
    ("claude-fable-5", [10.0, 50.0, 12.5, 20.0, 1.0]),
    ("claude-mythos-5", [10.0, 50.0, 12.5, 20.0, 1.0]),
    ("claude-opus-5-5", [4.0, 20.0, 5.0, 8.0, 0.20]),
    ("claude-opus-5", [5.0, 25.0, 6.25, 10.0, 0.50]),
    ("claude-opus-4-8", [5.0, 25.0, 6.25, 10.0, 0.50]),
    ("claude-opus-4-7", [5.0, 25.0, 6.25, 10.0, 0.50]),
    ("claude-opus-4-6", [5.0, 25.0, 6.25, 10.0, 0.50]),
    ("claude-opus-4-5-20251101", [5.0, 25.0, 6.25, 10.0, 0.50]),
    ("claude-opus-4-1-20250805", [15.0, 75.0, 18.75, 30.0, 1.50]),
    ("claude-opus-4-20250514", [15.0, 75.0, 18.75, 30.0, 1.50]),
    ("claude-sonnet-5-5", [2.0, 10.0, 2.5, 4.0, 0.10]),
    ("claude-sonnet-5", [2.0, 10.0, 2.5, 4.0, 0.20]),
    ("claude-sonnet-4-6", [3.0, 15.0, 3.75, 6.0, 0.30]),
    ("claude-sonnet-4-5-20250929", [3.0, 15.0, 3.75, 6.0, 0.30]),
    ("claude-sonnet-4-20250514", [3.0, 15.0, 3.75, 6.0, 0.30]),
    ("claude-3-7-sonnet-20250219", [3.0, 15.0, 3.75, 6.0, 0.30]),
    ("claude-haiku-5-5", [0.10, 0.50, 0.125, 0.20, 0.01]),
    ("claude-haiku-4-5-20251001", [1.0, 5.0, 1.25, 2.0, 0.10]),
    ("claude-3-5-haiku-20241022", [0.80, 4.0, 1.0, 1.60, 0.08]),
    ("claude-3-haiku-20240307", [0.25, 1.25, 0.30, 0.50, 0.03]),
    ("claude-3-opus-20240229", [15.0, 75.0, 18.75, 30.0, 1.50]),
];

#[test]
fn every_model_of_the_catalogue_is_costed_from_its_usage() {
    let pricing = Pricing::default();
    let catalogue = pricing.table().catalogue();
    let listed: HashSet<&str> = catalogue.models.iter().map(|m| m.model.as_str()).collect();
    let expected: HashSet<&str> = DECEMBER.iter().map(|(id, _)| *id).collect();
    assert_eq!(listed, expected, "the catalogue lists the December models");
    // Different counts of each kind, so a rate swapped between two kinds shows.
    let (i, o, w5, w1, r) = (1_234, 5_678, 910, 1_112, 13_141);
    for (model, [input, output, write_5m, write_1h, read]) in DECEMBER {
        let want = (i as f64 * input
            + o as f64 * output
            + w5 as f64 * write_5m
            + w1 as f64 * write_1h
            + r as f64 * read)
            / 1e6;
        let got = cost(&pricing, model, &usage(i, o, w5, w1, r));
        assert!(got.known, "{model}");
        assert!(close(got.usd, want), "{model}: {} != {want}", got.usd);
    }
}

#[test]
fn ids_are_matched_whole_never_by_prefix() {
    let pricing = Pricing::default();
    let million_input = usage(1_000_000, 0, 0, 0, 0);
    for (model, input) in [
        ("claude-opus-5", 5.0),
        ("claude-opus-5-5", 4.0),
        ("claude-fable-5", 10.0),
        ("claude-fable-5-1", 10.0),
        ("claude-fable-5-2", 8.0),
        ("claude-sonnet-5", 2.0),
        ("claude-sonnet-5-5", 2.0),
    ] {
        assert!(
            close(cost(&pricing, model, &million_input).usd, input),
            "{model}"
        );
    }
    // The cache reads tell the look-alikes apart where the input does not.
    let million_read = usage(0, 0, 0, 0, 1_000_000);
    for (model, read) in [
        ("claude-fable-5", 1.0),
        ("claude-fable-5-1", 0.25),
        ("claude-fable-5-2", 0.20),
        ("claude-sonnet-5", 0.20),
        ("claude-sonnet-5-5", 0.10),
        ("claude-opus-5", 0.50),
        ("claude-opus-5-5", 0.20),
    ] {
        assert!(
            close(cost(&pricing, model, &million_read).usd, read),
            "{model}"
        );
    }
    // Ids the catalogue does not have are unknown, not priced as their prefix.
    for model in [
        "claude-opus-5-6",
        "claude-fable-5-3",
        "claude-sonnet-5-7",
        "claude-opus",
        "claude-opus-5-",
        "claude-haiku-5",
        "claude-3-5-sonnet-20241022",
        "gpt-4o",
        "",
    ] {
        let got = cost(&pricing, model, &million_input);
        assert_eq!(
            got,
            Cost {
                usd: 0.0,
                known: false
            },
            "{model}"
        );
    }
}

#[test]
fn selectors_dated_ids_aliases_and_latest_find_their_model() {
    let pricing = Pricing::default();
    let tokens = usage(1_000_000, 0, 0, 0, 0);
    for (model, input) in [
        ("claude-opus-5-5[1m]", 4.0),
        ("claude-sonnet-5-5[1m]", 2.0),
        ("claude-fable-5-2[1m]", 8.0),
        ("claude-opus-4-5", 5.0),
        ("claude-opus-4-1", 15.0),
        ("claude-opus-4-0", 15.0),
        ("claude-sonnet-4-5", 3.0),
        ("claude-sonnet-4-0", 3.0),
        ("claude-haiku-4-5", 1.0),
        ("claude-3-7-sonnet-latest", 3.0),
        ("claude-3-5-haiku-latest", 0.8),
        // A dated id of an undated model.
        ("claude-opus-4-8-20260528", 5.0),
    ] {
        let got = cost(&pricing, model, &tokens);
        assert!(got.known && close(got.usd, input), "{model}: {got:?}");
    }
}

#[test]
fn haiku_5_5_prices_every_token_at_the_band_over_100_000_prompt_tokens() {
    let pricing = Pricing::default();
    // At 100,000 prompt tokens exactly: the lower band.
    let at = usage(60_000, 1_000, 10_000, 10_000, 20_000);
    let low =
        (60_000.0 * 0.10 + 1_000.0 * 0.50 + 10_000.0 * 0.125 + 10_000.0 * 0.20 + 20_000.0 * 0.01)
            / 1e6;
    assert!(close(cost(&pricing, "claude-haiku-5-5", &at).usd, low));
    // One more cache read: every token, output included, at the upper band.
    let over = usage(60_000, 1_000, 10_000, 10_000, 20_001);
    let high =
        (60_000.0 * 0.50 + 1_000.0 * 2.50 + 10_000.0 * 0.625 + 10_000.0 * 1.0 + 20_001.0 * 0.05)
            / 1e6;
    assert!(close(cost(&pricing, "claude-haiku-5-5", &over).usd, high));
    // The pricing page's example: 90k input + 20k cache reads + 1k output is $0.0485.
    let example = usage(90_000, 1_000, 0, 0, 20_000);
    assert!(close(
        cost(&pricing, "claude-haiku-5-5", &example).usd,
        0.0485
    ));
    // Output does not count towards the prompt.
    let long_answer = usage(100_000, 50_000, 0, 0, 0);
    let low = (100_000.0 * 0.10 + 50_000.0 * 0.50) / 1e6;
    assert!(close(
        cost(&pricing, "claude-haiku-5-5", &long_answer).usd,
        low
    ));
}

#[test]
fn fast_mode_prices_the_fast_rates_and_scales_the_cache_like_input() {
    let pricing = Pricing::default();
    let tokens = usage(1_000_000, 1_000_000, 1_000_000, 1_000_000, 1_000_000);
    let fast = billing(Some("fast"), None);
    let at = |model: &str, billing: &Billing| {
        pricing.cost_of(Some(model), &tokens, billing, today()).usd
    };
    // Opus 5.5 fast: $8/$40; cache writes 1.25× and 2× of 8, reads its own 0.05× of 8 ($0.40).
    assert!(close(
        at("claude-opus-5-5", &fast),
        8.0 + 40.0 + 10.0 + 16.0 + 0.40
    ));
    assert!(close(
        at("claude-opus-5", &fast),
        10.0 + 50.0 + 12.5 + 20.0 + 1.0
    ));
    assert!(close(
        at("claude-opus-4-8", &fast),
        10.0 + 50.0 + 12.5 + 20.0 + 1.0
    ));
    assert!(close(
        at("claude-fable-5-2", &fast),
        16.0 + 80.0 + 20.0 + 32.0 + 0.40
    ));
    // `standard`, or a model without fast prices (fast Opus 4.6 now runs at standard rates).
    let standard = billing(Some("standard"), None);
    assert!(close(
        at("claude-opus-5-5", &standard),
        4.0 + 20.0 + 5.0 + 8.0 + 0.20
    ));
    assert!(close(
        at("claude-opus-4-6", &fast),
        5.0 + 25.0 + 6.25 + 10.0 + 0.50
    ));
}

#[test]
fn us_inference_costs_a_tenth_more_on_the_models_that_have_it() {
    let pricing = Pricing::default();
    let tokens = usage(1_000_000, 1_000_000, 0, 0, 0);
    let at = |model: &str, billing: &Billing| {
        pricing.cost_of(Some(model), &tokens, billing, today()).usd
    };
    let us = billing(None, Some("us"));
    assert!(close(at("claude-opus-5-5", &us), 24.0 * 1.1));
    // (A million input tokens is over Haiku 5.5's band: the multiplier applies on top.)
    assert!(close(at("claude-haiku-5-5", &us), 3.0 * 1.1));
    assert!(close(
        at("claude-opus-5-5", &billing(None, Some("global"))),
        24.0
    ));
    // Older models have no US-only inference (they refuse it): no multiplier.
    assert!(close(at("claude-haiku-4-5", &us), 6.0));
    // It stacks with fast mode.
    assert!(close(
        at("claude-opus-5-5", &billing(Some("fast"), Some("us"))),
        48.0 * 1.1
    ));
}

#[test]
fn a_request_is_costed_at_the_price_in_force_at_its_time() {
    let pricing = Pricing::default();
    let reads = usage(0, 0, 0, 0, 1_000_000);
    let at = |when| pricing.cost_of(Some("claude-sonnet-5-5"), &reads, &Billing::default(), when);
    let before = Utc.with_ymd_and_hms(2026, 10, 6, 23, 59, 59).unwrap();
    assert!(close(at(before).usd, 0.20));
    assert!(close(at(day(2026, 10, 7)).usd, 0.10));
    // Before its release, a model has no price.
    assert!(!at(day(2026, 9, 27)).known);
}

fn iteration(kind: &str, model: Option<&str>, usage: Usage) -> Iteration {
    Iteration::new(kind, model.map(str::to_owned), usage)
}

#[test]
fn each_attempt_of_a_fallback_is_priced_at_its_own_model() {
    let pricing = Pricing::default();
    let served = usage(25, 8, 0, 0, 0);
    let mut fallback = Billing::default();
    fallback.iterations = vec![
        // Declined before any output: not billed.
        iteration("message", Some("claude-fable-5-2"), usage(25, 0, 0, 0, 0)),
        iteration(Iteration::FALLBACK_MESSAGE, Some("claude-opus-4-8"), served),
    ];
    let got = pricing.cost_of(Some("claude-opus-4-8"), &served, &fallback, today());
    assert!(got.known);
    assert!(close(got.usd, (25.0 * 5.0 + 8.0 * 25.0) / 1e6));

    // A tool loop's steps (and a declined attempt that had started answering) all count.
    let mut steps = Billing::default();
    steps.iterations = vec![
        iteration(
            "message",
            Some("claude-fable-5-2"),
            usage(1_000, 100, 0, 0, 0),
        ),
        iteration("compaction", None, usage(2_000, 300, 0, 0, 0)),
        iteration(
            Iteration::FALLBACK_MESSAGE,
            Some("claude-sonnet-5-5"),
            usage(3_000, 500, 0, 0, 4_000),
        ),
    ];
    let got = pricing.cost_of(
        Some("claude-sonnet-5-5"),
        &usage(3_000, 500, 0, 0, 4_000),
        &steps,
        today(),
    );
    let want = (1_000.0 * 8.0 + 100.0 * 40.0) / 1e6
        + (2_000.0 * 2.0 + 300.0 * 10.0) / 1e6
        + (3_000.0 * 2.0 + 500.0 * 10.0 + 4_000.0 * 0.10) / 1e6;
    assert!(got.known && close(got.usd, want), "{got:?} {want}");

    // An attempt by a model without a price makes the whole cost unknown.
    let mut unknown = Billing::default();
    unknown.iterations = vec![
        iteration("message", Some("claude-opus-9"), usage(10, 10, 0, 0, 0)),
        iteration(Iteration::FALLBACK_MESSAGE, Some("claude-opus-4-8"), served),
    ];
    assert!(
        !pricing
            .cost_of(Some("claude-opus-4-8"), &served, &unknown, today())
            .known
    );
}

#[test]
fn a_request_without_tokens_costs_nothing_and_hides_nothing() {
    let pricing = Pricing::default();
    // A 404 for a model nobody has: nothing was used, nothing is unknown.
    assert_eq!(
        cost(&pricing, "claude-nonexistent", &Usage::default()),
        Cost::ZERO
    );
    assert_eq!(
        pricing.cost_of(None, &usage(1, 0, 0, 0, 0), &Billing::default(), today()),
        Cost {
            usd: 0.0,
            known: false
        }
    );
}

#[test]
fn overrides_win_by_whole_id_or_pattern() {
    let overrides: BTreeMap<String, Price> = serde_json::from_value(serde_json::json!({
        // As earlier versions wrote them: four rates, and a long-context premium.
        "claude-opus-5": {"input": 1, "output": 1, "cache_write": 1, "cache_read": 1},
        "claude-sonnet-4-6": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3,
            "long_context": {"above_input_tokens": 200000, "input": 6, "output": 22.5}},
        "claude-opus-9*": {"input": 7, "output": 7},
        "claude-opus-9-1*": {"input": 9, "output": 9, "fast": {"input": 18, "output": 18},
            "inference_geo": {"us": 1.5}},
    }))
    .unwrap();
    check_overrides(&overrides).unwrap();
    let pricing = Pricing::new(Table::built_in(), &overrides);
    let million = usage(1_000_000, 0, 0, 0, 0);
    let input = |model: &str| cost(&pricing, model, &million).usd;
    assert!(close(input("claude-opus-5"), 1.0));
    // Not its prefix: Opus 5.5 keeps the catalogue's price.
    assert!(close(input("claude-opus-5-5"), 4.0));
    assert!(close(input("claude-opus-9"), 7.0));
    assert!(close(input("claude-opus-9-5-20270101"), 7.0));
    assert!(
        close(input("claude-opus-9-1"), 9.0),
        "the more specific pattern wins"
    );
    let fast_us = billing(Some("fast"), Some("us"));
    assert!(close(
        pricing
            .cost_of(Some("claude-opus-9-1"), &million, &fast_us, today())
            .usd,
        18.0 * 1.5
    ));
    // The long-context premium: a band over 200,000 prompt tokens.
    let long = usage(150_000, 1_000, 0, 0, 50_001);
    assert!(close(
        cost(&pricing, "claude-sonnet-4-6", &long).usd,
        (150_000.0 * 6.0 + 1_000.0 * 22.5 + 50_001.0 * 0.6) / 1e6
    ));
    // Defaults: 1.25×, 2× and 0.1× input.
    let caches = usage(0, 0, 1_000_000, 1_000_000, 1_000_000);
    assert!(close(
        cost(&pricing, "claude-opus-9", &caches).usd,
        7.0 * (1.25 + 2.0 + 0.1)
    ));

    let bad: BTreeMap<String, Price> =
        serde_json::from_value(serde_json::json!({"claude-x": {"input": -1, "output": 1}}))
            .unwrap();
    let error = check_overrides(&bad).unwrap_err().to_string();
    assert!(
        error.contains("claude-x") && error.contains("`input` is -1"),
        "{error}"
    );
}

fn refused(text: &str) -> String {
    Catalogue::parse(text).unwrap_err().to_string()
}

#[test]
fn an_invalid_catalogue_is_refused_naming_the_problem() {
    let valid =
        |models: &str| format!(r#"{{"format": 1, "as_of": "2026-12-02", "models": [{models}]}}"#);
    let one = r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": 2}]}"#;
    assert!(Catalogue::parse(&valid(one)).is_ok());
    for (text, names) in [
        (
            "not json".to_owned(),
            vec!["not a price catalogue", "line 1"],
        ),
        (valid(""), vec!["lists no model"]),
        (
            valid(
                r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": 2, "cache_wrte": 1}]}"#,
            ),
            vec!["unknown field `cache_wrte`"],
        ),
        (
            valid(r#"{"model": "claude-x-1", "prices": [{"input": 1}]}"#),
            vec!["missing field `output`"],
        ),
        (
            valid(r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": -2}]}"#),
            vec!["models[0] (claude-x-1)", "`output` is -2"],
        ),
        (
            valid(
                r#"{"model": "claude-x-1", "prices": [{"effective_from": "next week", "input": 1, "output": 2}]}"#,
            ),
            vec!["`effective_from` is \"next week\""],
        ),
        (
            valid(&format!("{one}, {one}")),
            vec!["`claude-x-1` is listed twice"],
        ),
        (
            valid(
                r#"{"model": "claude-x-1", "aliases": ["claude-x-*"], "prices": [{"input": 1, "output": 2}]}"#,
            ),
            vec!["`claude-x-*` is not one whole model id"],
        ),
        (
            valid(r#"{"model": "claude-x-1", "prices": []}"#),
            vec!["`prices` is empty"],
        ),
        (
            valid(
                r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": 2}, {"input": 2, "output": 3}]}"#,
            ),
            vec!["two prices are in force from always"],
        ),
        (
            valid(
                r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": 2, "bands": [{"above_prompt_tokens": 5, "input": 1}]}]}"#,
            ),
            vec!["missing field `output`"],
        ),
        (
            valid(
                r#"{"model": "claude-x-1", "prices": [{"input": 1, "output": 2, "inference_geo": {"us": 0}}]}"#,
            ),
            vec!["`inference_geo` multiplier of `us` is 0"],
        ),
        (
            r#"{"format": 2, "as_of": "2026-12-02", "models": []}"#.to_owned(),
            vec!["`format` is 2"],
        ),
    ] {
        let error = refused(&text);
        for name in names {
            assert!(error.contains(name), "{error:?} should name {name:?}");
        }
    }
}

#[test]
fn the_built_in_catalogue_reads_back_as_it_is_stored() {
    let catalogue = Catalogue::built_in();
    assert_eq!(Catalogue::parse(&catalogue.to_json()).unwrap(), catalogue);
}

#[test]
fn a_cost_reads_from_the_spill_file_of_either_version() {
    let old: Cost = serde_json::from_str("0.25").unwrap();
    assert_eq!(
        old,
        Cost {
            usd: 0.25,
            known: true
        }
    );
    let new: Cost = serde_json::from_str(r#"{"usd": 0, "known": false}"#).unwrap();
    assert_eq!(
        new,
        Cost {
            usd: 0.0,
            known: false
        }
    );
    let written = serde_json::to_string(&new).unwrap();
    assert_eq!(serde_json::from_str::<Cost>(&written).unwrap(), new);
}

#[test]
fn patterns() {
    for (pattern, text, matches) in [
        ("claude-*", "claude-opus-5", true),
        ("claude-*", "claude-", true),
        ("claude-*", "claud", false),
        ("*-5", "claude-opus-5", true),
        ("*-5", "claude-opus-5-5", true),
        ("claude-*-5", "claude-opus-5-1", false),
        ("a*b*c", "abbc", true),
        ("a*b*c", "acb", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob(pattern, text), matches, "{pattern} {text}");
    }
}

#[test]
fn the_readmes_example_catalogue_is_one() {
    let readme = include_str!("../../../README.md");
    let after = readme
        .split_once("The format (JSON")
        .expect("the README describes the format")
        .1;
    let block = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("with an example")
        .0;
    let catalogue = Catalogue::parse(block).unwrap();
    assert_eq!(catalogue.models.len(), 3);
}

#[test]
fn a_catalogues_url_is_shown_without_its_password_or_query() {
    assert_eq!(
        shown("https://me:SECRET@prices.example:8443/claude.json?token=SECRET"),
        "https://prices.example:8443/claude.json"
    );
    assert_eq!(
        shown("/etc/claudeflare/prices.json"),
        "/etc/claudeflare/prices.json"
    );
}

#[test]
fn the_clouds_ids_find_anthropics_models() {
    let pricing = Pricing::default();
    let at = today();
    let anthropic = pricing.price("claude-sonnet-4-5", at).unwrap();
    for id in [
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4-5@20250929",
    ] {
        assert_eq!(pricing.price(id, at), Some(anthropic), "{id}");
    }
    assert!(pricing.price("anthropic.claude-opus-4-7", at).is_some());
    assert!(pricing.price("us.meta.llama3", at).is_none());
}

#[test]
fn a_clouds_regional_endpoint_costs_a_tenth_more_from_sonnet_4_5_on() {
    let pricing = Pricing::default();
    let usage = usage(1_000_000, 0, 0, 0, 0);
    let on = |provider: &str, model: &str, geo: &str| {
        pricing
            .cost_on(
                Some(provider),
                Some(model),
                &usage,
                &billing(None, Some(geo)),
                today(),
            )
            .usd
    };
    let list = cost(&pricing, "claude-opus-4-7", &usage).usd;
    assert!(close(
        on("bedrock", "anthropic.claude-opus-4-7", "global"),
        list
    ));
    assert!(close(
        on("bedrock", "anthropic.claude-opus-4-7", "us-east-1"),
        list * 1.1
    ));
    assert!(close(
        on("vertex", "claude-opus-4-7", "europe-west1"),
        list * 1.1
    ));
    assert!(close(on("vertex", "claude-opus-4-7", "global"), list));
    // Older models kept their prices everywhere.
    let sonnet_4 = cost(&pricing, "claude-sonnet-4-20250514", &usage).usd;
    assert!(close(
        on("vertex", "claude-sonnet-4@20250514", "us-east5"),
        sonnet_4
    ));
    // Anthropic's own `us` inference is not a cloud's region.
    assert!(close(on("anthropic", "claude-opus-4-7", "us-east-1"), list));
}

#[test]
fn a_provider_can_price_a_model_its_own_way() {
    let mut catalogue = Catalogue::built_in();
    let mut own = catalogue.models[0].clone();
    own.model = "claude-opus-4-7".into();
    own.aliases.clear();
    own.prices = vec![Price::new(1.0, 2.0)];
    catalogue.providers.get_mut("bedrock").unwrap().models = vec![own];
    let text = catalogue.to_json();
    let table = Arc::new(Table::new(
        Catalogue::parse(&text).unwrap(),
        Origin::BuiltIn,
    ));
    let pricing = Pricing::new(table, &BTreeMap::new());
    let usage = usage(1_000_000, 0, 0, 0, 0);
    let bedrock = pricing.cost_on(
        Some("bedrock"),
        Some("global.anthropic.claude-opus-4-7"),
        &usage,
        &billing(None, Some("global")),
        today(),
    );
    assert!(close(bedrock.usd, 1.0), "{bedrock:?}");
    let vertex = pricing.cost_on(
        Some("vertex"),
        Some("claude-opus-4-7"),
        &usage,
        &billing(None, Some("global")),
        today(),
    );
    assert!(close(
        vertex.usd,
        cost(&pricing, "claude-opus-4-7", &usage).usd
    ));
    let bad = text.replace("\"regional\": 1.1", "\"regional\": -1");
    assert!(
        Catalogue::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("regional")
    );
}

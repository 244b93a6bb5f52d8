//! Reading a few top-level fields of a JSON object without parsing the rest.
//!
//! The balancer looks into bodies for a handful of small fields (a request's `model` and
//! `stream`, an answer's `usage`), while the bulk of every body is text it has no use for: up to
//! megabytes of conversation in a request. [`top_level`] finds the wanted fields' raw values by
//! skipping over everything else (strings with `memchr`, nothing decoded or allocated); only those
//! values are then parsed, with serde_json.

/// Calls `found(i, value)` for each top-level field of the object in `json` whose key is
/// `keys[i]`, with the value's raw JSON text. Other values are skipped, not validated. Returns
/// `None` when `json` is not an object, or is cut short; the fields found before that point have
/// been reported (each whole: a value is reported only once the byte after it is seen).
pub(crate) fn top_level<'a>(
    json: &'a [u8],
    keys: &[&str],
    mut found: impl FnMut(usize, &'a [u8]),
) -> Option<()> {
    let mut at = skip_whitespace(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_whitespace(json, at + 1);
    if json.get(at) == Some(&b'}') {
        return Some(());
    }
    loop {
        let key_start = at;
        at = skip_string(json, at)?;
        // Compared as written (escapes and all): enough for the plain keys looked for.
        let key = &json[key_start + 1..at - 1];
        at = skip_whitespace(json, at);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = skip_whitespace(json, at + 1);
        let value_start = at;
        at = skip_value(json, at)?;
        let value_end = at;
        at = skip_whitespace(json, at);
        // A number or literal at the very end may be cut short (`-6` of `-605.375`): a value is
        // only reported once what follows it is there.
        let next = *json.get(at)?;
        if let Some(i) = keys.iter().position(|k| k.as_bytes() == key) {
            found(i, &json[value_start..value_end]);
        }
        match next {
            b',' => at = skip_whitespace(json, at + 1),
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

fn skip_whitespace(json: &[u8], mut at: usize) -> usize {
    while matches!(json.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end (one past the closing quote) of the string starting at `at`.
fn skip_string(json: &[u8], at: usize) -> Option<usize> {
    if json.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        i += find(
            json.get(i..)?,
            |b| b == b'"' || b == b'\\',
            |rest| memchr::memchr2(b'"', b'\\', rest),
        )?;
        if json[i] == b'"' {
            return Some(i + 1);
        }
        // A backslash escapes the next byte (`\"`, `\\`; `\u` is followed by plain hex digits).
        i += 2;
    }
}

/// The first byte of `bytes` that is `wanted`: looked for in place among the first few (keys and
/// short values are the common case, where a call to `memchr` costs more than it saves), then with
/// `search`, the `memchr` equivalent, in the rest (long texts).
fn find(
    bytes: &[u8],
    wanted: impl Fn(u8) -> bool,
    search: impl FnOnce(&[u8]) -> Option<usize>,
) -> Option<usize> {
    const NEAR: usize = 32;
    let (near, far) = bytes.split_at(bytes.len().min(NEAR));
    match near.iter().position(|&b| wanted(b)) {
        Some(i) => Some(i),
        None => search(far).map(|i| i + near.len()),
    }
}

/// The end of the value starting at `at`.
fn skip_value(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => skip_string(json, at),
        &open @ (b'{' | b'[') => {
            // Outside strings, braces balance among themselves and so do brackets: only this
            // kind needs counting.
            let close = if open == b'{' { b'}' } else { b']' };
            let mut depth = 0usize;
            let mut i = at;
            loop {
                i += find(
                    json.get(i..)?,
                    |b| b == b'"' || b == open || b == close,
                    |rest| memchr::memchr3(b'"', open, close, rest),
                )?;
                if json[i] == b'"' {
                    i = skip_string(json, i)?;
                    continue;
                }
                if json[i] == open {
                    depth += 1;
                } else {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                i += 1;
            }
        }
        _ => {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            let rest = &json[at..];
            let length = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            Some(at + length)
        }
    }
}

/// A string value's text, or `None` if `value` is not a string. Without escapes (the usual case)
/// it is taken as it is; otherwise serde_json decodes it.
pub(crate) fn string(value: &[u8]) -> Option<String> {
    let text = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', text).is_some() {
        return serde_json::from_slice(value).ok();
    }
    std::str::from_utf8(text).ok().map(str::to_owned)
}

/// A non-negative integer value, or `None` for anything else (`null` included).
pub(crate) fn unsigned(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        n.checked_mul(10)?.checked_add(digit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str, keys: &[&str]) -> Option<Vec<(usize, String)>> {
        let mut seen = Vec::new();
        top_level(json.as_bytes(), keys, |i, value| {
            seen.push((i, String::from_utf8(value.to_vec()).unwrap()));
        })?;
        Some(seen)
    }

    #[test]
    fn finds_top_level_values_as_written() {
        let json = r#" { "id" : "msg_1", "content": [{"type":"text","text":"a \"usage\": {\"input_tokens\": 9} {[ \\"}, {"usage": {"input_tokens": 8}}],
            "model":"claude-x", "nested": {"usage": {"input_tokens": 7}, "model": "no"},
            "stream" : true, "n": -1.5e3, "none": null,
            "usage": {"input_tokens": 12, "output_tokens": 3} } "#;
        assert_eq!(
            fields(json, &["model", "usage", "stream", "n", "none"]).unwrap(),
            [
                (0, r#""claude-x""#.to_owned()),
                (2, "true".to_owned()),
                (3, "-1.5e3".to_owned()),
                (4, "null".to_owned()),
                (1, r#"{"input_tokens": 12, "output_tokens": 3}"#.to_owned()),
            ]
        );
        // Long values, with what matters past the first bytes (searched with memchr).
        let long = format!(
            r#"{{"content":[{{"text":"{0}\"{0}}}]\\"}},{{"nested":[[{0:?}],{{}}]}}],"model":"{0}m"}}"#,
            "x".repeat(100)
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&long).is_ok(),
            "{long}"
        );
        assert_eq!(
            fields(&long, &["model"]).unwrap(),
            [(0, format!(r#""{}m""#, "x".repeat(100)))]
        );
        assert_eq!(fields("{}", &["model"]).unwrap(), []);
        assert_eq!(fields(" {\n} ", &["model"]).unwrap(), []);
    }

    #[test]
    fn anything_but_a_whole_object_is_refused() {
        for json in [
            "",
            "[]",
            r#""model""#,
            "{",
            r#"{"model""#,
            r#"{"model":"#,
            r#"{"model":"x"#,
            r#"{"model":"x","#,
            r#"{"model":"x" "usage":1}"#,
            r#"{"a":{"b":[1,2}"#,
            r#"{"model" "x"}"#,
            r#"{model:"x"}"#,
            r#"{"a":"\"}"#,
        ] {
            assert_eq!(fields(json, &["usage"]), None, "{json}");
        }
    }

    #[test]
    fn strings_and_numbers() {
        assert_eq!(string(br#""claude-x""#).as_deref(), Some("claude-x"));
        assert_eq!(string(br#""a\"b\u00e9""#).as_deref(), Some("a\"bé"));
        assert_eq!(string(b"null"), None);
        assert_eq!(string(b"12"), None);
        assert_eq!(unsigned(b"12"), Some(12));
        assert_eq!(unsigned(b"0"), Some(0));
        assert_eq!(unsigned(b"18446744073709551615"), Some(u64::MAX));
        for not in [
            &b"null"[..],
            b"-1",
            b"+1",
            b"1.5",
            b"1e3",
            br#""1""#,
            b"",
            b"18446744073709551616",
        ] {
            assert_eq!(unsigned(not), None, "{}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn agrees_with_serde_json_on_every_prefix() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Wanted {
            model: Option<String>,
            usage: Option<serde_json::Value>,
        }
        let json = r#"{"id":"m","content":[{"type":"text","text":"Grüße \u00e9 \\ \" }"}],"model":"claude-sonnet-4","usage":{"input_tokens":1,"cache_read_input_tokens":2}}"#;
        let expected: Wanted = serde_json::from_str(json).unwrap();
        let mut model = None;
        let mut usage = None;
        top_level(json.as_bytes(), &["model", "usage"], |i, value| {
            if i == 0 {
                model = serde_json::from_slice(value).unwrap();
            } else {
                usage = serde_json::from_slice(value).unwrap();
            }
        })
        .unwrap();
        assert_eq!(Wanted { model, usage }, expected);
        // Cut anywhere before the end, it is refused, never misread.
        for cut in 0..json.len() {
            let mut values = Vec::new();
            if top_level(&json.as_bytes()[..cut], &["model", "usage"], |_, v| {
                values.push(v.to_vec());
            })
            .is_some()
            {
                panic!("accepted a body cut at {cut}");
            }
            for value in values {
                assert!(serde_json::from_slice::<serde_json::Value>(&value).is_ok());
            }
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON values of every kind, nested a little, with strings full of quotes, backslashes,
    /// braces and non-ASCII text.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // Eighths: floats that print and parse back exactly (serde_json's default float
            // parsing is not exact for every double, which is not what is tested here).
            (-8000i32..8000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            r#"[a-z"\\{}\[\],:é🌍 \n\t]{0,12}"#.prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(r#"[a-z"\\ ]{0,6}"#, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        prop::collection::btree_map(
            prop_oneof![
                Just("model".to_owned()),
                Just("usage".to_owned()),
                "[a-z]{1,6}"
            ],
            value(),
            0..6,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn every_top_level_value_is_found_as_serde_json_reads_it(
            object in object(),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            let mut found = serde_json::Map::new();
            let whole = top_level(text.as_bytes(), &keys, |i, raw| {
                let value: Value = serde_json::from_slice(raw).unwrap();
                found.insert(keys[i].to_owned(), value);
            });
            prop_assert!(whole.is_some());
            prop_assert_eq!(found, object);
        }

        #[test]
        fn a_cut_object_is_refused_and_never_misread(object in object(), cut in any::<prop::sample::Index>()) {
            let text = serde_json::to_string(&object).unwrap();
            let cut = cut.index(text.len());
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            let result = top_level(&text.as_bytes()[..cut], &keys, |i, raw| {
                // What is reported before the cut is whole and right.
                let value: Value = serde_json::from_slice(raw).unwrap();
                assert_eq!(value, object[keys[i]]);
            });
            prop_assert!(result.is_none());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = top_level(&bytes, &["model", "usage"], |_, raw| {
                let _ = string(raw);
                let _ = unsigned(raw);
            });
        }
    }
}

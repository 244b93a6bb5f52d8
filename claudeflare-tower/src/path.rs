//! Which request paths the balancer forwards: only those that stay under `/v1/`.
//!
//! A path such as `/v1/../api/oauth/usage` (or `/v1/%2e%2e/…`) would reach the upstream as
//! written, with the account's credential on it; an upstream (or a proxy in front of it) that
//! normalises paths would then serve the account's OAuth endpoints to the client. So a path is
//! refused if any of its segments is a dot-segment once percent-decoded (repeatedly, against
//! double encoding), or decodes to something holding a slash or a backslash, which would make
//! new segments after decoding. Anthropic's API has no such paths.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// How many rounds of percent-decoding are looked through (`%252e` is `%2e` is `.`).
const DECODE_ROUNDS: usize = 3;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It does not start with `/v1/`.
    NotV1,
    /// A segment is `.` or `..`, raw or percent-encoded.
    DotSegment,
    /// A segment decodes to a slash or a backslash.
    EncodedSeparator,
}

impl Refused {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::NotV1 => "only paths under /v1/ are forwarded",
            Refused::DotSegment => {
                "the path has a dot-segment (`.` or `..`, raw or percent-encoded): it could leave /v1/"
            }
            Refused::EncodedSeparator => {
                "the path has an encoded slash or a backslash: it could leave /v1/"
            }
        }
    }
}

/// Check that `path` (without the query) stays under `/v1/`.
pub(crate) fn check(path: &str) -> Result<(), Refused> {
    let rest = path.strip_prefix("/v1/").ok_or(Refused::NotV1)?;
    for segment in rest.split('/') {
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), Refused> {
    // The common case, a plain name: nothing to decode.
    if !segment.contains(['%', '.', '\\']) {
        return Ok(());
    }
    let mut decoded = Cow::Borrowed(segment);
    for _ in 0..=DECODE_ROUNDS {
        if decoded == "." || decoded == ".." {
            return Err(Refused::DotSegment);
        }
        if decoded.contains(['/', '\\']) {
            return Err(Refused::EncodedSeparator);
        }
        let next = percent_decode_str(&decoded)
            .decode_utf8_lossy()
            .into_owned();
        if next == decoded {
            break;
        }
        decoded = Cow::Owned(next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_v1_are_refused() {
        for (path, why) in [
            ("/v1/../api/oauth/usage", Refused::DotSegment),
            ("/v1/%2e%2e/api/oauth/usage", Refused::DotSegment),
            (
                "/v1/%2E%2e/api/oauth/claude_cli/create_api_key",
                Refused::DotSegment,
            ),
            ("/v1/.%2E/x", Refused::DotSegment),
            ("/v1/%252e%252e/x", Refused::DotSegment),
            ("/v1/./messages", Refused::DotSegment),
            ("/v1/messages/..", Refused::DotSegment),
            ("/v1/messages/%2f..%2f..%2fapi", Refused::EncodedSeparator),
            ("/v1/..%2fapi", Refused::EncodedSeparator),
            ("/v1/..\\api", Refused::EncodedSeparator),
            ("/v1/%5c..%5capi", Refused::EncodedSeparator),
            ("/api/oauth/usage", Refused::NotV1),
            ("/v1", Refused::NotV1),
            ("/v10/messages", Refused::NotV1),
        ] {
            assert_eq!(check(path), Err(why), "{path}");
        }
    }

    #[test]
    fn anthropics_paths_pass() {
        for path in [
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/models",
            "/v1/models/claude-opus-4-8",
            "/v1/messages/batches/msgbatch_01.results",
            "/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content",
            "/v1/messages/...",
            "/v1//messages",
            "/v1/a%20b",
        ] {
            assert_eq!(check(path), Ok(()), "{path}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A plain reference: decode the path as often as it takes, then resolve its dot-segments
    /// the way a normalising server would (RFC 3986, 5.2.4), backslashes counting as slashes.
    fn normalise(path: &str) -> String {
        let mut decoded = path.to_owned();
        for _ in 0..8 {
            let next = percent_decode_str(&decoded)
                .decode_utf8_lossy()
                .into_owned();
            if next == decoded {
                break;
            }
            decoded = next;
        }
        let decoded = decoded.replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for segment in decoded.split('/').skip(1) {
            match segment {
                "." => {}
                ".." => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        format!("/{}", out.join("/"))
    }

    /// Path segments made of what attacks use: dots, slashes, percent escapes of both, names.
    fn segment() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%2e".to_owned()),
                Just("%2E".to_owned()),
                Just("%252e".to_owned()),
                Just("%2f".to_owned()),
                Just("%5c".to_owned()),
                Just("\\".to_owned()),
                Just("%".to_owned()),
                "[a-z_]{1,6}",
            ],
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn an_accepted_path_never_leaves_v1(segments in prop::collection::vec(segment(), 0..6)) {
            let path = format!("/v1/{}", segments.join("/"));
            if check(&path).is_ok() {
                let normal = normalise(&path);
                prop_assert!(normal.starts_with("/v1/") || normal == "/v1", "{path} -> {normal}");
            }
        }

        #[test]
        fn any_text_is_checked_without_panicking(path in ".{0,64}") {
            let _ = check(&path);
        }
    }
}

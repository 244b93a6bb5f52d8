//! The settings that take one name from a list: the strategy, the log level and the log format.
//! Read from the file and the environment with a message naming the valid ones; usable as clap
//! values too.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a named setting: its variants and their names, parsing (case-insensitive), display
/// and serde through the name.
macro_rules! names {
    ($(#[$doc:meta])* $name:ident, $key:literal, [$($(#[$vdoc:meta])* $variant:ident = $text:literal $(| $alias:literal)*),+ $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vdoc])* #[value(name = $text)] $variant),+
        }

        impl $name {
            /// Every value, in the order they are listed.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in the configuration and the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value called `name` (any case), or a message listing the valid ones.
            pub fn parse(name: &str) -> Result<Self, String> {
                $(
                    if name.eq_ignore_ascii_case($text) $(|| name.eq_ignore_ascii_case($alias))* {
                        return Ok($name::$variant);
                    }
                )+
                let valid: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                Err(format!("{} `{name}` is not one of {}", $key, valid.join(", ")))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(name: String) -> Result<Self, String> {
                Self::parse(&name)
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> &'static str {
                value.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    /// A built-in load-balancing strategy.
    StrategyName, "lb_strategy", [
        /// One account for the session's length (the default).
        Session = "session",
        /// Fewest requests first.
        LeastRequests = "least-requests",
        /// Each request starts at the next account.
        RoundRobin = "round-robin",
        /// Requests divided by tier.
        Weighted = "weighted",
        /// Tier-many slots per account.
        WeightedRoundRobin = "weighted-round-robin",
    ]
);

names!(
    /// How much the server logs.
    LogLevel, "log_level", [
        /// Everything, including each stored account state.
        Debug = "DEBUG",
        /// One line per request (the default).
        Info = "INFO",
        /// Failovers, rate limits, refusals.
        Warn = "WARN" | "WARNING",
        /// Failures only.
        Error = "ERROR",
    ]
);

names!(
    /// How log lines are written.
    LogFormat, "log_format", [
        /// For people.
        Pretty = "pretty",
        /// One JSON object per line.
        Json = "json",
    ]
);

impl LogLevel {
    /// The level as a tracing filter directive.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_refuse_with_the_list() {
        assert_eq!(
            StrategyName::parse("round-robin"),
            Ok(StrategyName::RoundRobin)
        );
        assert_eq!(LogLevel::parse("warning"), Ok(LogLevel::Warn));
        assert_eq!(LogLevel::parse("info"), Ok(LogLevel::Info));
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert_eq!(
            StrategyName::parse("random").unwrap_err(),
            "lb_strategy `random` is not one of session, least-requests, round-robin, weighted, weighted-round-robin"
        );
        assert_eq!(
            serde_json::to_value(LogLevel::Warn).unwrap(),
            serde_json::json!("WARN")
        );
        let parsed: StrategyName = serde_json::from_value(serde_json::json!("weighted")).unwrap();
        assert_eq!(parsed, StrategyName::Weighted);
        assert!(serde_json::from_value::<LogFormat>(serde_json::json!("xml")).is_err());
    }
}

//! See the examples beside this crate.

//! The claudeflare reference server as a library: what `claudeflare-server` is made of (proxy
//! app, API, dashboard, CLI commands, configuration, persistence). The binary is `main.rs`.

pub mod access;
pub mod api;
pub mod app;
pub mod aws;
pub mod background;
pub mod budget;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod fsutil;
pub mod gate;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod pricing;
pub mod recorder;
pub mod refresher;
pub mod rpm;
pub mod secrets;
pub mod serve;
pub mod signin;
pub mod state;
pub mod store;
pub mod threads;
pub mod tls;
pub mod tui;
pub mod usage;
pub mod views;

//! The page's markup. maud escapes every value, so account names and error messages cannot
//! inject markup.

use chrono::SecondsFormat;
use claudeflare_tower::{AccountStatus, Mode, Tier};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::charts::{self, Bar};
use super::format::{ago, clock, count, millis, span, usd};
use super::{AccountRow, Data, assets};
use crate::config::StrategyName;
use crate::db::rollups::{self, Totals};

/// Why `session` is the default, shown when another strategy is chosen with subscriptions.
pub const STICKY_ADVICE: &str = "Subscription accounts are best served by the session strategy: prompt caching is per \
    account, so staying on one account keeps cache hits (cheaper, faster), and switching accounts on every request \
    looks unlike a normal user to Anthropic's abuse detection.";

/// The whole page.
pub fn page(data: &Data) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { "claudeflare" }
                style { (PreEscaped(assets::CSS)) }
            }
            body {
                header.top {
                    h1 { span.logo aria-hidden="true" { "◆" } " claudeflare" }
                    (controls(data))
                }
                main {
                    (overview(data))
                    (accounts(data))
                    (keys(data))
                    (signins(data))
                    (analytics(data))
                    (history(data))
                }
                div #toast role="status" aria-live="polite" {}
                script { (PreEscaped(assets::JS)) }
            }
        }
    }
}

/// A page for when the data cannot be read.
pub fn error_page(message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "claudeflare: error" } style { (PreEscaped(assets::CSS)) } }
            body { main { section.card { h1 { "The dashboard cannot be shown" } p.error { (message) } } } }
        }
    }
}

fn controls(data: &Data) -> Markup {
    let sticky = data.strategy == "session";
    html! {
        div #controls.controls {
            label for="strategy" { "Strategy" }
            select #strategy name="strategy" {
                @for name in StrategyName::ALL.iter().map(|n| n.as_str()) {
                    option value=(name) selected[name == data.strategy] { (name) }
                }
            }
            @if !sticky && data.has_max {
                p.advice role="note" { (STICKY_ADVICE) }
            }
            @if !data.keys.is_empty() {
                form.logout method="post" action="/logout" { button type="submit" { "Log out" } }
            }
        }
    }
}

fn card(label: &str, value: &str, detail: Option<&str>) -> Markup {
    html! {
        div.stat {
            div.label { (label) }
            div.value { (value) }
            @if let Some(detail) = detail { div.detail { (detail) } }
        }
    }
}

fn tokens(t: &Totals) -> i64 {
    t.input_tokens + t.output_tokens + t.cache_read_input_tokens + t.cache_creation_input_tokens
}

fn overview(data: &Data) -> Markup {
    let all = &data.all;
    let today = &data.today;
    html! {
        section #overview aria-labelledby="overview-title" {
            h2 #overview-title { "Overview" }
            div.stats {
                (card("Requests", &count(all.total_requests), Some(&format!("{} today", count(today.total_requests)))))
                (card("Success rate", &format!("{:.1}%", all.success_rate()), Some(&format!("{} failed", count(all.total_requests - all.successful_requests)))))
                (card("Active accounts", &format!("{} / {}", data.active, data.accounts.len()), None))
                (card("Avg response", &millis(all.avg_response_time_ms), None))
                (card("Tokens today", &count(tokens(today)), Some(&format!("{} in · {} out · {} cached", count(today.input_tokens), count(today.output_tokens), count(today.cache_read_input_tokens + today.cache_creation_input_tokens)))))
                (card("Cost today", &usd(today.total_cost_usd), Some(&format!("{} in all", usd(all.total_cost_usd)))))
                @if data.dropped > 0 {
                    div.stat.warn { div.label { "Dropped records" } div.value { (data.dropped) } div.detail { "the database could not keep up" } }
                }
            }
            @if let Some(warning) = rollups::unpriced_warning(&data.unpriced) {
                p #unpriced.advice role="alert" { (warning) }
            }
        }
    }
}

fn status_cell(row: &AccountRow, data: &Data) -> Markup {
    let view = &row.view;
    html! {
        @match view.status {
            AccountStatus::Active => span.pill.ok { "active" },
            AccountStatus::Paused => span.pill.muted { "paused" },
            AccountStatus::RateLimited => {
                span.pill.warn { "rate-limited" }
                @if let Some(until) = view.rate_limited_until {
                    " " span.countdown data-until=(until.to_rfc3339_opts(SecondsFormat::Secs, true)) {
                        "resets in " (span(until - data.now))
                    }
                }
            },
            AccountStatus::NeedsReauth => {
                span.pill.bad { "needs re-auth" }
                " " code.command { (crate::views::reauth_command(&view.name)) }
                @if let Some(reason) = &view.status_reason { div.sub.reason { (reason) } }
            },
            AccountStatus::Forbidden => {
                span.pill.bad { "forbidden" }
                @if let Some(reason) = &view.status_reason { div.sub.reason { "upstream: " (reason) } }
                div.sub { "out of rotation until you resume or re-authenticate it" }
            },
            other => span.pill.muted { (other.as_str()) },
        }
        @if let Some(status) = &view.rate_limit_status {
            @if status != "allowed" { div.sub { "upstream: " (status) } }
        }
    }
}

fn session_cell(row: &AccountRow, data: &Data) -> Markup {
    let view = &row.view;
    match view
        .session_start
        .filter(|start| data.now - *start < data.session)
    {
        Some(start) => html! {
            div { (view.session_request_count) @if view.session_request_count == 1 { " request" } @else { " requests" } }
            div.sub { "started " (ago(Some(start), data.now)) ", " (span(start + data.session - data.now)) " left" }
        },
        None => html! { span.sub { "no open session" } },
    }
}

fn token_cell(row: &AccountRow, data: &Data) -> Markup {
    match (row.view.mode, row.view.token_expires_at) {
        (Mode::Max, Some(expires)) if expires > data.now => {
            html! { "valid " span.sub { (span(expires - data.now)) } }
        }
        (Mode::Max, _) => html! { span.pill.warn { "expired" } span.sub { " refreshes on use" } },
        _ => html! { span.sub { "API key" } },
    }
}

/// Utilization in percent: the account's live state (the latest of the rate-limit headers and the
/// usage endpoint, 0–1), else the stored usage (0–100).
fn utilization(row: &AccountRow) -> (Option<f64>, Option<f64>) {
    let usage = row.usage.as_ref();
    let five = usage
        .and_then(|u| u.five_hour.as_ref())
        .and_then(|w| w.utilization);
    let seven = usage
        .and_then(|u| u.seven_day.as_ref())
        .and_then(|w| w.utilization);
    (
        row.view.utilization_5h.map(|u| u * 100.0).or(five),
        row.view.utilization_7d.map(|u| u * 100.0).or(seven),
    )
}

fn usage_bar(label: &str, value: f64) -> Markup {
    html! {
        div.usage { span.sub { (label) } (charts::share(value / 100.0, &format!("{label} utilization"))) span.sub { (format!("{value:.0}%")) } }
    }
}

fn usage_cell(row: &AccountRow) -> Markup {
    let (five, seven) = utilization(row);
    let models = row.usage.as_ref().map_or(&[][..], |u| u.models.as_slice());
    let extra = row.usage.as_ref().and_then(|u| u.extra_usage.as_ref());
    html! {
        @if five.is_none() && seven.is_none() && models.is_empty() {
            span.sub { "–" }
        } @else {
            @for (label, value) in [("5 h", five), ("7 d", seven)] {
                @if let Some(value) = value { (usage_bar(label, value)) }
            }
            @for limit in models {
                @if let Some(value) = limit.utilization {
                    div.model-cap title=(format!("weekly cap of {}", limit.model)) {
                        (usage_bar(&limit.model, value))
                    }
                }
            }
            @if let Some(extra) = extra {
                @if extra.is_enabled == Some(true) {
                    div.sub { "extra usage on"
                        @if let Some(used) = extra.utilization { ", " (format!("{used:.0}%")) " used" } }
                }
            }
        }
    }
}

fn accounts(data: &Data) -> Markup {
    html! {
        section #accounts aria-labelledby="accounts-title" {
            h2 #accounts-title { "Accounts" }
            @if data.accounts.is_empty() {
                p.empty { "No accounts yet. Add one with " code { "claudeflare-server add NAME" } "." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th scope="col" { "Account" } th scope="col" { "Provider" } th scope="col" { "Tier" } th scope="col" { "Status" }
                            th scope="col" { "Session" } th scope="col" { "Requests" } th scope="col" { "Last used" }
                            th scope="col" { "Token" } th scope="col" { "Usage" } th scope="col" { span.visually-hidden { "Actions" } }
                        } }
                        tbody {
                            @for row in &data.accounts {
                                @let view = &row.view;
                                tr data-account=(view.name) {
                                    td { strong { (view.name) } div.sub { (view.mode.as_str()) } }
                                    td.provider {
                                        (view.provider) " " span.sub { "priority " (view.priority) }
                                        @if let Some(url) = &view.base_url { div.sub { (url) } }
                                        @if !view.model_map.is_empty() {
                                            div.sub { "maps " (view.model_map.iter().map(|e| format!("{}→{}", e.pattern, e.model)).collect::<Vec<_>>().join(", ")) }
                                        }
                                        @if let Some(proxy) = &view.proxy { div.sub { "via " (proxy) } }
                                    }
                                    td {
                                        span.badge { "×" (view.tier) }
                                        label.visually-hidden for={"tier-" (view.id)} { "Tier of " (view.name) }
                                        select.tier id={"tier-" (view.id)} data-tier=(view.id) {
                                            @for tier in [Tier::One, Tier::Five, Tier::Twenty] {
                                                option value=(tier) selected[tier == view.tier] { (tier) }
                                            }
                                        }
                                    }
                                    td { (status_cell(row, data)) }
                                    td { (session_cell(row, data)) }
                                    td { (count(i64::try_from(view.request_count).unwrap_or(i64::MAX))) div.sub { (view.total_requests) " in all" } }
                                    td { (ago(view.last_used, data.now)) }
                                    td { (token_cell(row, data)) }
                                    td { (usage_cell(row)) }
                                    td {
                                        @if view.paused || view.status == AccountStatus::Forbidden {
                                            button type="button" data-action="resume" data-account=(view.id) { "Resume " span.visually-hidden { (view.name) } }
                                        } @else {
                                            button type="button" data-action="pause" data-account=(view.id) { "Pause " span.visually-hidden { (view.name) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Succeeded requests per bucket, with the failed ones stacked on top.
fn request_bars(series: &[(String, Totals)], label: &dyn Fn(&str) -> String) -> Vec<Bar> {
    series
        .iter()
        .map(|(key, t)| Bar {
            label: label(key),
            value: t.successful_requests as f64,
            stacked: (t.total_requests - t.successful_requests) as f64,
        })
        .collect()
}

fn analytics(data: &Data) -> Markup {
    let hour_label = |key: &str| {
        key.get(11..13)
            .map_or_else(|| key.to_owned(), |h| format!("{h}:00"))
    };
    let day_label = |key: &str| key.get(5..).unwrap_or(key).to_owned();
    let requests = request_bars(&data.hourly, &hour_label);
    let hourly_tokens: Vec<Bar> = data
        .hourly
        .iter()
        .map(|(k, t)| Bar {
            label: hour_label(k),
            value: tokens(t) as f64,
            stacked: 0.0,
        })
        .collect();
    let daily_requests = request_bars(&data.daily, &day_label);
    let daily_cost: Vec<Bar> = data
        .daily
        .iter()
        .map(|(k, t)| Bar {
            label: day_label(k),
            value: t.total_cost_usd,
            stacked: 0.0,
        })
        .collect();
    let whole = |v: f64| count(v.round() as i64);
    html! {
        section #analytics aria-labelledby="analytics-title" {
            h2 #analytics-title { "Analytics" }
            div.charts {
                (charts::bars("chart-requests-24h", "Requests per hour, last 24 h", &requests, Some(("succeeded", "failed")), &whole))
                (charts::bars("chart-tokens-24h", "Tokens per hour, last 24 h", &hourly_tokens, None, &whole))
                (charts::bars("chart-requests-7d", "Requests per day, last 7 days", &daily_requests, Some(("succeeded", "failed")), &whole))
                (charts::bars("chart-cost-7d", "Cost per day, last 7 days", &daily_cost, None, &usd))
            }
            div.breakdowns {
                (breakdown("by-account", "By account, last 7 days", "Account", &data.by_account))
                (breakdown("by-model", "By model, last 7 days", "Model", &data.by_model))
            }
        }
    }
}

fn breakdown(id: &str, caption: &str, what: &str, rows: &[(String, Totals)]) -> Markup {
    let total: i64 = rows.iter().map(|(_, t)| t.total_requests).sum();
    html! {
        div.scroll {
            table #(id) {
                caption { (caption) }
                thead { tr { th scope="col" { (what) } th scope="col" { "Requests" } th scope="col" { "Share" } th scope="col" { "Tokens" } th scope="col" { "Cost" } } }
                tbody {
                    @if rows.is_empty() { tr { td colspan="5" .empty { "No requests in the last 7 days." } } }
                    @for (name, t) in rows {
                        @let name = if name.is_empty() { "(none)" } else { name.as_str() };
                        tr {
                            th scope="row" { (name) }
                            td { (count(t.total_requests)) }
                            td { (charts::share(if total > 0 { t.total_requests as f64 / total as f64 } else { 0.0 }, &format!("{name} share of requests"))) }
                            td { (count(tokens(t))) }
                            td { (usd(t.total_cost_usd)) }
                        }
                    }
                }
            }
        }
    }
}

fn keys(data: &Data) -> Markup {
    if data.keys.is_empty() {
        return html! {};
    }
    let limit = |value: Option<i64>| value.map_or_else(|| "–".to_owned(), |n| n.to_string());
    html! {
        section #keys aria-labelledby="keys-title" {
            h2 #keys-title { "Client keys" }
            div.scroll {
                table {
                    thead { tr {
                        th scope="col" { "Key" } th scope="col" { "Admin" } th scope="col" { "Per minute" }
                        th scope="col" { "In flight" } th scope="col" { "Budget / month" } th scope="col" { "Requests this month" }
                        th scope="col" { "Cost this month" } th scope="col" { "Last used" } th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for key in &data.keys {
                            @let name = key.name.as_str();
                            tr data-key=(name) {
                                td { strong { (name) } div.sub { code { (key.hint) "…" } } }
                                td { @if key.admin { span.pill.warn { "admin" } } @else { "no" } }
                                td { (limit(key.rpm)) }
                                td { (limit(key.concurrency)) }
                                td { @match key.monthly_budget_usd { Some(budget) => (usd(budget)), None => "–" } }
                                td { (key.requests_this_month) }
                                td { (usd(key.cost_this_month_usd)) }
                                td { (ago(key.last_used_at, data.now)) }
                                td { button type="button" data-revoke=(name) { "Revoke " span.visually-hidden { (name) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Sign-ins from Claude Code's `/login` waiting for a person: approve one for a key (or a new
/// key of its own), or refuse it. Shown only while some wait.
fn signins(data: &Data) -> Markup {
    if data.signins.is_empty() {
        return html! {};
    }
    html! {
        section #signins aria-labelledby="signins-title" {
            h2 #signins-title { "Sign-ins waiting" }
            p.sub { "Claude Code's /login, waiting for an approval. Check the code with the person signing in before you approve it." }
            div.scroll {
                table {
                    thead { tr {
                        th scope="col" { "Code" } th scope="col" { "Asked" } th scope="col" { "Client" }
                        th scope="col" { "Approve as" } th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for signin in &data.signins {
                            @let code = signin.user_code.as_str();
                            tr data-signin=(code) {
                                td { strong { code { (code) } } }
                                td { (ago(Some(signin.created_at), data.now)) }
                                td {
                                    (signin.user_agent.as_deref().unwrap_or("–"))
                                    @if let Some(surface) = &signin.surface { div.sub { (surface) } }
                                }
                                td {
                                    label.visually-hidden for={"signin-key-" (code)} { "Key for " (code) }
                                    select id={"signin-key-" (code)} data-signin-key=(code) {
                                        @for key in &data.keys {
                                            option value=(key.name) { (key.name) }
                                        }
                                        option value="" { "a new key…" }
                                    }
                                }
                                td {
                                    button type="button" data-approve=(code) { "Approve " span.visually-hidden { (code) } }
                                    " "
                                    button type="button" data-deny=(code) { "Refuse " span.visually-hidden { (code) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The providers of the pool, each once: the history's provider filter.
fn providers(data: &Data) -> Vec<&str> {
    let mut providers: Vec<&str> = data
        .accounts
        .iter()
        .map(|row| row.view.provider.as_str())
        .collect();
    providers.sort_unstable();
    providers.dedup();
    providers
}

fn history(data: &Data) -> Markup {
    let filter = &data.filter;
    let statuses = [
        ("", "all"),
        ("ok", "succeeded"),
        ("error", "failed"),
        ("429", "429 rate-limited"),
        ("529", "529 overloaded"),
        ("502", "502 unreachable"),
        ("503", "503 no account"),
    ];
    html! {
        section #history aria-labelledby="history-title" {
            h2 #history-title { "Requests" }
            form.filters method="get" action="/dashboard" {
                label for="filter-account" { "Account" }
                select #filter-account name="account" {
                    option value="" { "all" }
                    @for row in &data.accounts {
                        option value=(row.view.name) selected[filter.account.as_deref() == Some(row.view.name.as_str())] { (row.view.name) }
                    }
                }
                @if !data.keys.is_empty() {
                    label for="filter-key" { "Key" }
                    select #filter-key name="api_key" {
                        option value="" { "all" }
                        @for key in &data.keys {
                            option value=(key.name) selected[filter.api_key.as_deref() == Some(key.name.as_str())] { (key.name) }
                        }
                    }
                }
                label for="filter-provider" { "Provider" }
                select #filter-provider name="provider" {
                    option value="" { "all" }
                    @for provider in providers(data) {
                        option value=(provider) selected[filter.provider.as_deref() == Some(provider)] { (provider) }
                    }
                }
                label for="filter-status" { "Status" }
                select #filter-status name="status" {
                    @for (value, label) in statuses {
                        option value=(value) selected[filter.status.as_deref().unwrap_or("") == value] { (label) }
                    }
                }
                button type="submit" { "Filter" }
            }
            div.scroll {
                table #requests {
                    thead { tr {
                        th scope="col" { "Time" } th scope="col" { "Account" } th scope="col" { "Provider" } th scope="col" { "Model" } th scope="col" { "Status" }
                        th scope="col" { "Latency" } th scope="col" { "First byte" } th scope="col" { "Tokens in / out / cache" }
                        th scope="col" { "Cost" } th scope="col" { "Failovers" } th scope="col" { "Key" } th scope="col" { "Error" }
                    } }
                    tbody {
                        @if data.requests.is_empty() { tr { td colspan="12" .empty { "No requests to show." } } }
                        @for r in &data.requests {
                            tr.failed[!r.success] {
                                td { time datetime=(r.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)) { (clock(r.timestamp, data.now)) } }
                                td { (r.account_name.as_deref().unwrap_or("–")) }
                                td { (r.provider.as_deref().unwrap_or("–")) }
                                td {
                                    (r.model.as_deref().unwrap_or("–")) @if r.stream { " " span.sub { "stream" } }
                                    @if let Some(asked) = r.requested_model.as_deref().filter(|asked| Some(*asked) != r.model.as_deref()) {
                                        div.sub { "asked for " (asked) }
                                    }
                                }
                                td { @match r.status { Some(code) => span.pill.ok[r.success].bad[!r.success] { (code) }, None => span.pill.muted { "none" } } }
                                td { (millis(r.response_time_ms as f64)) }
                                td { (r.first_byte_ms.map_or_else(|| "–".to_owned(), |ms| millis(ms as f64))) }
                                td { (count(r.input_tokens)) " / " (count(r.output_tokens)) " / " (count(r.cache_read_input_tokens + r.cache_creation_input_tokens)) }
                                td {
                                    (usd(r.cost_usd))
                                    @if !r.price_known { " " span.pill.warn title="no price known for this model" { "no price" } }
                                }
                                td { (r.failover_attempts) }
                                td { (r.api_key.as_deref().unwrap_or("–")) }
                                td.error-text { (r.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

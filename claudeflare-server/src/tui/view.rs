//! Drawing the terminal dashboard: a pure function of [`App`], so the same state always draws
//! the same screen (the snapshot tests rely on it). Times are shown relative to when the data
//! was read, never to the clock.

use chrono::{DateTime, TimeDelta, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState, Tabs};

use super::state::{Account, App, Screen, Snapshot};

/// The keys, in the footer.
/// The keys, what each does, and the word for it below 100 columns (so that all of them fit in
/// 80: 75 columns).
const KEYS: &[(&str, &str, &str)] = &[
    ("q", "quit", "quit"),
    ("1-3", "view", "view"),
    ("↑↓", "select", ""),
    ("s", "strategy", "strategy"),
    ("p", "pause", "pause"),
    ("t", "tier", "tier"),
    ("a", "account", "acct"),
    ("v", "provider", "prov"),
    ("f", "failed", "fail"),
    ("Esc", "clear", "clear"),
];

/// Draw the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [top, body, message, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_top(frame, top, app);
    match &app.data {
        None => {
            let waiting = if app.unreachable.is_some() {
                "The server cannot be reached yet; trying again every 2 seconds."
            } else {
                "Reading the server…"
            };
            frame.render_widget(Paragraph::new(waiting).block(Block::bordered()), body);
        }
        Some(data) => match app.screen {
            Screen::Overview => draw_overview(frame, body, data),
            Screen::Accounts => draw_accounts(frame, body, app, data),
            Screen::Requests => draw_requests(frame, body, app, data),
        },
    }
    draw_message(frame, message, app);
    draw_footer(frame, footer);
}

fn draw_top(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let [tabs, right] =
        Layout::horizontal([Constraint::Length(39), Constraint::Min(0)]).areas(area);
    let selected = Screen::ALL
        .iter()
        .position(|s| *s == app.screen)
        .unwrap_or(0);
    let titles = Screen::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{} {}", i + 1, s.title()));
    frame.render_widget(
        Tabs::new(titles)
            .select(selected)
            .highlight_style(Style::new().bold().reversed())
            .divider("│")
            .padding(" ", " "),
        tabs,
    );
    let mut spans = Vec::new();
    if let Some(data) = &app.data {
        spans.push(Span::raw("strategy "));
        spans.push(Span::styled(data.strategy.clone(), Style::new().bold()));
        spans.push(Span::raw("  "));
    }
    spans.push(Span::styled(app.url.clone(), Style::new().dim()));
    frame.render_widget(Paragraph::new(Line::from(spans)).right_aligned(), right);
}

fn draw_message(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = match (&app.unreachable, &app.message) {
        (Some(error), _) => Line::styled(
            format!("The server cannot be reached ({error}); retrying every 2 s"),
            Style::new().fg(Color::Red),
        ),
        (None, Some(message)) => Line::raw(message.clone()),
        (None, None) => Line::default(),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect) {
    // Every key fits in 80 columns with one space between them and short words; wider, they
    // get room and whole words.
    let wide = area.width >= 100;
    let gap = if wide { "   " } else { " " };
    let mut spans = Vec::new();
    for (i, (key, what, short)) in KEYS.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(gap));
        }
        spans.push(Span::styled(*key, Style::new().bold()));
        let what = if wide { what } else { short };
        if !what.is_empty() {
            spans.push(Span::raw(format!(" {what}")));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).dim(), area);
}

fn draw_overview(frame: &mut Frame<'_>, area: Rect, data: &Snapshot) {
    let warning = crate::db::rollups::unpriced_warning(&data.stats.unpriced_models);
    let warning_rows = if warning.is_some() { 3 } else { 0 };
    let [now, totals, notice, chart] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(5),
        Constraint::Length(warning_rows),
        Constraint::Min(4),
    ])
    .areas(area);
    draw_now(frame, now, data);
    if let Some(warning) = warning {
        frame.render_widget(
            Paragraph::new(warning)
                .wrap(ratatui::widgets::Wrap { trim: true })
                .style(Style::new().fg(Color::Yellow)),
            notice,
        );
    }
    let [all, today] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(totals);
    let total_accounts = data.accounts.len();
    let stats = &data.stats;
    let lines = vec![
        Line::from(vec![
            Span::raw("requests       "),
            Span::styled(count(stats.total_requests), Style::new().bold()),
        ]),
        Line::from(vec![
            Span::raw("success rate   "),
            Span::styled(format!("{:.1}%", stats.success_rate), Style::new().bold()),
        ]),
        Line::from(vec![
            Span::raw("active         "),
            Span::styled(
                format!("{} of {total_accounts} accounts", stats.active_accounts),
                Style::new().bold(),
            ),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" All time ")),
        all,
    );
    let (mut requests, mut ok, mut tokens, mut cost) = (0, 0, 0, 0.0);
    for hour in data.today() {
        requests += hour.total_requests;
        ok += hour.successful_requests;
        tokens += hour.tokens();
        cost += hour.total_cost_usd;
    }
    let rate = if requests == 0 {
        0.0
    } else {
        ok as f64 * 100.0 / requests as f64
    };
    let lines = vec![
        Line::from(vec![
            Span::raw("requests       "),
            Span::styled(count(requests), Style::new().bold()),
            Span::raw(format!("  ({rate:.1}% ok)")),
        ]),
        Line::from(vec![
            Span::raw("tokens         "),
            Span::styled(count(tokens), Style::new().bold()),
        ]),
        Line::from(vec![
            Span::raw("cost           "),
            Span::styled(format!("${cost:.2}"), Style::new().bold()),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Today (UTC) ")),
        today,
    );
    // The last 24 hours, one column per hour, the current one last.
    let hours = last_hours(data);
    let [requests_area, tokens_area] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(chart);
    // Each hour as wide as the chart allows.
    let columns = usize::from(chart.width.saturating_sub(2) / 24).max(1);
    let widened = |value: fn(&(u64, u64)) -> u64| -> Vec<u64> {
        hours
            .iter()
            .flat_map(|h| std::iter::repeat_n(value(h), columns))
            .collect()
    };
    let per_hour = widened(|h| h.0);
    let tokens_per_hour = widened(|h| h.1);
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(
                " Requests per hour, last 24 h (peak {}) ",
                count(per_hour.iter().copied().max().unwrap_or(0))
            )))
            .data(&per_hour)
            .style(Style::new().fg(Color::Cyan)),
        requests_area,
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(
                " Tokens per hour, last 24 h (peak {}) ",
                count(tokens_per_hour.iter().copied().max().unwrap_or(0))
            )))
            .data(&tokens_per_hour)
            .style(Style::new().fg(Color::Magenta)),
        tokens_area,
    );
}

/// Which account the session is on and how close it is to its limits: what a person opening
/// the TUI wants at a glance.
fn draw_now(frame: &mut Frame<'_>, area: Rect, data: &Snapshot) {
    let bar_width = if area.width >= 120 { 10 } else { 0 };
    let line = match session_account(data) {
        Some(account) => Line::from(vec![
            Span::raw("on "),
            Span::styled(account.name.clone(), Style::new().bold()),
            Span::raw(format!(
                " ({}) · {} · 5 h {} · 7 d {}",
                provider_cell(account),
                account
                    .session_start
                    .map_or_else(String::new, |start| format!(
                        "session {}, {} req",
                        span(data.at - start),
                        count(account.session_request_count)
                    )),
                bar(account.utilization_5h, bar_width),
                bar(account.utilization_7d, bar_width),
            )),
        ]),
        None => Line::from("no open session: the next request starts one"),
    };
    frame.render_widget(
        Paragraph::new(line).block(Block::bordered().title(" Now ")),
        area,
    );
}

/// The account of the newest open session among those in rotation.
fn session_account(data: &Snapshot) -> Option<&Account> {
    data.accounts
        .iter()
        .filter(|a| a.status == "active" && a.session_start.is_some())
        .max_by_key(|a| a.session_start)
}

/// Requests and tokens of each of the last 24 hours, oldest first (hours without requests too).
fn last_hours(data: &Snapshot) -> Vec<(u64, u64)> {
    (0..24)
        .rev()
        .map(|ago| {
            let key = (data.at - TimeDelta::hours(ago))
                .format("%Y-%m-%dT%H")
                .to_string();
            data.hourly
                .iter()
                .find(|h| h.hour == key)
                .map_or((0, 0), |h| (h.total_requests, h.tokens()))
        })
        .collect()
}

fn draw_accounts(frame: &mut Frame<'_>, area: Rect, app: &App, data: &Snapshot) {
    let [table_area, detail] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
    // Wide, why an account is out of rotation gets a column; narrow, the line below the table
    // says it for the selected account.
    let wide = area.width >= 120;
    // Narrow, the fixed columns take 60 of 80 columns and the name the rest (14 or more):
    // mode and tier share one, the windows show their percentage only.
    let bar_width = if wide { 10 } else { 0 };
    let mut header = vec!["name", "provider"];
    let mut widths = vec![
        Constraint::Min(if wide { 16 } else { 12 }),
        Constraint::Length(13),
    ];
    if wide {
        header.extend(["mode", "tier"]);
        widths.extend([Constraint::Length(7), Constraint::Length(4)]);
    } else {
        header.push("plan");
        widths.push(Constraint::Length(9));
    }
    header.push("status");
    widths.push(Constraint::Length(if wide { 16 } else { 11 }));
    if wide {
        header.push("why");
        widths.push(Constraint::Min(20));
    }
    header.extend([
        "session",
        "5 h",
        "7 d",
        if wide { "requests" } else { "reqs" },
    ]);
    widths.extend([
        Constraint::Length(if wide { 16 } else { 9 }),
        Constraint::Length(if wide { bar_width + 5 } else { 4 }),
        Constraint::Length(if wide { bar_width + 5 } else { 4 }),
        Constraint::Length(if wide { 8 } else { 5 }),
    ]);
    let rows = data.accounts.iter().map(|account| {
        let mut cells = vec![
            Cell::from(account.name.clone()),
            Cell::from(provider_cell(account)),
        ];
        if wide {
            cells.extend([
                Cell::from(account.mode.clone()),
                Cell::from(account.tier.to_string()),
            ]);
        } else {
            cells.push(Cell::from(format!("{} {}", account.mode, account.tier)));
        }
        cells.push(Cell::from(status(account, data.at)).style(status_style(&account.status)));
        if wide {
            cells.push(Cell::from(
                account.status_reason.clone().unwrap_or_default(),
            ));
        }
        // Narrow, the session's age only (the overview has its requests).
        let session = match account.session_start {
            Some(start) if !wide => span(data.at - start),
            _ => session(account, data.at),
        };
        cells.extend([
            Cell::from(session),
            Cell::from(bar(account.utilization_5h, bar_width)),
            Cell::from(bar(account.utilization_7d, bar_width)),
            Cell::from(count(account.request_count)),
        ]);
        Row::new(cells)
    });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().bold()))
        .block(Block::bordered().title(format!(" Accounts ({}) ", data.accounts.len())))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);
    let detail_text = app.selected_account().map_or_else(String::new, |account| {
        let reason = account
            .status_reason
            .clone()
            .unwrap_or_else(|| "in rotation".to_owned());
        format!("{}: {reason}", account.name)
    });
    frame.render_widget(
        Paragraph::new(detail_text).block(Block::default().borders(Borders::TOP)),
        detail,
    );
}

/// A provider's name, short (`compatible` for `anthropic-compatible`).
fn short_provider(provider: &str) -> String {
    provider.trim_start_matches("anthropic-").to_owned()
}

/// The provider column of an account: its provider, and its priority when not the default.
fn provider_cell(account: &Account) -> String {
    let provider = short_provider(&account.provider);
    if account.priority == 0 {
        provider
    } else {
        format!("{provider} p{}", account.priority)
    }
}

fn draw_requests(frame: &mut Frame<'_>, area: Rect, app: &App, data: &Snapshot) {
    let wide = area.width >= 120;
    let mut title = " Newest requests".to_owned();
    if let Some(account) = &app.filter.account {
        title.push_str(&format!(", account {account}"));
    }
    if let Some(provider) = &app.filter.provider {
        title.push_str(&format!(", provider {provider}"));
    }
    if app.filter.failures {
        title.push_str(", failed only");
    }
    title.push(' ');
    let header = Row::new([
        "time", "account", "provider", "model", "status", "ms", "in", "out", "cost", "error",
    ])
    .style(Style::new().bold());
    let rows = data.requests.iter().map(|request| {
        let style = if request.success {
            Style::new()
        } else {
            Style::new().fg(Color::Red)
        };
        Row::new(vec![
            request
                .timestamp
                .map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_default(),
            request.account.clone().unwrap_or_else(|| "-".into()),
            short_provider(request.provider.as_deref().unwrap_or("-")),
            short_model(request.model.as_deref().unwrap_or("-"), wide),
            request.status.map_or_else(|| "-".into(), |s| s.to_string()),
            request.response_time_ms.to_string(),
            count(request.input_tokens),
            count(request.output_tokens),
            format!("{:.4}", request.cost_usd),
            request.error.clone().unwrap_or_default(),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(8),
        Constraint::Length(if wide { 16 } else { 9 }),
        Constraint::Length(10),
        Constraint::Length(if wide { 24 } else { 10 }),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Min(5),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        area,
    );
}

/// `claude-sonnet-4-20250514` as `sonnet-4` where room is short.
fn short_model(model: &str, wide: bool) -> String {
    if wide {
        return model.to_owned();
    }
    let trimmed = model.strip_prefix("claude-").unwrap_or(model);
    // Drop a trailing date (`-20250514`).
    match trimmed.rsplit_once('-') {
        Some((head, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => {
            head.to_owned()
        }
        _ => trimmed.to_owned(),
    }
}

fn status(account: &Account, at: DateTime<Utc>) -> String {
    match (account.status.as_str(), account.rate_limited_until) {
        ("rate_limited", Some(until)) => format!("limit {}", span(until - at)),
        ("needs_reauth", _) => "reauth".into(),
        (status, _) => status.replace('_', " "),
    }
}

fn status_style(status: &str) -> Style {
    match status {
        "active" => Style::new().fg(Color::Green),
        "paused" => Style::new().fg(Color::Yellow),
        _ => Style::new().fg(Color::Red),
    }
}

fn session(account: &Account, at: DateTime<Utc>) -> String {
    match account.session_start {
        Some(start) => format!(
            "{} · {}",
            span(at - start),
            count(account.session_request_count)
        ),
        None => "-".into(),
    }
}

/// `used` (0–1) as a bar of `width` cells (none: the percentage alone) and a percentage.
fn bar(used: Option<f64>, width: u16) -> String {
    let Some(used) = used else {
        return "-".into();
    };
    let used = used.clamp(0.0, 1.0);
    if width == 0 {
        return format!("{:>3.0}%", used * 100.0);
    }
    let width = usize::from(width);
    let full = (used * width as f64).round() as usize;
    format!(
        "{}{} {:>3.0}%",
        "█".repeat(full),
        "░".repeat(width - full.min(width)),
        used * 100.0
    )
}

/// A span of time in its two largest units: `2h05m`, `4m10s`, `12s`.
fn span(delta: TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

/// `n` with thousands shortened: `950`, `12.3k`, `4.5M`.
fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1_000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::state::{Filter, Hour, Request, Stats};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn at() -> DateTime<Utc> {
        "2026-11-30T15:40:00Z".parse().unwrap()
    }

    /// The fixed answers the screens are drawn from.
    fn app() -> App {
        let now = at();
        let mut app = App::new("http://127.0.0.1:8080");
        let hourly = (0..24)
            .map(|ago: i64| {
                let requests = (24 - ago as u64) * 37 % 211;
                Hour {
                    hour: (now - TimeDelta::hours(ago))
                        .format("%Y-%m-%dT%H")
                        .to_string(),
                    total_requests: requests,
                    successful_requests: requests.saturating_sub(ago as u64 % 3),
                    input_tokens: requests * 1200,
                    output_tokens: requests * 300,
                    cache_read_input_tokens: requests * 9000,
                    cache_creation_input_tokens: requests * 100,
                    total_cost_usd: requests as f64 * 0.011,
                }
            })
            .collect();
        let request = |minutes: i64, account: &str, status: u16, error: Option<&str>| Request {
            timestamp: Some(now - TimeDelta::minutes(minutes)),
            account: Some(account.into()),
            provider: Some("anthropic".into()),
            model: Some("claude-sonnet-4-20250514".into()),
            status: Some(status),
            success: status == 200,
            error: error.map(Into::into),
            response_time_ms: 1840 + minutes as u64 * 13,
            input_tokens: 1520,
            output_tokens: 412,
            cost_usd: 0.0107,
        };
        app.loaded(Snapshot {
            stats: Stats {
                total_requests: 18_452,
                success_rate: 99.2,
                active_accounts: 2,
                unpriced_models: Vec::new(),
            },
            hourly,
            accounts: vec![
                Account {
                    id: "1".into(),
                    name: "personal".into(),
                    provider: "anthropic".into(),
                    mode: "max".into(),
                    tier: 20,
                    status: "active".into(),
                    session_start: Some(now - TimeDelta::minutes(95)),
                    session_request_count: 412,
                    request_count: 9_120,
                    utilization_5h: Some(0.62),
                    utilization_7d: Some(0.31),
                    ..Account::default()
                },
                Account {
                    id: "2".into(),
                    name: "work".into(),
                    provider: "anthropic".into(),
                    mode: "max".into(),
                    tier: 5,
                    status: "rate_limited".into(),
                    rate_limited_until: Some(now + TimeDelta::minutes(74)),
                    request_count: 8_811,
                    utilization_5h: Some(1.0),
                    utilization_7d: Some(0.58),
                    ..Account::default()
                },
                Account {
                    id: "3".into(),
                    name: "api".into(),
                    provider: "anthropic-compatible".into(),
                    priority: 1,
                    mode: "console".into(),
                    tier: 1,
                    status: "paused".into(),
                    request_count: 521,
                    ..Account::default()
                },
                Account {
                    id: "4".into(),
                    name: "old".into(),
                    provider: "anthropic".into(),
                    mode: "max".into(),
                    tier: 5,
                    status: "needs_reauth".into(),
                    status_reason: Some(
                        "refresh token revoked; run `claudeflare-server reauth old` to sign in again"
                            .into(),
                    ),
                    ..Account::default()
                },
            ],
            requests: vec![
                request(0, "personal", 200, None),
                request(1, "personal", 200, None),
                request(2, "work", 429, Some("rate limited; failed over")),
                request(3, "personal", 200, None),
                request(5, "work", 529, Some("upstream overloaded")),
            ],
            strategy: "session".into(),
            strategies: vec!["session".into(), "round-robin".into()],
            at: now,
        });
        app
    }

    fn render(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, app)).unwrap();
        terminal.backend().to_string()
    }

    macro_rules! snapshots {
        ($($name:ident: $screen:expr, $width:expr, $height:expr;)*) => {$(
            #[test]
            fn $name() {
                let mut app = app();
                app.screen = $screen;
                insta::assert_snapshot!(render(&app, $width, $height));
            }
        )*};
    }

    snapshots! {
        overview_80x24: Screen::Overview, 80, 24;
        overview_160x48: Screen::Overview, 160, 48;
        accounts_80x24: Screen::Accounts, 80, 24;
        accounts_160x48: Screen::Accounts, 160, 48;
        requests_80x24: Screen::Requests, 80, 24;
        requests_160x48: Screen::Requests, 160, 48;
    }

    #[test]
    fn the_overview_names_the_models_without_a_price_and_the_fix() {
        let mut app = app();
        if let Some(data) = &mut app.data {
            data.stats.unpriced_models = vec![crate::db::rollups::Unpriced {
                model: "claude-opus-9".into(),
                requests: 3,
            }];
        }
        let screen = render(&app, 120, 30);
        assert!(
            screen.contains("No price for claude-opus-9 (3 requests)"),
            "{screen}"
        );
        assert!(screen.contains("pricing update"), "{screen}");
        assert!(!render(&self::app(), 120, 30).contains("No price"));
    }

    #[test]
    fn an_unreachable_server_is_said_and_the_last_data_stays() {
        let mut app = app();
        app.failed("connection refused".into());
        let screen = render(&app, 80, 24);
        assert!(screen.contains("cannot be reached"), "{screen}");
        assert!(screen.contains("18.5k"), "the last totals stay: {screen}");
        let mut empty = App::new("http://127.0.0.1:9");
        empty.failed("connection refused".into());
        assert!(render(&empty, 80, 24).contains("trying again every 2 seconds"));
    }

    #[test]
    fn a_filtered_list_says_so_and_failures_are_red() {
        let mut app = app();
        app.screen = Screen::Requests;
        app.filter = Filter {
            account: Some("work".into()),
            provider: None,
            failures: true,
        };
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|frame| draw(frame, &app)).unwrap();
        let screen = terminal.backend().to_string();
        assert!(screen.contains("account work, failed only"), "{screen}");
        let buffer = terminal.backend().buffer();
        let row = (0..30)
            .find(|y| {
                (0..120)
                    .map(|x| buffer[(x, *y)].symbol())
                    .collect::<String>()
                    .contains("upstream overloaded")
            })
            .unwrap();
        assert_eq!(buffer[(2, row)].fg, Color::Red);
    }

    #[test]
    fn names_keep_fourteen_characters_at_80_columns_and_every_key_shows() {
        let mut app = app();
        app.screen = Screen::Accounts;
        if let Some(data) = app.data.as_mut() {
            data.accounts[1].name = "team-london-12".into();
        }
        let screen = render(&app, 80, 24);
        assert!(screen.contains("team-london-12"), "{screen}");
        assert!(screen.contains("Esc clear"), "{screen}");
        app.screen = Screen::Overview;
        let screen = render(&app, 80, 24);
        assert!(screen.contains("on personal (anthropic)"), "{screen}");
        assert!(screen.contains("5 h  62%"), "{screen}");
    }

    #[test]
    fn small_pieces() {
        assert_eq!(span(TimeDelta::minutes(74)), "1h14m");
        assert_eq!(span(TimeDelta::seconds(250)), "4m10s");
        assert_eq!(span(TimeDelta::seconds(-5)), "0s");
        assert_eq!(count(18_452), "18.5k");
        assert_eq!(bar(Some(0.5), 4), "██░░  50%");
        assert_eq!(bar(Some(3.0), 4), "████ 100%");
        assert_eq!(bar(None, 4), "-");
        assert_eq!(short_model("claude-sonnet-4-20250514", false), "sonnet-4");
    }
}

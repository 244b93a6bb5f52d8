//! What the terminal dashboard shows and how keys change it: plain data and a state machine,
//! with no terminal and no network, so both are tested as they are.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// `GET /api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Requests recorded.
    pub total_requests: u64,
    /// Successful ones, in percent.
    pub success_rate: f64,
    /// Accounts that can take requests now.
    pub active_accounts: u64,
    /// The models that found no price.
    pub unpriced_models: Vec<crate::db::rollups::Unpriced>,
}

/// One hour of `GET /api/stats/hourly`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Hour {
    /// `YYYY-MM-DDTHH`, UTC.
    pub hour: String,
    /// Requests.
    pub total_requests: u64,
    /// Successful requests.
    pub successful_requests: u64,
    /// Input tokens (cache reads and writes apart).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cache reads.
    pub cache_read_input_tokens: u64,
    /// Cache writes.
    pub cache_creation_input_tokens: u64,
    /// Estimated cost.
    pub total_cost_usd: f64,
}

impl Hour {
    /// Every token of the hour.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_input_tokens
    }
}

/// One account of `GET /api/accounts` (which holds no secret).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Account {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// "anthropic", "anthropic-compatible", ….
    pub provider: String,
    /// Lower goes first.
    pub priority: u32,
    /// "max" or "console".
    pub mode: String,
    /// 1, 5 or 20.
    pub tier: u8,
    /// "active", "paused", "rate_limited", "needs_reauth" or "forbidden".
    pub status: String,
    /// Why it is out of rotation, in words.
    pub status_reason: Option<String>,
    /// Out of rotation until then.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// Start of its sticky session.
    pub session_start: Option<DateTime<Utc>>,
    /// Requests in the session.
    pub session_request_count: u64,
    /// Requests since the counters were reset.
    pub request_count: u64,
    /// 5-hour window used, 0–1.
    pub utilization_5h: Option<f64>,
    /// 7-day window used, 0–1.
    pub utilization_7d: Option<f64>,
}

/// One request of `GET /api/requests`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Request {
    /// When it arrived.
    pub timestamp: Option<DateTime<Utc>>,
    /// The account that served it.
    pub account: Option<String>,
    /// That account's provider.
    pub provider: Option<String>,
    /// The model asked for.
    pub model: Option<String>,
    /// HTTP status of the answer.
    pub status: Option<u16>,
    /// Whether it succeeded.
    pub success: bool,
    /// What went wrong.
    pub error: Option<String>,
    /// Total time.
    pub response_time_ms: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Estimated cost.
    pub cost_usd: f64,
}

/// Everything one refresh reads from the server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Totals.
    pub stats: Stats,
    /// The last 24 hours that saw requests.
    pub hourly: Vec<Hour>,
    /// The accounts.
    pub accounts: Vec<Account>,
    /// The newest requests (under the filter).
    pub requests: Vec<Request>,
    /// The strategy in use.
    pub strategy: String,
    /// Every strategy.
    pub strategies: Vec<String>,
    /// When it was read.
    pub at: DateTime<Utc>,
}

impl Snapshot {
    /// Today's hours (UTC).
    pub fn today(&self) -> impl Iterator<Item = &Hour> {
        let today = self.at.format("%Y-%m-%d").to_string();
        self.hourly
            .iter()
            .filter(move |hour| hour.hour.starts_with(&today))
    }
}

/// The screens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Totals, today and the chart.
    Overview,
    /// Accounts, with their limits.
    Accounts,
    /// The newest requests.
    Requests,
}

impl Screen {
    /// In tab order.
    pub const ALL: [Screen; 3] = [Screen::Overview, Screen::Accounts, Screen::Requests];

    /// Its tab title.
    pub fn title(self) -> &'static str {
        match self {
            Screen::Overview => "Overview",
            Screen::Accounts => "Accounts",
            Screen::Requests => "Requests",
        }
    }
}

/// Which requests the requests screen lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this account's.
    pub account: Option<String>,
    /// Only those served by this provider's accounts.
    pub provider: Option<String>,
    /// Only the failed ones.
    pub failures: bool,
}

/// A key, as the state machine sees it (the terminal's events are turned into these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A character.
    Char(char),
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
    /// Escape.
    Esc,
    /// Ctrl-C.
    Interrupt,
}

/// What the state machine asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave.
    Quit,
    /// Read everything again now (the filter changed, say).
    Refresh,
    /// `POST /api/config/strategy`.
    SetStrategy(String),
    /// `POST /api/accounts/{id}/pause`.
    Pause(String),
    /// `POST /api/accounts/{id}/resume`.
    Resume(String),
    /// `POST /api/accounts/{id}/tier`.
    SetTier(String, u8),
}

/// The whole state of the terminal dashboard.
#[derive(Debug, Clone)]
pub struct App {
    /// The server's URL, for the title and the "unreachable" line.
    pub url: String,
    /// The screen shown.
    pub screen: Screen,
    /// The last snapshot read, if any.
    pub data: Option<Snapshot>,
    /// Why the last refresh failed, while it fails.
    pub unreachable: Option<String>,
    /// The message line: what the last action did, or why it failed.
    pub message: Option<String>,
    /// The selected account (an index into the snapshot's accounts).
    pub selected: usize,
    /// The requests screen's filter.
    pub filter: Filter,
}

impl App {
    /// Nothing read yet.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            screen: Screen::Overview,
            data: None,
            unreachable: None,
            message: None,
            selected: 0,
            filter: Filter::default(),
        }
    }

    /// A refresh succeeded.
    pub fn loaded(&mut self, snapshot: Snapshot) {
        self.selected = self.selected.min(snapshot.accounts.len().saturating_sub(1));
        self.data = Some(snapshot);
        self.unreachable = None;
    }

    /// A refresh failed: the last data stays, marked as old.
    pub fn failed(&mut self, error: String) {
        self.unreachable = Some(error);
    }

    /// The selected account, if there is one.
    pub fn selected_account(&self) -> Option<&Account> {
        self.data.as_ref()?.accounts.get(self.selected)
    }

    /// Handle one key; returns what the loop must do.
    pub fn key(&mut self, key: Key) -> Option<Action> {
        match key {
            Key::Char('q') | Key::Interrupt => return Some(Action::Quit),
            Key::Char('1') => self.screen = Screen::Overview,
            Key::Char('2') => self.screen = Screen::Accounts,
            Key::Char('3') => self.screen = Screen::Requests,
            Key::Tab => self.screen = self.next_screen(1),
            Key::BackTab => self.screen = self.next_screen(Screen::ALL.len() - 1),
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => {
                let count = self.data.as_ref().map_or(0, |d| d.accounts.len());
                self.selected = (self.selected + 1).min(count.saturating_sub(1));
            }
            Key::Char('s') => return self.next_strategy(),
            Key::Char('p') => {
                let account = self.selected_account()?;
                return Some(if account.status == "paused" {
                    Action::Resume(account.id.clone())
                } else {
                    Action::Pause(account.id.clone())
                });
            }
            Key::Char('t') => {
                let account = self.selected_account()?;
                let next = match account.tier {
                    1 => 5,
                    5 => 20,
                    _ => 1,
                };
                return Some(Action::SetTier(account.id.clone(), next));
            }
            Key::Char('a') => {
                // Filter the requests by the selected account; again to show all.
                let name = self.selected_account().map(|a| a.name.clone());
                self.filter.account = if self.filter.account == name {
                    None
                } else {
                    name
                };
                self.screen = Screen::Requests;
                return Some(Action::Refresh);
            }
            Key::Char('v') => {
                // Filter the requests by the selected account's provider; again to show all.
                let provider = self.selected_account().map(|a| a.provider.clone());
                self.filter.provider = if self.filter.provider == provider {
                    None
                } else {
                    provider
                };
                self.screen = Screen::Requests;
                return Some(Action::Refresh);
            }
            Key::Char('f') => {
                self.filter.failures = !self.filter.failures;
                self.screen = Screen::Requests;
                return Some(Action::Refresh);
            }
            Key::Esc => {
                self.message = None;
                if self.filter != Filter::default() {
                    self.filter = Filter::default();
                    return Some(Action::Refresh);
                }
            }
            Key::Char('r') => return Some(Action::Refresh),
            _ => {}
        }
        None
    }

    /// What the message line says once `action` is done.
    pub fn done(&self, action: &Action) -> String {
        let name = |id: &str| {
            self.data
                .as_ref()
                .and_then(|d| d.accounts.iter().find(|a| a.id == id))
                .map_or_else(|| id.to_owned(), |a| a.name.clone())
        };
        match action {
            Action::SetStrategy(strategy) => format!("strategy switched to {strategy}"),
            Action::Pause(id) => format!("{} paused", name(id)),
            Action::Resume(id) => format!("{} resumed", name(id)),
            Action::SetTier(id, tier) => format!("{} is now tier {tier}", name(id)),
            Action::Quit | Action::Refresh => String::new(),
        }
    }

    fn next_screen(&self, step: usize) -> Screen {
        let at = Screen::ALL
            .iter()
            .position(|s| *s == self.screen)
            .unwrap_or(0);
        Screen::ALL[(at + step) % Screen::ALL.len()]
    }

    fn next_strategy(&self) -> Option<Action> {
        let data = self.data.as_ref()?;
        let at = data
            .strategies
            .iter()
            .position(|s| *s == data.strategy)
            .map_or(0, |i| i + 1);
        let next = data.strategies.get(at % data.strategies.len().max(1))?;
        Some(Action::SetStrategy(next.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        let mut app = App::new("http://127.0.0.1:8080");
        app.loaded(Snapshot {
            accounts: vec![
                Account {
                    id: "id-a".into(),
                    name: "a".into(),
                    tier: 1,
                    status: "active".into(),
                    ..Account::default()
                },
                Account {
                    id: "id-b".into(),
                    name: "b".into(),
                    tier: 20,
                    status: "paused".into(),
                    ..Account::default()
                },
            ],
            strategy: "session".into(),
            strategies: vec!["session".into(), "round-robin".into()],
            ..Snapshot::default()
        });
        app
    }

    #[test]
    fn q_and_ctrl_c_quit() {
        assert_eq!(app().key(Key::Char('q')), Some(Action::Quit));
        assert_eq!(app().key(Key::Interrupt), Some(Action::Quit));
    }

    #[test]
    fn screens_by_number_and_in_turn() {
        let mut app = app();
        app.key(Key::Char('3'));
        assert_eq!(app.screen, Screen::Requests);
        app.key(Key::Tab);
        assert_eq!(app.screen, Screen::Overview);
        app.key(Key::BackTab);
        assert_eq!(app.screen, Screen::Requests);
        app.key(Key::Char('2'));
        assert_eq!(app.screen, Screen::Accounts);
    }

    #[test]
    fn the_selection_stays_on_the_accounts() {
        let mut app = app();
        app.key(Key::Up);
        assert_eq!(app.selected, 0);
        app.key(Key::Down);
        app.key(Key::Down);
        assert_eq!(app.selected, 1);
        // A refresh with fewer accounts moves it back onto one.
        let mut fewer = app.data.clone().unwrap();
        fewer.accounts.truncate(1);
        app.loaded(fewer);
        assert_eq!(app.selected, 0);
    }

    #[test]
    fn pause_resumes_a_paused_account_and_tier_cycles() {
        let mut app = app();
        assert_eq!(app.key(Key::Char('p')), Some(Action::Pause("id-a".into())));
        assert_eq!(
            app.key(Key::Char('t')),
            Some(Action::SetTier("id-a".into(), 5))
        );
        app.key(Key::Down);
        assert_eq!(app.key(Key::Char('p')), Some(Action::Resume("id-b".into())));
        assert_eq!(
            app.key(Key::Char('t')),
            Some(Action::SetTier("id-b".into(), 1))
        );
    }

    #[test]
    fn strategy_goes_to_the_next_one_and_wraps() {
        let mut app = app();
        assert_eq!(
            app.key(Key::Char('s')),
            Some(Action::SetStrategy("round-robin".into()))
        );
        app.data.as_mut().unwrap().strategy = "round-robin".into();
        assert_eq!(
            app.key(Key::Char('s')),
            Some(Action::SetStrategy("session".into()))
        );
    }

    #[test]
    fn filters_toggle_and_escape_clears_them() {
        let mut app = app();
        assert_eq!(app.key(Key::Char('a')), Some(Action::Refresh));
        assert_eq!(app.filter.account.as_deref(), Some("a"));
        assert_eq!(app.screen, Screen::Requests);
        assert_eq!(app.key(Key::Char('f')), Some(Action::Refresh));
        assert!(app.filter.failures);
        assert_eq!(app.key(Key::Esc), Some(Action::Refresh));
        assert_eq!(app.filter, Filter::default());
        assert_eq!(app.key(Key::Esc), None, "nothing left to clear");
    }

    #[test]
    fn without_data_actions_do_nothing() {
        let mut app = App::new("http://127.0.0.1:8080");
        assert_eq!(app.key(Key::Char('p')), None);
        assert_eq!(app.key(Key::Char('s')), None);
        assert_eq!(app.key(Key::Char('t')), None);
        app.failed("connection refused".into());
        assert_eq!(app.unreachable.as_deref(), Some("connection refused"));
    }
}

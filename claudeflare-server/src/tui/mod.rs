//! `claudeflare-server tui`: the terminal dashboard. It speaks only the HTTP API, so it works
//! against a local server, a remote one (with an admin key) and any instance of a fleet.
//!
//! Three screens (overview with a chart of the last 24 hours, accounts, newest requests),
//! refreshed every 2 seconds; actions go through the API and say on the message line what they
//! did or why they failed. ratatui only redraws the cells that changed, so a refresh does not
//! flicker. The terminal is restored on `q`, Ctrl-C, SIGTERM and on a panic (ratatui's hook).

mod api;
pub mod state;
mod view;

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use state::{Action, App, Key};

/// How often the screens are read again.
const REFRESH: Duration = Duration::from_secs(2);

/// Run the dashboard against the server at `url` until the user quits.
pub async fn run(url: String, key: Option<String>) -> anyhow::Result<()> {
    let api = api::Api::new(&url, key)?;
    let mut app = App::new(url);
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &api, &mut app).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    api: &api::Api,
    app: &mut App,
) -> anyhow::Result<()> {
    // crossterm reads the terminal with blocking calls: on a thread of their own, so the loop
    // below waits on keys, refreshes and signals alike.
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("tui-input".into())
        .spawn(move || {
            while let Ok(event) = event::read() {
                if keys_tx.send(event).is_err() {
                    break;
                }
            }
        })?;
    let (loaded_tx, mut loaded) = mpsc::unbounded_channel();
    let mut loading = false;
    let refresh = |loading: &mut bool, filter: state::Filter| {
        if std::mem::replace(loading, true) {
            return;
        }
        let (api, loaded_tx) = (api.clone(), loaded_tx.clone());
        tokio::spawn(async move {
            let _ = loaded_tx.send(api.snapshot(&filter).await);
        });
    };
    let mut tick = tokio::time::interval(REFRESH);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        terminal.draw(|frame| view::draw(frame, app))?;
        tokio::select! {
            _ = tick.tick() => refresh(&mut loading, app.filter.clone()),
            Some(result) = loaded.recv() => {
                loading = false;
                match result {
                    Ok(snapshot) => app.loaded(snapshot),
                    Err(error) => app.failed(error),
                }
            }
            Some(event) = keys.recv() => {
                let Event::Key(pressed) = event else {
                    // A resize: drawn again at the new size.
                    continue;
                };
                if pressed.kind != KeyEventKind::Press {
                    continue;
                }
                let Some(key) = key_of(pressed.code, pressed.modifiers) else {
                    continue;
                };
                match app.key(key) {
                    None => {}
                    Some(Action::Quit) => return Ok(()),
                    Some(Action::Refresh) => {
                        // The filter changed: the list in flight is of the old one.
                        loading = false;
                        refresh(&mut loading, app.filter.clone());
                    }
                    Some(action) => {
                        app.message = Some(match api.act(&action).await {
                            Ok(()) => app.done(&action),
                            Err(error) => format!("could not do that: {error}"),
                        });
                        loading = false;
                        refresh(&mut loading, app.filter.clone());
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    }
}

/// The keys the dashboard knows.
fn key_of(code: KeyCode, modifiers: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Esc => Key::Esc,
        _ => return None,
    })
}

//! `claudeflare-server tui` in a pseudo-terminal, against the real server and the mock: the screen
//! is read back through a terminal emulator (vt100), keys are typed into it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Env, key};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

/// The terminal the TUI draws on, as a person would see it.
struct Screen {
    parser: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    fn text(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    /// Wait until the screen shows every one of `needles`; fail with the screen after 10 s.
    fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needles:?} never appeared; the screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tui_shows_accounts_and_requests_and_switches_the_strategy() {
    let env = Env::sqlite().await;
    env.add_keys(&["alpha", "beta"]);
    let server = env.start();

    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 48,
            cols: 160,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut command = CommandBuilder::new(BIN);
    command.env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default());
    command.env("TERM", "xterm-256color");
    command.args(["tui", "--url", &server.url]);
    let mut child = pty.slave.spawn_command(command).unwrap();
    drop(pty.slave);
    let screen = Screen {
        parser: Arc::new(Mutex::new(vt100::Parser::new(48, 160, 0))),
        raw: Arc::default(),
    };
    let mut reader = pty.master.try_clone_reader().unwrap();
    let (parser, raw) = (Arc::clone(&screen.parser), Arc::clone(&screen.raw));
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            parser.lock().unwrap().process(&buffer[..n]);
            raw.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
    });
    let mut keys = pty.master.take_writer().unwrap();
    let mut press = |key: &str| {
        keys.write_all(key.as_bytes()).unwrap();
        keys.flush().unwrap();
    };

    screen.wait_for(&["1 Overview", "strategy session", "All time"]);
    press("2");
    screen.wait_for(&["Accounts (2)", "alpha", "beta", "active"]);

    // A request sent now shows up on the requests screen within a refresh or two.
    assert_eq!(server.message(false).await.status, 200);
    press("3");
    let shown = screen.wait_for(&["Newest requests", "claude-sonnet-4-20250514", "200"]);
    assert!(
        shown.contains("alpha"),
        "served by the first account:\n{shown}"
    );

    // `s` switches to the next strategy, through the API.
    press("s");
    screen.wait_for(&["strategy switched to least-requests"]);
    let strategy = server.json("/api/config/strategy").await;
    assert_eq!(strategy["strategy"], "least-requests");

    // `p` on the selected account pauses it.
    press("2");
    press("p");
    screen.wait_for(&["alpha paused", "paused"]);
    assert_eq!(server.account("alpha").await["paused"], true);

    press("q");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the TUI did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let raw = String::from_utf8_lossy(&screen.raw.lock().unwrap()).into_owned();
    assert!(
        raw.contains("\u{1b}[?1049l"),
        "the alternate screen was left, the terminal restored"
    );
    for secret in [key("alpha"), key("beta")] {
        assert!(!raw.contains(&secret), "a secret was drawn");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_said_and_tried_again() {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = CommandBuilder::new(BIN);
    command.env_clear();
    command.env("TERM", "xterm-256color");
    command.args(["tui", "--url", &format!("http://127.0.0.1:{port}")]);
    let mut child = pty.slave.spawn_command(command).unwrap();
    drop(pty.slave);
    let screen = Screen {
        parser: Arc::new(Mutex::new(vt100::Parser::new(24, 80, 0))),
        raw: Arc::default(),
    };
    let mut reader = pty.master.try_clone_reader().unwrap();
    let parser = Arc::clone(&screen.parser);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            parser.lock().unwrap().process(&buffer[..n]);
        }
    });
    screen.wait_for(&["cannot be reached", "connection refused"]);
    // Ctrl-C leaves cleanly too.
    let mut keys = pty.master.take_writer().unwrap();
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the TUI did not quit on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_terminal_it_says_so() {
    let output = std::process::Command::new(BIN)
        .args(["tui", "--url", "http://127.0.0.1:9"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tui draws on a terminal"), "{stderr}");
}

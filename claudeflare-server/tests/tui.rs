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

/// `claudeflare-server tui` with `args` in a pseudo-terminal of `cols` × `rows`: the process,
/// its screen, and the keyboard.
fn spawn_tui(
    args: &[&str],
    cols: u16,
    rows: u16,
) -> (
    Box<dyn portable_pty::Child + Send + Sync>,
    Screen,
    Box<dyn Write + Send>,
) {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut command = CommandBuilder::new(BIN);
    command.env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default());
    command.env("TERM", "xterm-256color");
    command.arg("tui");
    command.args(args);
    let child = pty.slave.spawn_command(command).unwrap();
    drop(pty.slave);
    let screen = Screen {
        parser: Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0))),
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
    let keys = pty.master.take_writer().unwrap();
    // The master side stays open as long as the reader and the writer do.
    (child, screen, keys)
}

/// Wait for `child` to exit (at most 5 s) and check it succeeded.
fn exits_cleanly(child: &mut Box<dyn portable_pty::Child + Send + Sync>, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the TUI did not quit on {after}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tui_shows_accounts_and_requests_and_switches_the_strategy() {
    let env = Env::sqlite().await;
    env.add_keys(&["alpha", "beta"]);
    let server = env.start();

    let (mut child, screen, mut keys) = spawn_tui(&["--url", &server.url], 160, 48);
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
    exits_cleanly(&mut child, "q");
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
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (mut child, screen, mut keys) = spawn_tui(&["--url", &url], 80, 24);
    screen.wait_for(&["cannot be reached", "connection refused"]);
    // Ctrl-C leaves cleanly too.
    keys.write_all(b"\x03").unwrap();
    keys.flush().unwrap();
    exits_cleanly(&mut child, "Ctrl-C");
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

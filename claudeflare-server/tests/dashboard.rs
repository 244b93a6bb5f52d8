//! The dashboard: every section checked in the HTML the server sends (no JavaScript needed), and
//! in a real headless Chromium driven through chromedriver: strategy, tier, pause and resume
//! through the page, with screenshots saved for a person to look at.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use claudeflare_testkit::Reply;
use common::{Env, Server, eventually, key};
use scraper::{ElementRef, Html, Selector};
use serde_json::json;

fn select<'a>(page: &'a Html, css: &str) -> Vec<ElementRef<'a>> {
    page.select(&Selector::parse(css).unwrap()).collect()
}

fn text(element: &ElementRef<'_>) -> String {
    element
        .text()
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The account row named `name`.
fn row<'a>(page: &'a Html, name: &str) -> ElementRef<'a> {
    select(page, "#accounts tbody tr")
        .into_iter()
        .find(|r| r.value().attr("data-account") == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}"))
}

const EVIL: &str = "<script>alert(1)</script>";

/// Accounts in every state, and some history: work (rate-limited), home (active), spare (paused),
/// revoked (needs re-auth), EVIL (an escaped name), and a subscription with usage.
async fn populated() -> (Env, Server) {
    let env = Env::sqlite().await;
    env.ok(&["add", "work", "--api-key", &key("work"), "--tier", "5"]);
    env.add_keys(&["home", "spare", "revoked"]);
    env.ok(&["add", EVIL, "--api-key", &key("evil")]);
    env.ok(&["pause", "spare"]);
    let output = env.oauth(
        &["add", "sub", "--mode", "max", "--tier", "20"],
        "sub",
        false,
    );
    assert!(output.status.success());
    env.ok(&["pause", "sub"]);
    env.mock.set_usage("sub", json!({"five_hour": {"utilization": 64.0, "resets_at": null}, "seven_day": {"utilization": 12.0, "resets_at": null}}));
    env.mock.script(&key("work"), [Reply::rate_limited(600)]);
    env.mock
        .script(&key("home"), [Reply::Message, Reply::status(400)]);
    env.mock.script(&key("revoked"), [Reply::status(401)]);
    let server = env.start();
    for _ in 0..3 {
        server.message(false).await;
    }
    env.ok(&["pause", "home"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.account("home").await["paused"] == true
        })
        .await
    );
    // `home` paused: the next request tries `revoked` (401: needs re-auth), then `EVIL`.
    server.message(true).await;
    env.ok(&["resume", "home"]);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.account("home").await["paused"] == false
                && !server.account("sub").await["usage"].is_null()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/api/requests").await.as_array().unwrap().len() == 4
        })
        .await
    );
    (env, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_section_shows_its_data_without_javascript() {
    let (_env, server) = populated().await;
    let response = server.get("/dashboard").await;
    assert_eq!(response.status, 200);
    let html = response.text();
    assert!(!html.contains(EVIL), "the account name is escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        server.get("/").await.text().contains("id=\"accounts\""),
        "/ is the dashboard too"
    );
    let page = Html::parse_document(&html);

    // Overview.
    let stats: Vec<String> = select(&page, "#overview .stat").iter().map(text).collect();
    assert!(
        stats.iter().any(|s| s.starts_with("Requests 4")),
        "{stats:?}"
    );
    assert!(
        stats.iter().any(|s| s.starts_with("Success rate 75.0%")),
        "one of four failed: {stats:?}"
    );
    assert!(
        stats.iter().any(|s| s.starts_with("Active accounts 2 / 6")),
        "{stats:?}"
    );
    assert!(stats.iter().any(|s| s.starts_with("Avg response")));
    assert!(stats.iter().any(|s| s.starts_with("Tokens today")));
    assert!(stats.iter().any(|s| s.starts_with("Cost today $")));
    assert!(
        !stats.iter().any(|s| s.starts_with("Dropped")),
        "shown only when records were dropped"
    );

    // Strategy selector.
    let selected = select(&page, "#strategy option[selected]");
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].value().attr("value"), Some("session"));
    assert_eq!(select(&page, "#strategy option").len(), 5);
    assert!(select(&page, "label[for=strategy]").len() == 1);
    assert!(
        select(&page, ".advice").is_empty(),
        "no advice while the strategy is session"
    );

    // Accounts.
    let work = row(&page, "work");
    assert!(text(&work).contains("rate-limited"), "{}", text(&work));
    let countdown = work
        .select(&Selector::parse("[data-until]").unwrap())
        .next()
        .unwrap();
    assert!(
        text(&countdown).starts_with("resets in"),
        "{}",
        text(&countdown)
    );
    assert_eq!(
        text(
            &work
                .select(&Selector::parse(".badge").unwrap())
                .next()
                .unwrap()
        ),
        "×5"
    );
    let tier = work
        .select(&Selector::parse("select.tier option[selected]").unwrap())
        .next()
        .unwrap();
    assert_eq!(tier.value().attr("value"), Some("5"));
    let home = row(&page, "home");
    assert!(
        text(&home).contains("active") && text(&home).contains("Pause"),
        "{}",
        text(&home)
    );
    assert!(
        text(&home).contains("requests") && text(&home).contains("left"),
        "session shown: {}",
        text(&home)
    );
    assert!(
        text(&row(&page, "spare")).contains("paused")
            && text(&row(&page, "spare")).contains("Resume")
    );
    let revoked = text(&row(&page, "revoked"));
    assert!(
        revoked.contains("needs re-auth") && revoked.contains("claudeflare-server reauth revoked"),
        "{revoked}"
    );
    let sub = row(&page, "sub");
    assert!(
        text(&sub).contains("max") && text(&sub).contains("valid"),
        "token validity: {}",
        text(&sub)
    );
    let usage: Vec<String> = sub
        .select(&Selector::parse(".usage").unwrap())
        .map(|u| text(&u))
        .collect();
    assert_eq!(usage, ["5 h 64%", "7 d 12%"]);
    assert_eq!(
        sub.select(&Selector::parse(".usage svg.share").unwrap())
            .count(),
        2,
        "utilization bars"
    );
    assert!(
        text(&row(&page, EVIL)).contains(EVIL),
        "the name reads as written"
    );

    // Analytics.
    for id in [
        "chart-requests-24h",
        "chart-tokens-24h",
        "chart-requests-7d",
        "chart-cost-7d",
    ] {
        let chart = select(&page, &format!("#{id} svg"));
        assert_eq!(chart.len(), 1, "{id}");
        assert!(
            chart[0]
                .value()
                .attr("aria-label")
                .unwrap()
                .contains("in all"),
            "{id} is labelled"
        );
    }
    assert_eq!(
        select(&page, "#chart-requests-24h rect.bar").len(),
        24,
        "one bar per hour"
    );
    assert_eq!(
        select(&page, "#chart-requests-7d rect.bar").len(),
        7,
        "one bar per day"
    );
    assert_eq!(
        select(&page, "#chart-requests-24h rect.bar-alt").len(),
        1,
        "failures stacked in this hour"
    );
    let by_account: Vec<String> = select(&page, "#by-account tbody tr")
        .iter()
        .map(text)
        .collect();
    assert!(
        by_account.iter().any(|r| r.starts_with("home 3")),
        "{by_account:?}"
    );
    let by_model: Vec<String> = select(&page, "#by-model tbody tr")
        .iter()
        .map(text)
        .collect();
    assert!(
        by_model
            .iter()
            .any(|r| r.starts_with("claude-sonnet-4-20250514 4")),
        "{by_model:?}"
    );

    // History.
    let rows = select(&page, "#requests tbody tr");
    assert_eq!(rows.len(), 4);
    let failed: Vec<String> = select(&page, "#requests tbody tr.failed")
        .iter()
        .map(text)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed.iter().any(|r| r.contains("400")), "{failed:?}");
    assert!(
        text(&rows[0]).contains("stream"),
        "newest first: {}",
        text(&rows[0])
    );
    let cells: Vec<String> = rows[0]
        .select(&Selector::parse("td").unwrap())
        .map(|c| text(&c))
        .collect();
    assert_eq!(cells[9], "1", "one failover: {cells:?}");

    let filtered =
        Html::parse_document(&server.get("/dashboard?account=home&status=").await.text());
    let rows: Vec<String> = select(&filtered, "#requests tbody tr")
        .iter()
        .map(text)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.contains("home")));
    assert_eq!(
        select(&filtered, "#filter-account option[selected]")[0]
            .value()
            .attr("value"),
        Some("home")
    );
    // The provider column and filter: every request here was Anthropic's.
    let by_provider = |provider: &'static str| {
        let server = &server;
        async move {
            let page = server
                .get(&format!("/dashboard?provider={provider}"))
                .await
                .text();
            let page = Html::parse_document(&page);
            select(&page, "#requests tbody tr")
                .iter()
                .map(text)
                .filter(|row| !row.contains("No requests"))
                .count()
        }
    };
    assert_eq!(
        by_provider("anthropic").await,
        select(&page, "#requests tbody tr").len()
    );
    assert_eq!(by_provider("anthropic-compatible").await, 0);
    assert!(
        select(&page, "#filter-provider option")
            .iter()
            .any(|o| o.value().attr("value") == Some("anthropic"))
    );
    let errors = Html::parse_document(&server.get("/dashboard?status=error").await.text());
    assert_eq!(select(&errors, "#requests tbody tr.failed").len(), 1);
    assert_eq!(select(&errors, "#requests tbody tr").len(), 1);

    // A non-sticky strategy with a subscription present: the page says why session is the default.
    assert_eq!(
        server
            .post("/api/config/strategy", r#"{"strategy": "round-robin"}"#)
            .await
            .status,
        200
    );
    let page = Html::parse_document(&server.get("/dashboard").await.text());
    let advice = select(&page, ".advice");
    assert_eq!(advice.len(), 1);
    assert!(text(&advice[0]).contains("prompt caching"));
}

/// chromedriver's path, or `None` to skip (a failure in CI, where `.ci/run` installs it).
fn chromedriver() -> Option<String> {
    let path = std::env::var("CLAUDEFLARE_TEST_CHROMEDRIVER")
        .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromedriver is required in CI ({path} is missing)"
    );
    eprintln!("skipped: no chromedriver at {path}");
    None
}

struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(profile: &std::path::Path) -> Option<(Driver, fantoccini::Client)> {
    let path = chromedriver()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver(child);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--window-size=1400,1900", format!("--user-data-dir={}", profile.display())]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start: {last:?}");
}

/// The visible text of the first element `css` matches, read in one script so that the 5-second
/// refresh cannot replace the element between finding it and reading it.
async fn text_of(client: &fantoccini::Client, css: &str) -> Option<String> {
    let value = client
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    value.as_str().map(str::to_owned)
}

/// Runs `act` on the element `css` finds; again when the refresh replaced the element in between
/// (a stale element fails before the browser acts, so nothing happens twice).
async fn on_element<F, Fut>(client: &fantoccini::Client, css: &str, act: F)
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let mut last = None;
    for _ in 0..100 {
        match client.find(fantoccini::Locator::Css(css)).await {
            Ok(element) => match act(element).await {
                Ok(()) => return,
                Err(error) => last = Some(error),
            },
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not act on {css}: {last:?}");
}

async fn click(client: &fantoccini::Client, css: &str) {
    on_element(client, css, |element| async move { element.click().await }).await;
}

async fn choose(client: &fantoccini::Client, css: &str, value: &str) {
    on_element(client, css, |element| async move {
        element.select_by_value(value).await
    })
    .await;
}

async fn wait_for_toast(client: &fantoccini::Client, expected: &str) -> String {
    let mut seen = String::new();
    for _ in 0..100 {
        seen = text_of(client, "#toast").await.unwrap_or_default();
        if seen.contains(expected) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no toast saying {expected:?}; last: {seen:?}");
}

async fn screenshot(client: &fantoccini::Client, name: &str) {
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_a_real_browser() {
    let (env, server) = populated().await;
    let Some((_driver, client)) = browser(&env.dir.path().join("chromium")).await else {
        return;
    };
    client
        .goto(&format!("{}/dashboard", server.url))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await.unwrap(), "◆ claudeflare");
    let names: Vec<String> = serde_json::from_value(
        client
            .execute(
                "return [...document.querySelectorAll('#accounts tbody tr td:first-child strong')]\
                 .map(e => e.innerText)",
                vec![],
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        names.contains(&"work".to_owned()) && names.contains(&EVIL.to_owned()),
        "{names:?}"
    );
    // Had the name's <script> run, its alert() would block every WebDriver command from here on.
    let scripts = client
        .execute("return document.scripts.length", vec![])
        .await
        .unwrap();
    assert_eq!(scripts, json!(1), "only the page's own script");
    screenshot(&client, "dashboard-light").await;

    // The strategy selector switches it live, through the API.
    choose(&client, "#strategy", "round-robin").await;
    let said = wait_for_toast(&client, "Strategy is now round-robin").await;
    assert!(
        said.contains("prompt caching"),
        "the advice comes with it: {said}"
    );
    assert_eq!(
        server.json("/api/config/strategy").await["strategy"],
        "round-robin"
    );

    // Tier of `home` to 20.
    let home_id = server.account("home").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    choose(&client, &format!("select[data-tier='{home_id}']"), "20").await;
    wait_for_toast(&client, "home is now tier 20").await;
    assert_eq!(server.account("home").await["tier"], 20);

    // A refused action says why: a tier the API rejects.
    client
        .execute(
            "const s = document.querySelector(\"select[data-tier='\" + arguments[0] + \"']\"); \
             s.add(new Option('3', '3')); s.value = '3'; s.dispatchEvent(new Event('change', { bubbles: true }));",
            vec![json!(home_id)],
        )
        .await
        .unwrap();
    let said = wait_for_toast(&client, "Failed").await;
    assert!(said.contains("invalid tier 3"), "{said}");
    assert_eq!(server.account("home").await["tier"], 20, "nothing changed");

    // Pause and resume `home`; the page updates without a reload (the marker survives).
    client
        .execute("window.__marker = 'kept'", vec![])
        .await
        .unwrap();
    click(
        &client,
        &format!("button[data-action=pause][data-account='{home_id}']"),
    )
    .await;
    wait_for_toast(&client, "home paused").await;
    assert_eq!(server.account("home").await["status"], "paused");
    // The row turned into a Resume button.
    click(
        &client,
        &format!("button[data-action=resume][data-account='{home_id}']"),
    )
    .await;
    wait_for_toast(&client, "home resumed").await;
    assert_eq!(server.account("home").await["status"], "active");
    assert_eq!(
        client
            .execute("return window.__marker", vec![])
            .await
            .unwrap(),
        json!("kept"),
        "no full reload"
    );

    // A change made elsewhere shows up within a refresh (5 s), still without a reload.
    env.ok(&["resume", "spare"]);
    let mut shown = false;
    for _ in 0..100 {
        let row = text_of(&client, "tr[data-account='spare']")
            .await
            .expect("the row of spare");
        if row.contains("active") {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown, "the auto-refresh showed the change");
    assert_eq!(
        client
            .execute("return window.__marker", vec![])
            .await
            .unwrap(),
        json!("kept")
    );

    screenshot(&client, "dashboard-after-actions").await;
    client.set_window_size(390, 1600).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    screenshot(&client, "dashboard-phone").await;
    client.close().await.unwrap();
}

/// With client keys: the login page, then the dashboard's own refresh and actions, which must
/// keep working through the session cookie (in better-ccflare, turning keys on broke the
/// dashboard's internal calls).
#[tokio::test(flavor = "multi_thread")]
async fn with_keys_the_dashboard_logs_in_and_its_refresh_and_actions_work() {
    let env = Env::sqlite().await;
    env.add_keys(&["work", "home"]);
    let boss = env
        .ok(&["keys", "add", "boss", "--admin"])
        .trim()
        .to_owned();
    let team = env.ok(&["keys", "add", "team"]).trim().to_owned();
    let server = env.start();
    let admin = format!("Bearer {boss}");
    let Some((_driver, client)) = browser(&env.dir.path().join("chromium")).await else {
        return;
    };
    client
        .goto(&format!("{}/dashboard", server.url))
        .await
        .unwrap();
    // Not logged in: the login page.
    assert!(
        text_of(&client, "h1")
            .await
            .unwrap()
            .contains("claudeflare")
    );
    on_element(&client, "#key", |field| {
        let boss = boss.clone();
        async move { field.send_keys(&boss).await }
    })
    .await;
    click(&client, "form[action='/login'] button[type=submit]").await;
    let mut url = String::new();
    for _ in 0..100 {
        url = client.current_url().await.unwrap().to_string();
        if url.ends_with("/dashboard") && text_of(&client, "#accounts").await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(url.ends_with("/dashboard"), "{url}");
    let keys = text_of(&client, "#keys").await.expect("the keys section");
    assert!(keys.contains("boss") && keys.contains("team"), "{keys}");
    assert!(
        !keys.contains(&boss) && !keys.contains(&team),
        "never a key on the page"
    );
    client
        .execute("window.__marker = 'kept'", vec![])
        .await
        .unwrap();

    // The refresh (every 5 s, through the cookie) shows a request sent meanwhile with a key.
    let with_team = || async {
        let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]});
        let headers = [("x-api-key", team.as_str())];
        server
            .client
            .post_json("/v1/messages", &body, &headers)
            .await
    };
    assert_eq!(with_team().await.status, 200);
    let mut shown = false;
    for _ in 0..150 {
        if text_of(&client, "#requests tbody")
            .await
            .is_some_and(|rows| rows.contains("team"))
        {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shown, "the refresh showed the request and its key");

    // An action: pause `home`.
    let home = server
        .client
        .send(
            http::Method::GET,
            "/api/accounts",
            &[("authorization", admin.as_str())],
            bytes::Bytes::new(),
        )
        .await
        .json();
    let home_id = home
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "home")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    click(
        &client,
        &format!("button[data-action=pause][data-account='{home_id}']"),
    )
    .await;
    wait_for_toast(&client, "home paused").await;
    // And revoke `team` (the page asks first).
    client
        .execute("window.confirm = () => true", vec![])
        .await
        .unwrap();
    click(&client, "button[data-revoke='team']").await;
    wait_for_toast(&client, "Key team revoked").await;
    assert_eq!(
        client
            .execute("return window.__marker", vec![])
            .await
            .unwrap(),
        json!("kept"),
        "no full reload"
    );
    assert_eq!(with_team().await.status, 401, "the revoked key is refused");
    screenshot(&client, "dashboard-with-keys").await;

    // Log out: the page is the login page again.
    click(&client, "form.logout button").await;
    let mut out = false;
    for _ in 0..100 {
        if client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .ends_with("/login")
        {
            out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(out, "logged out");
    client.close().await.unwrap();
}

/// Claude Code's `/login` page in a real browser: the link fills the code in and submits
/// nothing; the person types their key and the sign-in is approved.
#[tokio::test(flavor = "multi_thread")]
async fn the_sign_in_page_works_in_a_real_browser() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    let dev = env.new_key(&["dev"]);
    let server = env.start();
    let Some((_driver, client)) = browser(&env.dir.path().join("chromium")).await else {
        return;
    };
    let form = |body: String| {
        server.client.send(
            http::Method::POST,
            "/oauth/device_authorization",
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
    };
    let started = form("surface=claude_code".into()).await.json();
    let device_code = started["device_code"].as_str().unwrap().to_owned();
    let link = started["verification_uri_complete"]
        .as_str()
        .unwrap()
        .to_owned();
    let user_code = started["user_code"].as_str().unwrap().to_owned();

    client.goto(&link).await.unwrap();
    let filled = client
        .execute("return document.querySelector('#user_code').value", vec![])
        .await
        .unwrap();
    assert_eq!(filled, json!(user_code), "the link fills the code in");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("user_code="),
        "nothing was submitted by itself"
    );
    let poll = || {
        server.client.send(
            http::Method::POST,
            "/oauth/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={device_code}"),
        )
    };
    assert_eq!(poll().await.json()["error"], "authorization_pending");

    on_element(&client, "#key", |element| {
        let dev = dev.clone();
        async move { element.send_keys(&dev).await }
    })
    .await;
    click(&client, "button[type=submit]").await;
    let mut said = String::new();
    for _ in 0..100 {
        said = text_of(&client, "[role=status]").await.unwrap_or_default();
        if said.contains("Signed in") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said.contains("Signed in as the key “dev”"), "{said}");
    screenshot(&client, "sign-in-approved").await;
    // The next poll gets the tokens.
    let tokens = poll().await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    assert!(tokens.json()["access_token"].is_string());
}

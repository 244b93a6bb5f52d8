//! Several instances on one PostgreSQL database act as one balancer (README, "Several
//! instances"): three server processes share rate-limit marks, sessions, token refreshes, the
//! history and the client keys, and keep serving when one of them is killed.
//!
//! Each test runs three servers; they take turns (one test at a time) so the machine's two cores
//! and PostgreSQL's connection limit are not shared by a dozen servers at once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use claudeflare_testkit::{Reply, TestResponse};
use common::{Backend, Env, Server, eventually, key};
use http::Method;
use serde_json::json;

/// One test at a time (see the module's notes).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a change on one instance may take to reach the others (the README promises it).
const SHARED_WITHIN: Duration = Duration::from_secs(1);

/// Three servers, started at the same moment.
fn three(env: &Env) -> [Server; 3] {
    std::thread::scope(|scope| {
        let starting = [(); 3].map(|()| scope.spawn(|| env.start()));
        starting.map(|server| server.join().unwrap())
    })
}

fn served_by(response: &TestResponse) -> &str {
    assert_eq!(response.status, 200, "{}", response.text());
    response.header("x-claudeflare-account").unwrap_or_default()
}

/// How long until `check` holds for every server in `servers`, measured from `since`; fails the
/// test past `limit`.
async fn until_all<F, Fut>(
    servers: &[&Server],
    since: Instant,
    limit: Duration,
    check: F,
) -> Duration
where
    F: Fn(&Server) -> Fut,
    Fut: Future<Output = bool>,
{
    for server in servers {
        assert!(
            eventually(limit + Duration::from_secs(2), || check(server)).await,
            "never seen on {}:\n{}",
            server.url,
            server.log()
        );
    }
    let elapsed = since.elapsed();
    eprintln!("reached every instance after {} ms", elapsed.as_millis());
    assert!(elapsed <= limit, "took {elapsed:?}, more than {limit:?}");
    elapsed
}

/// Requests the mock received with account `name`'s API key.
fn upstream_requests(env: &Env, name: &str) -> usize {
    let key = key(name);
    env.mock
        .requests()
        .iter()
        .filter(|r| {
            r.headers
                .get("x-api-key")
                .is_some_and(|k| k == key.as_str())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_starting_at_once_on_a_new_database_migrate_it_once() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    // Nothing ran on the database before: the three race to create every table.
    let servers = three(&env);
    for server in &servers {
        assert_eq!(server.get("/health").await.status, 200);
        assert_eq!(server.json("/api/accounts").await, json!([]));
    }
    env.add_keys(&["a"]);
    for server in &servers {
        let listed = eventually(Duration::from_secs(2), || async {
            server.account("a").await["name"] == "a"
        })
        .await;
        assert!(listed, "{}", server.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_mark_on_one_is_honoured_by_the_others_within_a_second() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a", "b"]);
    let servers = three(&env);
    for server in &servers {
        assert_eq!(served_by(&server.message(false).await), "a");
    }
    env.mock.script(&key("a"), [Reply::rate_limited(3600)]);
    let marked = Instant::now();
    assert_eq!(
        served_by(&servers[0].message(false).await),
        "b",
        "failed over"
    );
    let limited = |server: &Server| {
        let server = server.client.clone();
        async move {
            let accounts = server.get("/api/accounts").await.json();
            accounts.as_array().unwrap().iter().any(|a| {
                a["name"] == "a"
                    && a["status"] == "rate_limited"
                    && !a["rate_limited_until"].is_null()
            })
        }
    };
    until_all(&[&servers[1], &servers[2]], marked, SHARED_WITHIN, limited).await;
    let before = upstream_requests(&env, "a");
    for server in &servers[1..] {
        for _ in 0..3 {
            assert_eq!(served_by(&server.message(false).await), "b");
        }
    }
    assert_eq!(
        upstream_requests(&env, "a"),
        before,
        "no instance sent anything more to the limited account"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_moved_on_one_is_followed_by_the_others() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a", "b"]);
    let servers = three(&env);
    // All three start at once: each opens a session, and they end on one (the newest).
    let first = at_once(&servers, 1).await;
    assert!(first.iter().all(|r| served_by(r) == "a"));
    let same_session = eventually(Duration::from_secs(2), || async {
        let mut starts = Vec::new();
        for server in &servers {
            starts.push(server.account("a").await["session_start"].clone());
        }
        !starts[0].is_null() && starts.iter().all(|s| *s == starts[0])
    })
    .await;
    assert!(same_session, "the three instances agree on one session");

    // On the first, `a` comes close to its 5-hour limit: its next request opens a session on `b`.
    env.mock
        .script(&key("a"), [Reply::allowed_warning(0.99, 0.30)]);
    assert_eq!(served_by(&servers[0].message(false).await), "a");
    let moved = Instant::now();
    assert_eq!(served_by(&servers[0].message(false).await), "b");
    let on_b = |server: &Server| {
        let server = server.client.clone();
        async move {
            let accounts = server.get("/api/accounts").await.json();
            let start = |name: &str| {
                accounts
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["name"] == name)
                    .map(|a| a["session_start"].as_str().unwrap_or("").to_owned())
                    .unwrap_or_default()
            };
            start("b") > start("a")
        }
    };
    until_all(&[&servers[1], &servers[2]], moved, SHARED_WITHIN, on_b).await;
    for server in &servers[1..] {
        assert_eq!(served_by(&server.message(false).await), "b");
    }
}

/// A message request's body.
fn message() -> serde_json::Value {
    json!({"model": "claude-sonnet-4-20250514", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
}

/// `count` messages sent at the same moment to each server; the answers, server by server.
async fn at_once(servers: &[Server], count: usize) -> Vec<TestResponse> {
    let mut set = tokio::task::JoinSet::new();
    for (i, server) in servers.iter().enumerate() {
        for _ in 0..count {
            let client = server.client.clone();
            set.spawn(async move { (i, client.post_json("/v1/messages", &message(), &[]).await) });
        }
    }
    let mut answers: Vec<(usize, TestResponse)> = Vec::new();
    while let Some(answer) = set.join_next().await {
        answers.push(answer.unwrap());
    }
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refreshed_once_for_requests_on_all_three() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.mock.set_token_expires_in(30);
    let added = env.oauth(&["add", "m", "--mode", "max", "--tier", "1"], "m", false);
    assert!(added.status.success());
    env.mock.set_token_expires_in(8 * 3600);
    env.mock.set_token_delay(Duration::from_millis(300));
    let servers = three(&env);
    for answer in at_once(&servers, 10).await {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let refreshes = env.mock.refreshes();
    assert_eq!(refreshes.len(), 1, "{refreshes:?}");
    let (access, _) = env.mock.tokens("m").unwrap();
    let bearer = format!("Bearer {access}");
    assert!(
        env.mock
            .requests()
            .iter()
            .all(|r| r.headers["authorization"] == bearer.as_str()),
        "every instance used the one new token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_history_and_counters_cover_every_instance() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let servers = three(&env);
    // 20 requests on each at once, all on the same account: its counters must add up.
    for answer in at_once(&servers, 20).await {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    for server in &servers {
        let complete = eventually(Duration::from_secs(3), || async {
            let stats = server.json("/api/stats").await;
            let history = server.json("/api/requests?limit=100").await;
            let account = server.account("a").await;
            stats["total_requests"] == 60
                && history.as_array().map(Vec::len) == Some(60)
                && account["request_count"] == 60
                && account["total_requests"] == 60
        })
        .await;
        assert!(
            complete,
            "{}: stats {}, account {}",
            server.url,
            server.json("/api/stats").await,
            server.account("a").await
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_revoked_on_one_is_refused_by_all_within_a_second() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let admin = env
        .ok(&["keys", "add", "boss", "--admin"])
        .trim()
        .to_owned();
    let client = env.ok(&["keys", "add", "dev"]).trim().to_owned();
    let servers = three(&env);
    let with_key = |server: &Server, key: &str| {
        let client = server.client.clone();
        let key = key.to_owned();
        async move {
            client
                .post_json("/v1/messages", &message(), &[("x-api-key", key.as_str())])
                .await
                .status
        }
    };
    for server in &servers {
        assert_eq!(with_key(server, &client).await, 200);
    }
    let revoked = Instant::now();
    let answer = servers[0]
        .client
        .send(
            Method::POST,
            "/api/keys/dev/revoke",
            &[("x-api-key", admin.as_str())],
            "",
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let refused = |server: &Server| {
        let status = with_key(server, &client);
        async move { status.await == 401 }
    };
    until_all(
        &servers.iter().collect::<Vec<_>>(),
        revoked,
        SHARED_WITHIN,
        refused,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_one_instance_mid_stream_loses_nothing_of_the_others() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a", "b"]);
    let [one, two, mut victim] = three(&env);
    // A mark that ends in 2 s, made before the kill.
    env.mock.script(&key("a"), [Reply::rate_limited(2)]);
    assert_eq!(served_by(&one.message(false).await), "b");

    // The victim is streaming a slow answer when it is killed.
    env.mock.script(
        &key("b"),
        [Reply::Stream {
            delay: Duration::from_millis(100),
            fail_after: None,
            chunk_size: None,
        }],
    );
    let mut body = message();
    body["stream"] = json!(true);
    let stream = victim
        .client
        .open(
            Method::POST,
            "/v1/messages",
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    assert_eq!(stream.status(), 200);

    // The two others serve throughout: before, during and after the kill.
    let load = |server: &Server| {
        let client = server.client.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let until = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < until {
                statuses.push(
                    client
                        .post_json("/v1/messages", &message(), &[])
                        .await
                        .status,
                );
            }
            statuses
        })
    };
    let (load_one, load_two) = (load(&one), load(&two));
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let served: Vec<_> = [load_one.await.unwrap(), load_two.await.unwrap()].concat();
    assert!(
        served.iter().all(|s| *s == 200),
        "the others answered every request: {served:?}"
    );
    drop(stream);

    // Every request the two served is recorded: the victim's stream is all that is missing.
    let sent = 1 + served.len() as u64; // the failover, then the load
    let recorded = eventually(Duration::from_secs(3), || async {
        one.json("/api/stats").await["total_requests"] == sent
    })
    .await;
    assert!(
        recorded,
        "{sent} sent, stats: {}",
        one.json("/api/stats").await
    );

    // After the mark's end, a restarted instance rejoins: it serves, shows the shared counts
    // and no stale mark.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let back = env.start();
    let account = back.account("a").await;
    assert_eq!(account["status"], "active", "{account}");
    assert_eq!(
        back.account("b").await["total_requests"],
        one.account("b").await["total_requests"]
    );
    assert_eq!(back.message(false).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_login_on_one_holds_on_all_and_a_logout_ends_it_everywhere() {
    let _serial = SERIAL.lock().await;
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    let admin = env
        .ok(&["keys", "add", "boss", "--admin"])
        .trim()
        .to_owned();
    let servers = three(&env);
    let logged_in = servers[0]
        .client
        .send(
            Method::POST,
            "/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("key={admin}"),
        )
        .await;
    assert_eq!(logged_in.status, 303, "{}", logged_in.text());
    let started = Instant::now();
    let cookie = logged_in
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let stats_status = |server: &Server| {
        let client = server.client.clone();
        let cookie = cookie.clone();
        async move {
            client
                .send(
                    Method::GET,
                    "/api/stats",
                    &[("cookie", cookie.as_str())],
                    "",
                )
                .await
                .status
        }
    };
    let all: Vec<&Server> = servers.iter().collect();
    until_all(&all, started, SHARED_WITHIN, |s| {
        let status = stats_status(s);
        async move { status.await == 200 }
    })
    .await;
    let out = servers[2]
        .client
        .send(Method::POST, "/logout", &[("cookie", cookie.as_str())], "")
        .await;
    assert_eq!(out.status, 303);
    let ended = Instant::now();
    until_all(&all, ended, SHARED_WITHIN, |s| {
        let status = stats_status(s);
        async move { status.await == 401 }
    })
    .await;
}

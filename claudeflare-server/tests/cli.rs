//! Every CLI command, and its errors (message on stderr, non-zero exit).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::Env;
use serde_json::Value;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn account_commands_work_and_fail_clearly() {
    let env = Env::sqlite().await;
    assert!(env.ok(&["list"]).contains("No accounts"));
    assert!(
        env.ok(&[
            "add",
            "work",
            "--api-key",
            "sk-ant-api03-SECRET-w",
            "--tier",
            "5"
        ])
        .contains("Added")
    );
    env.ok(&["add", "home", "--api-key", "sk-ant-api03-SECRET-h"]);

    let duplicate = env.cli(&["add", "work", "--api-key", "x"]);
    assert!(!duplicate.status.success());
    assert!(
        stderr(&duplicate).contains("an account named `work` already exists"),
        "{}",
        stderr(&duplicate)
    );
    let bad_tier = env.cli(&["add", "x", "--api-key", "k", "--tier", "3"]);
    assert!(!bad_tier.status.success());
    assert!(stderr(&bad_tier).contains("expected one of 1, 5, 20"));
    let no_key = env.cli(&["add", "x", "--mode", "max", "--api-key", "k"]);
    assert!(!no_key.status.success());

    let table = env.ok(&["list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("work") && table.contains("active") && !table.contains("SECRET"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(
        (json[0]["name"].as_str(), json[0]["tier"].as_u64()),
        (Some("work"), Some(5))
    );
    assert!(!json.to_string().contains("SECRET"));

    env.ok(&["pause", "work"]);
    env.ok(&["set-tier", "home", "20"]);
    let json: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(json[0]["status"], "paused");
    assert_eq!(json[1]["tier"], 20);
    assert!(env.ok(&["list"]).contains("paused"));
    env.ok(&["resume", "work"]);
    let json: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(json[0]["status"], "active");

    for args in [
        &["pause", "nobody"][..],
        &["resume", "nobody"],
        &["set-tier", "nobody", "5"],
        &["remove", "nobody", "--yes"],
    ] {
        let output = env.cli(args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains("no account named `nobody`"),
            "{args:?}: {}",
            stderr(&output)
        );
    }

    let unconfirmed = env.cli(&["remove", "home"]);
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("--yes"),
        "{}",
        stderr(&unconfirmed)
    );
    assert!(env.ok(&["remove", "home", "--yes"]).contains("Removed"));
    assert!(!env.ok(&["list"]).contains("home"));

    assert!(env.ok(&["reset-stats"]).contains("1 account"));
    assert!(env.ok(&["clear-history"]).contains("Deleted 0"));
    assert!(env.ok(&["help"]).contains("set-tier"));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_counters_can_be_cleared() {
    let env = Env::sqlite().await;
    env.add_keys(&["a"]);
    {
        let server = env.start();
        for _ in 0..3 {
            assert_eq!(server.message(false).await.status, 200);
        }
        assert!(
            common::eventually(std::time::Duration::from_secs(3), || async {
                server.json("/api/requests").await.as_array().unwrap().len() == 3
            })
            .await
        );
        env.ok(&["reset-stats"]);
        assert!(
            common::eventually(std::time::Duration::from_secs(3), || async {
                server.account("a").await["request_count"] == 0
            })
            .await,
            "the running server adopts the reset"
        );
        assert_eq!(
            server.account("a").await["total_requests"],
            3,
            "lifetime counts stay"
        );
        assert!(env.ok(&["clear-history"]).contains("Deleted 3"));
        assert_eq!(
            server.json("/api/requests").await.as_array().unwrap().len(),
            0
        );
        assert_eq!(server.json("/api/stats").await["total_requests"], 0);
    }
}

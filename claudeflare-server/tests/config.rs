//! Configuration: the file's creation, layering (defaults < file < environment < flags), hot
//! reload, and errors for a malformed file.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Env, eventually};
use serde_json::{Value, json};

fn write_config(env: &Env, value: &Value) {
    std::fs::create_dir_all(env.config_path().parent().unwrap()).unwrap();
    std::fs::write(
        env.config_path(),
        serde_json::to_string_pretty(value).unwrap(),
    )
    .unwrap();
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_config_is_created_private_with_defaults() {
    let env = Env::sqlite().await;
    let server = env.start();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(env.config_path()).unwrap()).unwrap();
    assert_eq!(
        file["port"], 8080,
        "the defaults, not the environment's overrides"
    );
    assert_eq!(file["lb_strategy"], "session");
    assert_eq!(file["session_duration_ms"], 18_000_000);
    assert_eq!(file["max_request_body_bytes"], 33_554_432);
    #[cfg(unix)]
    {
        assert_eq!(mode(&env.config_path()), 0o600);
        assert_eq!(mode(env.config_path().parent().unwrap()), 0o700);
        assert_eq!(mode(&env.db_path()), 0o600);
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_then_environment_then_flags() {
    let mut env = Env::sqlite().await;
    write_config(
        &env,
        &json!({"retry_attempts": 7, "lb_strategy": "round-robin", "retry_backoff": 3.0, "host": "127.0.0.1"}),
    );
    env.set("RETRY_BACKOFF", "4");
    env.set("CLAUDEFLARE_LB_STRATEGY", "weighted");
    env.set("HOST", "0.0.0.0");
    let server = env.start_with(&["serve", "--host", "127.0.0.1"]);
    let config = server.json("/api/config").await;
    assert_eq!(config["retry_attempts"], 7, "file over default");
    assert_eq!(config["retry_backoff"], 4.0, "environment over file");
    assert_eq!(
        config["lb_strategy"], "weighted",
        "CLAUDEFLARE_<KEY> over file"
    );
    assert_eq!(config["host"], "127.0.0.1", "flag over environment");
    assert_eq!(config["session_duration_ms"], 18_000_000, "default");
    assert_eq!(server.json("/health").await["strategy"], "weighted");
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_to_the_file_apply_without_a_restart() {
    let env = Env::sqlite().await;
    env.add_keys(&["a", "b"]);
    let server = env.start();
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(env.config_path()).unwrap()).unwrap();
    file["lb_strategy"] = json!("round-robin");
    file["max_request_body_bytes"] = json!(100);
    write_config(&env, &file);
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.json("/health").await["strategy"] == "round-robin"
        })
        .await
    );
    assert_eq!(
        server.message(false).await.status,
        413,
        "the new body limit applies to the next request"
    );

    // A broken edit keeps the last good settings, and says so.
    std::fs::write(env.config_path(), "{ broken").unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            server.log().contains("keeping the previous settings")
        })
        .await,
        "{}",
        server.log()
    );
    assert_eq!(server.json("/health").await["strategy"], "round-robin");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_config_stops_the_server_naming_file_and_problem() {
    let env = Env::sqlite().await;
    let cases = [
        ("{ \"port\": 80,, }", "is not valid JSON"),
        (r#"{"prot": 8080}"#, "prot"),
        (r#"{"lb_strategy": "random"}"#, "lb_strategy `random`"),
        (r#"{"retry_attempts": "many"}"#, "retry_attempts"),
        (
            r#"{"oauth_redirect_uri": "not a url"}"#,
            "oauth_redirect_uri",
        ),
        (r#"{"log_level": "LOUD"}"#, "log_level"),
    ];
    for (text, problem) in cases {
        std::fs::create_dir_all(env.config_path().parent().unwrap()).unwrap();
        std::fs::write(env.config_path(), text).unwrap();
        let output = env.cli(&["serve"]);
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&env.config_path().display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains(problem), "{text}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(env.config_path()).unwrap(),
            text,
            "never replaced by defaults"
        );
        let output = env.cli(&["list"]);
        assert!(!output.status.success(), "the CLI refuses it too");
    }
}

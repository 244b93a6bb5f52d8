//! The PostgreSQL service restarted under load (its own test binary: the restart cuts every
//! connection to the server, so no other test may be using it meanwhile). The pool reconnects,
//! and every request answered is stored once, counted through a fresh connection after a clean
//! stop.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Env, eventually, flood};
use sea_orm::{ConnectionTrait, Database, Statement};

/// `pg_ctlcluster VERSION main restart` for the first cluster of this machine.
fn restart_postgres() -> bool {
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut dirs| dirs.next())
        .and_then(Result::ok)
    else {
        return false;
    };
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect"])
        .arg(version.file_name())
        .args(["main", "restart"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_under_load_loses_and_repeats_no_record() {
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a", "b"]);
    let mut server = env.start();
    let client = server.client.clone();
    let load =
        tokio::spawn(
            async move { flood(&client, 8, Instant::now() + Duration::from_secs(8)).await },
        );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    if !restarted {
        assert!(
            std::env::var_os("CI").is_none(),
            "pg_ctlcluster must work in CI (root)"
        );
        eprintln!("skipped: cannot restart PostgreSQL here");
        return;
    }
    let answered = load.await.unwrap();
    let sent = answered.len() as i64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            server.json("/api/stats").await["total_requests"] == sent
        })
        .await,
        "{}",
        server.log()
    );
    assert!(
        server.terminate(Duration::from_secs(30)).success(),
        "{}",
        server.log()
    );
    let log = server.log();
    // The restart happened while the server wrote: a write failed, of records or of account
    // state (the record writer may take a fresh connection after the restart and never fail).
    assert!(
        log.contains("could not store request records")
            || log.contains("could not store account state"),
        "the restart was felt: {log}"
    );
    let db = Database::connect(env.postgres().unwrap()).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*), count(DISTINCT id), (SELECT COALESCE(sum(requests), 0)::bigint FROM request_rollups) FROM requests",
        ))
        .await
        .unwrap()
        .unwrap();
    let counts: (i64, i64, i64) = (
        row.try_get_by_index(0).unwrap(),
        row.try_get_by_index(1).unwrap(),
        row.try_get_by_index(2).unwrap(),
    );
    db.close().await.unwrap();
    eprintln!(
        "{sent} requests answered across a PostgreSQL restart; rows, ids, rollups: {counts:?}"
    );
    assert_eq!(counts, (sent, sent, sent));
}

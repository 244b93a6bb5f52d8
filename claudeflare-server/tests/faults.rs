//! Database faults on PostgreSQL while requests are served: backends killed, the table locked.
//! After each, every request answered is in the table exactly once, counted through a fresh
//! connection after a clean stop.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Env, eventually};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

async fn connect(url: &str) -> DatabaseConnection {
    Database::connect(url).await.unwrap()
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Send `count` requests, 4 at a time; returns how many were answered 200.
async fn traffic(server: &common::Server, count: usize) -> usize {
    let mut ok = 0;
    for _ in 0..count / 4 {
        let answers = futures_join4(server).await;
        ok += answers.iter().filter(|s| **s == 200).count();
    }
    ok
}

async fn futures_join4(server: &common::Server) -> [http::StatusCode; 4] {
    let (a, b, c, d) = tokio::join!(
        server.message(false),
        server.message(false),
        server.message(false),
        server.message(false)
    );
    [a.status, b.status, c.status, d.status]
}

/// Stop the server cleanly, then count the rows and distinct ids.
async fn stored(env: &Env, mut server: common::Server) -> (i64, i64) {
    assert!(
        server.terminate(Duration::from_secs(30)).success(),
        "{}",
        server.log()
    );
    let db = connect(env.postgres().unwrap()).await;
    let rows = scalar(&db, "SELECT count(*) FROM requests").await;
    let ids = scalar(&db, "SELECT count(DISTINCT id) FROM requests").await;
    let rolled = scalar(
        &db,
        "SELECT COALESCE(sum(requests), 0)::bigint FROM request_rollups",
    )
    .await;
    assert_eq!(rolled, rows, "the rollups count each record once");
    db.close().await.unwrap();
    (rows, ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_killed_under_load_lose_and_repeat_no_record() {
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let server = env.start();
    let admin = connect(env.postgres().unwrap()).await;
    let name = env
        .postgres()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid))::bigint FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    let mut sent_ok = traffic(&server, 40).await;
    let mut killed = 0;
    for _ in 0..5 {
        killed += scalar(&admin, &kill).await;
        sent_ok += traffic(&server, 40).await;
    }
    assert!(killed > 0, "the server's connections were killed");
    assert!(
        eventually(Duration::from_secs(20), || async {
            server.json("/api/stats").await["total_requests"] == sent_ok as i64
        })
        .await,
        "{}",
        server.log()
    );
    admin.close().await.unwrap();
    let (rows, ids) = stored(&env, server).await;
    assert_eq!((rows, ids), (sent_ok as i64, sent_ok as i64));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_table_delays_records_and_says_so_but_loses_none() {
    let Some(env) = Env::new(Backend::Postgres).await else {
        return;
    };
    env.add_keys(&["a"]);
    let server = env.start();
    let mut sent_ok = traffic(&server, 20).await;
    // Another session holds the table for 10 s, as the issue asks.
    let locker = connect(env.postgres().unwrap()).await;
    let txn = sea_orm::TransactionTrait::begin(&locker).await.unwrap();
    txn.execute_unprepared("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked = Instant::now();
    sent_ok += traffic(&server, 40).await;
    let log = server
        .wait_log("a write of request records has not finished")
        .await;
    assert!(!log.contains("dropped"), "{log}");
    let health = server.json("/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(locked.elapsed())).await;
    txn.rollback().await.unwrap();
    locker.close().await.unwrap();
    sent_ok += traffic(&server, 20).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            server.json("/health").await["status"] == "ok"
        })
        .await,
        "{}",
        server.log()
    );
    let (rows, ids) = stored(&env, server).await;
    assert_eq!((rows, ids), (sent_ok as i64, sent_ok as i64));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The config folder on a 4 MB tmpfs, filled up under traffic, then freed: the server keeps
/// answering, says `degraded` with the cause, logs the error once, and once there is space
/// stores every record (counted by the `sqlite3` CLI after a clean stop); the CLI works after.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_loses_no_record_and_poisons_nothing() {
    let env = Env::sqlite().await;
    let folder = env.config_path().parent().unwrap().to_owned();
    let Some(_mount) = Mount::tmpfs(&folder, "4m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "mount must work in CI (root)"
        );
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    env.add_keys(&["a"]);
    let mut server = env.start();
    let mut sent = traffic(&server, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Fill the disk.
    let filler = folder.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    sent += traffic(&server, 200).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            server.json("/health").await["status"] == "degraded"
        })
        .await,
        "{}",
        server.log()
    );
    let health = server.json("/health").await;
    assert!(health["problems"].to_string().contains("full"), "{health}");
    std::fs::remove_file(&filler).unwrap();
    sent += traffic(&server, 20).await;
    assert_eq!(sent, 240, "every request was answered");
    assert!(
        eventually(Duration::from_secs(15), || async {
            server.json("/api/stats").await["total_requests"] == 240
                && server.json("/health").await["status"] == "ok"
        })
        .await,
        "{}",
        server.log()
    );
    let log = server.log();
    assert_eq!(
        log.matches("could not store request records").count(),
        1,
        "logged once: {log}"
    );
    assert!(server.terminate(Duration::from_secs(20)).success());
    let count = std::process::Command::new("sqlite3")
        .arg(env.db_path())
        .arg("SELECT count(*) FROM requests; PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout), "240\nok\n");
    let pause = env.cli(&["pause", "a"]);
    assert!(
        pause.status.success(),
        "{}",
        String::from_utf8_lossy(&pause.stderr)
    );
}

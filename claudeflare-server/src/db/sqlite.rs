//! SQLite connections the pool may keep: opened read-write, and outside any transaction.
//!
//! Why this exists (found with the database files made immutable for three seconds under load,
//! `chattr +i` on the file, `-wal` and `-shm`): records the server had logged as stored were gone
//! after a clean stop, reads answered 3 or 15 rows depending on the pooled connection, and other
//! processes got "database is locked" until the server stopped. The cause is in the driver:
//!
//! - sqlx counts a connection's transaction depth itself. When a `COMMIT` fails with an I/O
//!   error or a full disk, SQLite has already rolled the transaction back, but sqlx leaves its
//!   depth at 1, and the `ROLLBACK` it then sends fails ("no transaction is active"), so the
//!   count stays wrong. The pool keeps the connection.
//! - On that connection the next `begin` is a `SAVEPOINT`, which in SQLite opens a transaction.
//!   If that one fails too (`database is locked` past the busy timeout, while another write
//!   holds the lock), sqlx sends `ROLLBACK TO SAVEPOINT`, which undoes the writes but leaves
//!   SQLite's transaction open, and counts one level less.
//! - From then on every `begin` / `commit` of that connection is a `SAVEPOINT` / `RELEASE`
//!   nested inside a transaction that is never committed. Each write "succeeds"; its rows are
//!   visible on that connection only; the transaction holds the write lock against everyone
//!   else; and the connection's close rolls all of it back.
//!
//! Separately, a connection opened while the files cannot be written is opened read-only by
//! SQLite (it falls back without an error), and with its shared memory read-only it reads a
//! view of the log that may never catch up.
//!
//! (The `-shm` file itself must stay writable: SQLite writes to it through a shared mapping,
//! and ext4 answers the first write to a mapped page of an immutable file with SIGBUS
//! (`ext4_page_mkwrite`), which ends any SQLite program, this one included, in
//! `walTryBeginRead`. Seen 2 of 3 tries with `chattr +i` on `-shm` too; no SQLite setting short of
//! an exclusive lock, which would keep the CLI out, avoids it.)
//!
//! So a new connection must be writable, and a connection going back to the pool must be
//! outside any transaction, both by sqlx's count and by SQLite's own flag; any other is closed,
//! and the pool opens a fresh one. The record writer also closes any connection whose write
//! failed (`requests::insert_batch`), and counts a batch as stored only when SQLite is out of
//! the transaction after the commit.

use sea_orm::sqlx::sqlite::{SqliteConnection, SqlitePoolOptions};
use sea_orm::sqlx::{self, Connection};

/// The pool's checks: a new connection must be writable, a returned one sound.
pub(crate) fn guard(options: SqlitePoolOptions) -> SqlitePoolOptions {
    options
        .after_connect(|conn, _| {
            Box::pin(async move {
                match state(conn).await? {
                    State { read_only: true, .. } => Err(sqlx::Error::Configuration(
                        "SQLite opened the database read-only (the file or its folder cannot be written)".into(),
                    )),
                    _ => Ok(()),
                }
            })
        })
        .after_release(|conn, _| Box::pin(async move { sound(conn).await }))
}

/// Whether `conn` can serve another read or write: writable, and out of any transaction.
pub(crate) async fn sound(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    if conn.is_in_transaction() {
        return Ok(false);
    }
    let state = state(conn).await?;
    Ok(!state.read_only && !state.in_transaction)
}

/// What SQLite itself says of a connection.
struct State {
    read_only: bool,
    in_transaction: bool,
}

async fn state(conn: &mut SqliteConnection) -> Result<State, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `handle` keeps the connection locked out of its worker thread while it lives, so
    // nothing else uses `raw` meanwhile; both functions only read flags of an open connection,
    // and the schema name is a NUL-terminated string that outlives the call.
    #[allow(unsafe_code)]
    let (read_only, autocommit) = unsafe {
        (
            libsqlite3_sys::sqlite3_db_readonly(raw, c"main".as_ptr()),
            libsqlite3_sys::sqlite3_get_autocommit(raw),
        )
    };
    Ok(State {
        // 1 read-only, 0 writable, -1 no such schema (which a connection always has).
        read_only: read_only != 0,
        in_transaction: autocommit == 0,
    })
}

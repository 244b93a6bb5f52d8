//! Persistence with sea-orm: SQLite by default, PostgreSQL for several instances.

pub mod accounts;
pub mod entities;
pub mod keys;
pub mod requests;
pub mod rollups;
pub mod signin;
mod sqlite;

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// The URL, without any password.
        url: String,
        /// The error.
        source: DbErr,
    },
    /// Migrations failed.
    #[error("cannot migrate the database {url}: {source}")]
    Migrate {
        /// The URL, without any password.
        url: String,
        /// The error.
        source: DbErr,
    },
    /// The SQLite file's folder could not be made.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] DbErr),
    /// No account with that id or name.
    #[error("no account named `{0}`")]
    UnknownAccount(String),
    /// The name is taken.
    #[error("an account named `{0}` already exists")]
    DuplicateName(String),
    /// No client key with that name.
    #[error("no client key named `{0}`")]
    UnknownKey(String),
    /// The key name is taken.
    #[error("a client key named `{0}` already exists")]
    DuplicateKey(String),
    /// A secret cannot be decrypted with the current key.
    #[error(
        "cannot decrypt the credentials of account `{0}`: the secret key is not the one they were stored with; restore that key (CLAUDEFLARE_SECRET_KEY or secret.key), or run `claudeflare-server reauth {0}`"
    )]
    Undecryptable(String),
    /// A stored value is not valid.
    #[error("account `{account}` holds an invalid {what}")]
    Corrupt {
        /// Account name.
        account: String,
        /// What is wrong.
        what: &'static str,
    },
}

/// `url` with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The file of a `sqlite://` URL.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Connect and run the migrations. A new SQLite file is created 0600 in a 0700 folder, in WAL mode.
pub async fn open(url: &str) -> Result<DatabaseConnection, DbError> {
    let shown = redact(url);
    if let Some(path) = sqlite_path(url) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsutil::create_private_dir(dir).map_err(|source| DbError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        if !path.exists() {
            crate::fsutil::write_private(&path, b"").map_err(|source| DbError::Io {
                path: path.clone(),
                source,
            })?;
        }
    }
    let sqlite = sqlite_path(url).is_some() || url.starts_with("sqlite:");
    let mut options = ConnectOptions::new(url.to_owned());
    options
        // SQLite writes one transaction at a time anyway; fewer connections, less memory.
        .max_connections(if sqlite { 4 } else { 8 })
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        // On every pooled connection: WAL, and fsync at checkpoints rather than at every commit
        // (a crash can lose the last records, never corrupt the file).
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .statement_cache_capacity(16)
        })
        // Only writable connections outside any transaction are kept (see the `sqlite` module).
        .map_sqlx_sqlite_pool_opts(sqlite::guard);
    let db = Database::connect(options)
        .await
        .map_err(|source| DbError::Connect {
            url: shown.clone(),
            source,
        })?;
    migrate(&db)
        .await
        .map_err(|source| DbError::Migrate { url: shown, source })?;
    Ok(db)
}

/// The advisory lock PostgreSQL instances take to migrate one at a time ("claudeflare" in
/// ASCII, an arbitrary key of this application's own).
const MIGRATION_LOCK: i64 = 0x636c_6175_6465_666c;

/// Run the migrations that have not run yet.
///
/// Several instances on one PostgreSQL database may start at once (a rolling upgrade, a
/// restart of all): each waits for a session advisory lock, held on a connection of its own
/// while the migrations run on the others, so one migrates and the rest find nothing left to do.
/// Instances still serving on the previous version keep working: a migration only adds.
async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let Some(pool) = (db.get_database_backend() == DbBackend::Postgres)
        .then(|| db.get_postgres_connection_pool())
    else {
        return migrations::Migrator::up(db, None).await;
    };
    let failed = |error: sea_orm::sqlx::Error| DbErr::Custom(error.to_string());
    let mut holder = pool.acquire().await.map_err(failed)?;
    sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *holder)
        .await
        .map_err(failed)?;
    let migrated = migrations::Migrator::up(db, None).await;
    let unlocked = sea_orm::sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *holder)
        .await;
    if unlocked.is_err() {
        // Closing the connection releases the lock all the same.
        holder.close_on_drop();
    }
    migrated
}

/// A counter as a database integer (saturating).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Numbered placeholders for PostgreSQL, `?` for SQLite.
fn placeholders(backend: DbBackend, count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| {
            if backend == DbBackend::Postgres {
                format!("${i}")
            } else {
                "?".to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("sqlite:///tmp/x.db?mode=rwc"),
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }
}

//! What `/health` reports beyond "ok": problems the server found with its own files while
//! running (the configuration folder deleted under it, say), which it cannot repair itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a problem is about: one problem of each kind at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Problem {
    /// The SQLite file was deleted or replaced.
    DatabaseFile,
    /// Request records cannot be stored (or a write of them stalls).
    Records,
    /// Request records wait in the spill file, or it takes no writes.
    Spill,
}

/// Problems by what they are about; empty when healthy.
#[derive(Debug, Default)]
pub struct Health(Mutex<BTreeMap<Problem, String>>);

impl Health {
    /// The problems now, in words.
    pub fn problems(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Report a problem about `what` (logged once when it starts).
    pub fn report(&self, what: Problem, problem: String) {
        let mut problems = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !problems.contains_key(&what) {
            tracing::error!(problem = %problem, "the server is degraded");
        }
        problems.insert(what, problem);
    }

    /// Whether there is a problem about `what`.
    pub fn has(&self, what: Problem) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&what)
    }

    /// `what` is no longer a problem.
    pub fn solved(&self, what: Problem) {
        let mut problems = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if problems.remove(&what).is_some() {
            tracing::info!(?what, "solved: the server is healthy again");
        }
    }
}

/// The identity of a file, to tell it from another one put in its place.
fn identity(path: &Path) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Some((0, 0))
    }
}

/// Every 2 s until `stop`, check that the SQLite database the server opened is still where it
/// was (a deleted or replaced file keeps taking writes that nobody will ever read).
pub async fn watch_database(
    database: Option<PathBuf>,
    health: std::sync::Arc<Health>,
    stop: CancellationToken,
) {
    let Some(path) = database else {
        return;
    };
    let Some(opened) = identity(&path) else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => return,
        }
        match identity(&path) {
            Some(now) if now == opened => health.solved(Problem::DatabaseFile),
            Some(_) => health.report(
                Problem::DatabaseFile,
                format!(
                    "the database file {} was replaced while the server runs: what it stores now goes to the old, deleted file; restart the server",
                    path.display()
                ),
            ),
            None => health.report(
                Problem::DatabaseFile,
                format!(
                    "the database file {} was deleted while the server runs (its folder too?): what it stores now is lost when it stops; restore the file or restart the server",
                    path.display()
                ),
            ),
        }
    }
}

/// Processes that still have the deleted file `path` open, by pid (Linux; elsewhere none are
/// found).
pub fn holders_of_deleted(path: &Path) -> Vec<u32> {
    let Ok(absolute) = std::path::absolute(path) else {
        return Vec::new();
    };
    let wanted = format!("{} (deleted)", absolute.display());
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        });
        if holds {
            holders.push(pid);
        }
    }
    holders
}

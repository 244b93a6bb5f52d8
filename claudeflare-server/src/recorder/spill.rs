//! The spill file: where request records wait on disk once the in-memory queue is half full (the
//! database takes no writes, or fewer than arrive), to be stored in order later, by this run or
//! the next one.
//!
//! One JSON line per record, `[record, cost]`, appended in batches to a file only the owner can
//! read (`0600`). The writer takes records back from the front while the file grows at the
//! back; once everything in it is stored, the file is emptied. While the database stays behind
//! (the file never empties), what waits is moved to a fresh file each time a quarter of the cap
//! has been stored from the front, so the cap bounds what waits rather than all that went
//! through the file. What a previous run left is taken back first, and stored with a check
//! for what is already stored (the run may have stopped between storing a batch and emptying
//! the file).

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use crate::pricing::Cost;
use claudeflare_tower::RequestRecord;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

/// Its name, in the folder of the database (or of the configuration, for PostgreSQL).
pub const FILE_NAME: &str = "request-records.spill";

/// A record and its cost, as queued.
pub type Queued = (RequestRecord, Cost);

/// The spill file and the writer's place in it.
pub struct Spill {
    path: PathBuf,
    max_bytes: u64,
    /// The appending handle, opened on the first spill.
    writer: Option<File>,
    reader: Option<BufReader<File>>,
    /// Bytes of whole lines in the file: what is read back, and where the next batch goes.
    len: u64,
    /// Bytes of it taken back.
    read: u64,
    /// What a previous run left ends here: taken back with a check for what is stored.
    replay_until: u64,
    /// Records moved out of the queue whose write to the file failed: written first next
    /// time, or taken back from here once the file is exhausted.
    held: Vec<Queued>,
    /// Where [`Self::read`] must have come to since the last failed move to a fresh file
    /// before the next is tried: a quarter of the cap further.
    move_failed_at: u64,
    /// A failed write could not be undone: the file's end is not [`Self::len`], so nothing more
    /// is appended to it in this run until it has been read back and emptied.
    damaged: bool,
}

/// What a spill did.
#[derive(Debug, Default)]
pub struct Spilled {
    /// Records written to the file.
    pub written: u64,
    /// Records that did not fit under `spill_max_bytes`: lost.
    pub dropped: u64,
    /// Why the others could not be written (they are held).
    pub error: Option<io::Error>,
}

/// A move of the records waiting in the spill file to a fresh one (see [`Spill::compaction`]).
pub struct Compaction {
    from: PathBuf,
    to: PathBuf,
    /// Where what waits starts: everything before it is stored.
    start: u64,
    /// How far the old file is copied.
    copied_to: u64,
}

impl Compaction {
    /// How far the old file is copied.
    pub fn copied_to(&self) -> u64 {
        self.copied_to
    }

    /// Copy the old file on to `end` (what [`Spill::end`] says). Records spilled meanwhile are
    /// appended to the old file, for the next copy, or the last one in [`Spill::compacted`].
    pub async fn copy_to(&mut self, end: u64) -> io::Result<()> {
        let mut options = OpenOptions::new();
        if self.copied_to == self.start {
            options.write(true).create(true).truncate(true).mode(0o600);
        } else {
            options.append(true);
        }
        let mut from = File::open(&self.from).await?;
        from.seek(SeekFrom::Start(self.copied_to)).await?;
        let mut to = options.open(&self.to).await?;
        let wanted = end.saturating_sub(self.copied_to);
        let copied = tokio::io::copy(&mut from.take(wanted), &mut to).await?;
        to.flush().await?;
        if copied != wanted {
            return Err(io::Error::other("the spill file is shorter than it was"));
        }
        self.copied_to = end.max(self.copied_to);
        Ok(())
    }
}

impl Spill {
    /// The spill file at `path`, capped at `max_bytes`; what a previous run left in it is
    /// taken back first.
    pub fn open(path: PathBuf, max_bytes: u64) -> Self {
        let left = end_whole_lines(&path);
        // A move to a fresh file that a crash cut short: the file itself is whole.
        let _ = std::fs::remove_file(fresh_path(&path));
        Self {
            path,
            max_bytes,
            writer: None,
            reader: None,
            len: left,
            read: 0,
            replay_until: left,
            held: Vec::new(),
            move_failed_at: 0,
            damaged: false,
        }
    }

    /// Everything spilled has been stored: empty the file (done by [`Self::take`] otherwise).
    pub async fn finish(&mut self) -> io::Result<()> {
        if self.is_empty() {
            self.empty().await?;
        }
        Ok(())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether every record spilled has been taken back.
    pub fn is_empty(&self) -> bool {
        self.read >= self.len && self.held.is_empty()
    }

    /// Bytes waiting in the file (and records held in memory, when the file takes no writes).
    pub fn waiting(&self) -> (u64, usize) {
        (self.len.saturating_sub(self.read), self.held.len())
    }

    /// Append `records` (after any held from a failed write) to the file. On an error they are
    /// held, to be written first next time (see [`Self::holding`]); what is over the cap is
    /// dropped either way.
    pub async fn push(&mut self, records: impl IntoIterator<Item = Queued>) -> Spilled {
        self.held.extend(records);
        let mut spilled = Spilled::default();
        if self.held.is_empty() {
            return spilled;
        }
        if self.damaged {
            spilled.error = Some(io::Error::other(
                "an earlier write to it failed and could not be undone; it takes records again once emptied",
            ));
            return spilled;
        }
        let mut lines = Vec::with_capacity(self.held.len() * 512);
        let (len, max) = (self.len, self.max_bytes);
        self.held.retain(|(record, cost)| {
            let start = lines.len();
            // Writing plain data (strings, numbers, a timestamp) to a `Vec` cannot fail.
            serde_json::to_writer(&mut lines, &(record, cost)).expect("a record serializes");
            lines.push(b'\n');
            let fits = len + lines.len() as u64 <= max;
            if !fits {
                lines.truncate(start);
                spilled.dropped += 1;
            }
            fits
        });
        match self.append(&lines).await {
            Ok(()) => {
                spilled.written = self.held.len() as u64;
                self.held.clear();
            }
            Err(error) => spilled.error = Some(error),
        }
        spilled
    }

    /// Whether records are held in memory because the file took no writes.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    async fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)
                    .await?;
                // A file left by an older run may have been made with other permissions.
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .await?;
                self.writer.insert(file)
            }
        };
        let written = async {
            writer.write_all(lines).await?;
            writer.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                self.len += lines.len() as u64;
                Ok(())
            }
            Err(error) => {
                // Part of the batch may be in the file: cut it off, or write no more to it.
                if writer.set_len(self.len).await.is_err() {
                    self.damaged = true;
                }
                Err(error)
            }
        }
    }

    /// Take the next records back, up to `max`, into `batch`: from the file, then those held.
    /// Returns whether they must be checked against what is stored (a previous run's), and how
    /// many lines could not be read (lost; a run killed mid-write leaves half a line).
    pub async fn take(&mut self, batch: &mut Vec<Queued>, max: usize) -> io::Result<(bool, u64)> {
        if self.read >= self.len {
            self.empty().await?;
            let count = max.min(self.held.len());
            batch.extend(self.held.drain(..count));
            return Ok((false, 0));
        }
        let recheck = self.read < self.replay_until;
        let reader = match &mut self.reader {
            Some(reader) => reader,
            None => {
                let mut file = File::open(&self.path).await?;
                file.seek(SeekFrom::Start(self.read)).await?;
                self.reader.insert(BufReader::new(file))
            }
        };
        let mut line = Vec::with_capacity(1024);
        let mut unreadable = 0;
        while batch.len() < max && self.read < self.len {
            line.clear();
            let count = reader.read_until(b'\n', &mut line).await?;
            if count == 0 {
                // The file is shorter than it was: someone else cut it.
                self.read = self.len;
                break;
            }
            self.read += count as u64;
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<Queued>(&line) {
                Ok(queued) => batch.push(queued),
                Err(_) => unreadable += 1,
            }
        }
        Ok((recheck, unreadable))
    }

    /// A move of what waits to a fresh file, when one is due: once a quarter of the cap was
    /// taken back. (Called before [`Self::take`]: what was taken back is stored by then, as the
    /// writer stores each batch before it takes the next.) Without it, under a database that
    /// stays behind, the file never empties and fills up to the cap with records stored long
    /// ago. A move copies at most the cap, after a quarter of it was taken back: at most four
    /// bytes copied for each byte stored.
    pub fn compaction(&self) -> Option<Compaction> {
        let waiting = self.len.saturating_sub(self.read);
        let due = self.read >= self.move_failed_at.saturating_add(self.max_bytes / 4);
        (due && waiting > 0).then(|| Compaction {
            from: self.path.clone(),
            to: fresh_path(&self.path),
            start: self.read,
            copied_to: self.read,
        })
    }

    /// Where the next records go in the file: the end of what it holds.
    pub fn end(&self) -> u64 {
        self.len
    }

    /// Finish `compaction`, whose copies so far returned `copied`: copy what was appended
    /// since, and put the fresh file in place of this one in one rename (a crash leaves either
    /// whole).
    pub async fn compacted(&mut self, mut compaction: Compaction, copied: io::Result<()>) {
        let end = self.len;
        let done = async {
            copied?;
            compaction.copy_to(end).await?;
            tokio::fs::rename(&compaction.to, &self.path).await
        }
        .await;
        if let Err(error) = done {
            let _ = tokio::fs::remove_file(&compaction.to).await;
            self.move_failed_at = self.read;
            tracing::warn!(%error, file = %self.path.display(), "cannot move the waiting request records to a fresh spill file; the file keeps growing until it empties");
            return;
        }
        let stored = compaction.start;
        self.len -= stored;
        self.read -= stored;
        self.replay_until = self.replay_until.saturating_sub(stored);
        self.move_failed_at = 0;
        // Both handles are of the file replaced; they reopen the new one when next needed. Its
        // end is where `len` says, whatever a failed write left in the old one.
        self.reader = None;
        self.writer = None;
        self.damaged = false;
    }

    /// Give up what is left in the file (it cannot be read, or was removed): returns its bytes.
    /// The file is started afresh; if it cannot even be emptied, nothing more is spilled to it
    /// until it can.
    pub async fn skip_rest(&mut self) -> u64 {
        let skipped = self.len.saturating_sub(self.read);
        self.reader = None;
        self.writer = None;
        self.forget_offsets();
        self.damaged = match OpenOptions::new().write(true).open(&self.path).await {
            Ok(file) => file.set_len(0).await.is_err(),
            Err(error) => error.kind() != io::ErrorKind::NotFound,
        };
        skipped
    }

    /// Everything in the file was taken back and stored: empty it, so it does not grow for ever.
    async fn empty(&mut self) -> io::Result<()> {
        if self.len == 0 && !self.damaged {
            return Ok(());
        }
        match &mut self.writer {
            Some(writer) => writer.set_len(0).await?,
            None => match OpenOptions::new().write(true).open(&self.path).await {
                Ok(file) => file.set_len(0).await?,
                // Removed by someone: nothing to empty.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            },
        }
        if let Some(reader) = &mut self.reader {
            if reader.seek(SeekFrom::Start(0)).await.is_err() {
                self.reader = None;
            }
        }
        self.forget_offsets();
        self.damaged = false;
        Ok(())
    }

    /// The file holds nothing any more (emptied, or started afresh).
    fn forget_offsets(&mut self) {
        self.len = 0;
        self.read = 0;
        self.replay_until = 0;
        self.move_failed_at = 0;
    }
}

/// Where a move of the spill file at `path` copies to.
fn fresh_path(path: &Path) -> PathBuf {
    path.with_extension("spill.new")
}

/// The length of the file at `path` (0 if there is none), after ending it with a newline if a
/// run killed mid-write left half a line: that line is then read (and counted) as unreadable,
/// and the lines appended after it are whole.
fn end_whole_lines(path: &Path) -> u64 {
    use std::io::{Read, Seek, Write};
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    else {
        return 0;
    };
    let len = file.metadata().map_or(0, |metadata| metadata.len());
    if len == 0 {
        return 0;
    }
    let mut last = [0];
    let ends_whole = file.seek(SeekFrom::Start(len - 1)).is_ok()
        && file.read_exact(&mut last).is_ok()
        && last[0] == b'\n';
    if !ends_whole && file.write_all(b"\n").is_ok() {
        return len + 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn record(id: usize) -> Queued {
        let mut record =
            RequestRecord::new(format!("req-{id}"), Utc::now(), "POST", "/v1/messages");
        record.status = Some(200);
        record.success = true;
        record.account = Some("a\n\u{1b}[31m".into());
        record.usage.output_tokens = id as u64;
        (record, Cost::priced(id as f64 / 100.0))
    }

    fn ids(batch: &[Queued]) -> Vec<String> {
        batch.iter().map(|(record, _)| record.id.clone()).collect()
    }

    #[tokio::test]
    async fn records_come_back_whole_and_in_order_and_the_file_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut spill = Spill::open(path.clone(), 1 << 20);
        assert!(spill.is_empty());
        assert!(!path.exists(), "no file until something is spilled");

        let first: Vec<Queued> = (0..5).map(record).collect();
        let pushed = spill.push(first.clone()).await;
        assert_eq!((pushed.written, pushed.dropped), (5, 0));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut batch = Vec::new();
        assert_eq!(spill.take(&mut batch, 3).await.unwrap(), (false, 0));
        // More arrive while the first ones are taken back: they come after them.
        spill.push((5..8).map(record)).await;
        spill.take(&mut batch, 100).await.unwrap();
        assert_eq!(ids(&batch), ids(&(0..8).map(record).collect::<Vec<_>>()));
        assert_eq!(batch[..5], first[..]);
        assert!(spill.is_empty());

        // Once all of it is stored (the next take), the file is emptied.
        let mut none = Vec::new();
        spill.take(&mut none, 100).await.unwrap();
        assert!(none.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        spill.push((8..10).map(record)).await;
        spill.take(&mut none, 100).await.unwrap();
        assert_eq!(ids(&none), ["req-8", "req-9"]);
    }

    #[tokio::test]
    async fn what_a_previous_run_left_is_taken_back_first_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut before = Spill::open(path.clone(), 1 << 20);
        before.push((0..4).map(record)).await;
        drop(before);
        // A run killed mid-write leaves half a line.
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"[{\"id\":\"req-ha").unwrap();

        let mut spill = Spill::open(path, 1 << 20);
        assert!(!spill.is_empty());
        spill.push((4..6).map(record)).await;
        let mut batch = Vec::new();
        let (recheck, unreadable) = spill.take(&mut batch, 4).await.unwrap();
        assert!(recheck, "a previous run's records may be stored already");
        assert_eq!(unreadable, 0);
        assert_eq!(ids(&batch), ["req-0", "req-1", "req-2", "req-3"]);
        let mut rest = Vec::new();
        let (_, unreadable) = spill.take(&mut rest, 10).await.unwrap();
        assert_eq!(unreadable, 1, "the half line");
        assert_eq!(ids(&rest), ["req-4", "req-5"]);
    }

    #[tokio::test]
    async fn only_what_is_beyond_the_cap_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let line = {
            let mut line = serde_json::to_vec(&record(0)).unwrap();
            line.push(b'\n');
            line.len() as u64
        };
        let mut spill = Spill::open(path.clone(), line * 3 + 10);
        let pushed = spill.push((0..5).map(record)).await;
        assert_eq!((pushed.written, pushed.dropped), (3, 2));
        let mut batch = Vec::new();
        spill.take(&mut batch, 10).await.unwrap();
        assert_eq!(ids(&batch), ["req-0", "req-1", "req-2"]);
        // Emptied, it takes records again.
        spill.take(&mut Vec::new(), 10).await.unwrap();
        assert_eq!(spill.push((5..8).map(record)).await.written, 3);
    }

    /// The database stays behind: the file never empties, yet what was stored from its front no
    /// longer counts against the cap.
    #[tokio::test]
    async fn the_cap_bounds_what_waits_not_what_went_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // The longest line of those pushed below.
        let line = (0..80)
            .map(|id| serde_json::to_vec(&record(id)).unwrap().len() as u64 + 1)
            .max()
            .unwrap();
        let cap = line * 50;
        let mut spill = Spill::open(path.clone(), cap);
        assert_eq!(spill.push((0..40).map(record)).await.written, 40);
        let mut batch = Vec::new();
        spill.take(&mut batch, 39).await.unwrap();
        // The 39 are stored: the one left moves to a fresh file, with what comes meanwhile.
        let mut compaction = spill.compaction().expect("a move is due");
        let copied = compaction.copy_to(spill.end()).await;
        assert_eq!(spill.push((40..45).map(record)).await.written, 5);
        spill.compacted(compaction, copied).await;
        let left = std::fs::read_to_string(&path).unwrap();
        assert_eq!(left.lines().count(), 6);
        assert!(left.starts_with("[{\"id\":\"req-39\""));
        assert!(!dir.path().join("request-records.spill.new").exists());
        let pushed = spill.push((45..75).map(record)).await;
        assert_eq!((pushed.written, pushed.dropped), (30, 0));
        spill.take(&mut batch, 100).await.unwrap();
        assert_eq!(ids(&batch), ids(&(0..75).map(record).collect::<Vec<_>>()));
        assert!(spill.is_empty());
        assert!(spill.compaction().is_none(), "nothing waits");
        spill.finish().await.unwrap();

        // A move that fails (here: its fresh file's place is a folder) is tried again only once
        // another quarter of the cap is taken back, not before every batch.
        spill.push((75..115).map(record)).await;
        let mut batch = Vec::new();
        spill.take(&mut batch, 39).await.unwrap();
        std::fs::create_dir(dir.path().join("request-records.spill.new")).unwrap();
        let mut compaction = spill.compaction().expect("a move is due");
        let copied = compaction.copy_to(spill.end()).await;
        assert!(copied.is_err());
        spill.compacted(compaction, copied).await;
        assert!(spill.compaction().is_none());
        std::fs::remove_dir(dir.path().join("request-records.spill.new")).unwrap();
        spill.take(&mut batch, 100).await.unwrap();
        assert_eq!(ids(&batch), ids(&(75..115).map(record).collect::<Vec<_>>()));
        spill.finish().await.unwrap();

        // A move cut short by a crash leaves its fresh file: the next start removes it.
        std::fs::write(dir.path().join("request-records.spill.new"), b"[{}]\n").unwrap();
        drop(spill);
        let mut before = Spill::open(path.clone(), cap);
        before.push((0..16).map(record)).await;
        drop(before);
        let mut spill = Spill::open(path.clone(), cap);
        assert!(!dir.path().join("request-records.spill.new").exists());
        // A previous run's records stay checked after the move.
        let mut batch = Vec::new();
        assert!(spill.take(&mut batch, 15).await.unwrap().0);
        let mut compaction = spill.compaction().expect("a move is due");
        let copied = compaction.copy_to(spill.end()).await;
        spill.compacted(compaction, copied).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        let mut rest = Vec::new();
        let (recheck, _) = spill.take(&mut rest, 10).await.unwrap();
        assert!(recheck, "the one left from the previous run is checked too");
        assert_eq!(ids(&rest), ["req-15"]);
    }

    #[tokio::test]
    async fn a_spill_file_removed_under_the_writer_is_given_up_and_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut spill = Spill::open(path.clone(), 1 << 20);
        spill.push((0..3).map(record)).await;
        std::fs::remove_file(&path).unwrap();
        let mut batch = Vec::new();
        spill.take(&mut batch, 10).await.unwrap_err();
        assert!(spill.skip_rest().await > 0);
        assert!(spill.is_empty());
        // New records go to a new file, and come back.
        assert_eq!(spill.push((3..5).map(record)).await.written, 2);
        assert!(path.exists());
        spill.take(&mut batch, 10).await.unwrap();
        assert_eq!(ids(&batch), ["req-3", "req-4"]);
    }

    #[tokio::test]
    async fn records_that_cannot_be_written_are_held_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: every open fails.
        let path = dir.path().join(FILE_NAME);
        std::fs::create_dir(&path).unwrap();
        let mut spill = Spill::open(path.clone(), 1 << 20);
        assert!(spill.push((0..3).map(record)).await.error.is_some());
        assert!(spill.holding());
        assert!(!spill.is_empty());
        std::fs::remove_dir(&path).unwrap();
        // Writable again: the held records go first.
        assert_eq!(spill.push((3..5).map(record)).await.written, 5);
        let mut batch = Vec::new();
        spill.take(&mut batch, 10).await.unwrap();
        assert_eq!(ids(&batch), ["req-0", "req-1", "req-2", "req-3", "req-4"]);
    }
}

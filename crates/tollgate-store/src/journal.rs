//! The request log's journal: how a request's record reaches disk before
//! its answer's last byte without waiting for a database commit.
//!
//! The writer appends every record it receives to `DATA_DIR/request-log.journal`
//! (one `write` per wake-up, not fsync'd) and only then resolves the
//! records' commit tickets; the database gets the records later, in batches
//! (see `request_log::writer`). A process killed at any moment, even by SIGKILL,
//! leaves in the journal every record the database may not have: the next
//! start writes them (a record already stored is skipped, so one that was in
//! both is counted once) before it rebuilds any counter from the log. That
//! is the durability a SQLite commit with `synchronous = NORMAL` gives (in
//! the kernel's page cache, not fsync'd): a power loss can lose the last
//! records of both.
//!
//! The format is the spill file's (`spill`): JSON lines, a torn last line
//! cut off at recovery. Once everything journaled is in the database and the
//! file has grown past [`RESET_AT`], it is cut back to nothing, so it stays
//! small and is rewritten in place.
//!
//! The append is a `write` to the page cache, a few microseconds, so it runs
//! on the writer's task: handing it to a blocking thread would cost more
//! than the write.

use crate::request_log::LogRecord;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The journal's name in the data directory.
pub const JOURNAL_FILE: &str = "request-log.journal";

/// Size past which a journal whose records are all in the database is cut
/// back to nothing.
const RESET_AT: u64 = 4 << 20;

/// The open journal.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    /// Reused for each append.
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, a torn last record cut off.
    /// What an earlier process left in it is read with [`Journal::read`];
    /// the caller writes it to the database, then calls [`Journal::clear`].
    pub(crate) fn open(dir: &Path) -> std::io::Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let len = crate::spill::recover(&path)?;
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?;
        Ok(Journal {
            path,
            file,
            len,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Bytes in the journal.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `max` records from byte `from` (see [`crate::spill::read`]).
    pub(crate) fn read(&self, from: u64, max: usize) -> std::io::Result<crate::spill::Read> {
        crate::spill::read(&self.path, from, max)
    }

    /// Where the journal lives.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` in one write. On failure the file is cut back to
    /// its length before, so that a partial record never sits in front of
    /// later ones.
    pub(crate) fn append(&mut self, records: &[LogRecord]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        crate::spill::encode(records, &mut self.buf)?;
        if let Err(e) = self.file.write_all(&self.buf) {
            // Best effort: if this fails too, recovery cuts the torn line.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        // A burst can leave a large buffer behind: do not keep it.
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(())
    }

    /// Everything journaled so far is in the database: cuts the file back
    /// once it has grown past [`RESET_AT`].
    pub(crate) fn committed(&mut self) -> std::io::Result<()> {
        if self.len >= RESET_AT {
            self.clear()?;
        }
        Ok(())
    }

    /// Cuts the file back to nothing.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Moves the file aside (records that could not be written at start-up
    /// are kept there for an operator) and starts an empty one.
    pub(crate) fn set_aside(&mut self, suffix: &str) -> std::io::Result<PathBuf> {
        let aside = self.path.with_extension(format!("journal.{suffix}"));
        std::fs::rename(&self.path, &aside)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.len = 0;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> LogRecord {
        LogRecord {
            id: format!("req-{i}"),
            created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i64::from(i)).unwrap(),
            endpoint: "chat.completions".into(),
            status_code: 200,
            total_tokens: u64::from(i),
            ..Default::default()
        }
    }

    #[test]
    fn what_a_killed_process_journaled_comes_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.len(), 0);
        j.append(&[rec(1), rec(2)]).unwrap();
        j.append(&[]).unwrap();
        j.append(&[rec(3)]).unwrap();
        // Killed in the middle of the next append.
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        f.write_all(br#"{"id":"req-4","crea"#).unwrap();
        drop(f);
        let mut j = Journal::open(dir.path()).unwrap();
        let left = j.read(0, 100).unwrap();
        assert_eq!(left.records, vec![rec(1), rec(2), rec(3)]);
        assert_eq!((left.corrupt, left.next), (0, j.len()));
        // In pieces, the offsets chain.
        let first = j.read(0, 2).unwrap();
        assert_eq!(first.records, vec![rec(1), rec(2)]);
        assert_eq!(j.read(first.next, 2).unwrap().records, vec![rec(3)]);
        // Appends after recovery follow the last whole record.
        j.append(&[rec(5)]).unwrap();
        drop(j);
        let mut j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.read(0, 100).unwrap().records, vec![rec(1), rec(2), rec(3), rec(5)]);
        j.clear().unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.len(), 0);
        assert!(j.read(0, 100).unwrap().records.is_empty());
    }

    #[test]
    fn committed_cuts_the_file_only_past_its_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&[rec(1)]).unwrap();
        j.committed().unwrap();
        let size = || std::fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len();
        assert!(size() > 0, "a small journal is kept");
        let big: Vec<LogRecord> = (0..40_000).map(rec).collect();
        j.append(&big).unwrap();
        assert!(size() >= RESET_AT);
        j.committed().unwrap();
        assert_eq!(size(), 0);
        // Appends go on at the start of the file.
        j.append(&[rec(7)]).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.read(0, 10).unwrap().records, vec![rec(7)]);
    }

    #[test]
    fn a_journal_set_aside_keeps_its_records_and_a_new_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(&[rec(1)]).unwrap();
        let aside = j.set_aside("unwritten-1").unwrap();
        assert_eq!(crate::spill::read(&aside, 0, 10).unwrap().records, vec![rec(1)]);
        j.append(&[rec(2)]).unwrap();
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.read(0, 10).unwrap().records, vec![rec(2)]);
    }

    #[test]
    fn a_journal_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        assert!(Journal::open(&missing).is_err());
    }
}

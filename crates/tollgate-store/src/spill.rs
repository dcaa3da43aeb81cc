//! The request log's spill file: records the writer could not put in
//! PostgreSQL and that no longer fit its memory bound, kept on local disk
//! until the database returns (see `request_log::Backlog`).
//!
//! The format is JSON lines: one [`LogRecord`] per line, each ending with
//! `\n`, appended and fsync'd (`fdatasync`) in one write per overflow. A
//! crash in the middle of an append leaves a last line without its `\n`:
//! [`recover`] cuts it off at start-up and [`read`] never returns it, so a
//! torn record is ignored rather than misread. A complete line that does not
//! parse (a damaged disk) is skipped and counted, so that one bad line never
//! blocks the records behind it. These functions block: the writer calls
//! them through `spawn_blocking`.

use crate::request_log::LogRecord;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The spill file's name in the data directory.
pub const SPILL_FILE: &str = "request-log.spill";

/// Appends `records` as JSON lines in one write and syncs them to disk
/// (and the directory, when this creates the file). Returns the file's new
/// length. On failure the file is cut back to `len`, its length before, so
/// that a partial append never sits in front of later ones.
pub(crate) fn append(path: &Path, len: u64, records: &[LogRecord]) -> std::io::Result<u64> {
    let mut bytes = Vec::with_capacity(records.len() * 512);
    encode(records, &mut bytes)?;
    let created = !path.exists();
    let mut file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let written = file.write_all(&bytes).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Best effort: if this fails too, `recover` cuts the torn line.
        let _ = file.set_len(len).and_then(|()| file.sync_data());
        return Err(e);
    }
    if created {
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(len + bytes.len() as u64)
}

/// Appends `records` to `out` in this file's format: one JSON line each
/// (the journal's format too).
pub(crate) fn encode(records: &[LogRecord], out: &mut Vec<u8>) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        out.push(b'\n');
    }
    Ok(())
}

/// What [`read`] found.
#[derive(Debug, Default)]
pub(crate) struct Read {
    pub records: Vec<LogRecord>,
    /// Where the next read starts.
    pub next: u64,
    /// Complete lines that did not parse, skipped.
    pub corrupt: usize,
}

/// Reads up to `max` records from byte `from`; a last line without its
/// `\n` is left unread.
pub(crate) fn read(path: &Path, from: u64, max: usize) -> std::io::Result<Read> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut out = Read {
        next: from,
        ..Read::default()
    };
    let mut line = Vec::new();
    while out.records.len() < max {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        out.next += n as u64;
        match serde_json::from_slice(&line) {
            Ok(r) => out.records.push(r),
            Err(_) => out.corrupt += 1,
        }
    }
    Ok(out)
}

/// Opens the spill file left by an earlier process, if any: cuts a torn last
/// line off and returns the length that remains (0 without a file).
pub(crate) fn recover(path: &Path) -> std::io::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Find the last `\n`, reading backwards in blocks.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    let whole = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        std::io::Read::read_exact(&mut file, block)?;
        if let Some(i) = block.iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if whole < len {
        tracing::warn!(
            bytes = len - whole,
            path = %path.display(),
            "the request log's spill file ends with a torn record (a crash while writing it): ignored"
        );
        file.set_len(whole)?;
        file.sync_data()?;
    }
    Ok(whole)
}

/// Removes the spill file once everything in it is in the database.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> LogRecord {
        LogRecord {
            id: format!("req-{i}"),
            created_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_123 + i64::from(i)).unwrap(),
            trace_id: format!("trace-{i}"),
            endpoint: "chat.completions".into(),
            status_code: 200,
            total_tokens: u64::from(i),
            cost_picos: Some(i64::from(i) * 1_000),
            metadata: Some(serde_json::from_str(r#"{"team":"a\nb"}"#).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn records_come_back_in_order_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPILL_FILE);
        let all: Vec<LogRecord> = (0..7).map(rec).collect();
        let len = append(&path, 0, &all[..3]).unwrap();
        let len = append(&path, len, &all[3..]).unwrap();
        assert_eq!(len, std::fs::metadata(&path).unwrap().len());
        // Read in pieces: the same records, in order, and the offsets chain.
        let first = read(&path, 0, 4).unwrap();
        assert_eq!(first.records, all[..4]);
        let rest = read(&path, first.next, 100).unwrap();
        assert_eq!(rest.records, all[4..]);
        assert_eq!(rest.next, len);
        assert_eq!(rest.corrupt, 0);
        let none = read(&path, len, 100).unwrap();
        assert!(none.records.is_empty());
        assert_eq!(none.next, len);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
        assert_eq!(recover(&path).unwrap(), 0);
    }

    #[test]
    fn default_fields_are_left_out_and_lines_with_every_field_still_read() {
        let mut out = Vec::new();
        encode(&[rec(1)], &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        for absent in [
            "\"refusal\"",
            "\"streamed\"",
            "\"attempt\"",
            "\"request_body\"",
            "\"workspace_id\"",
        ] {
            assert!(!line.contains(absent), "{absent} in {line}");
        }
        // Every field set, none at its default: all of them come back.
        let full = LogRecord {
            workspace_id: Some("ws".into()),
            api_key_id: Some("key".into()),
            integration_id: Some("int".into()),
            integration_slug: Some("slug".into()),
            provider_slug: Some("@slug".into()),
            ai_provider_id: Some("openai".into()),
            model: Some("gpt-4o".into()),
            error_type: Some("upstream_error".into()),
            refusal: Some("budget".into()),
            streamed: true,
            cancelled: true,
            prompt_tokens: 1,
            completion_tokens: 2,
            cached_tokens: 3,
            tokens_estimated: true,
            latency_us: 4,
            ttft_us: Some(5),
            upstream_latency_us: Some(6),
            request_body: Some("{}".into()),
            response_body: Some("{}".into()),
            target_path: Some("config.targets[1]".into()),
            retry_attempt: 7,
            attempt: 8,
            superseded: true,
            ..rec(9)
        };
        let mut out = Vec::new();
        encode(std::slice::from_ref(&full), &mut out).unwrap();
        let back: LogRecord = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, full);
        // A line as written before defaults were left out (every field, nulls
        // and zeros included) reads as the same record.
        let old = r#"{"id":"req-1","created_at":"2023-11-14T22:13:20.124Z","trace_id":"trace-1","workspace_id":null,"api_key_id":null,"integration_id":null,"integration_slug":null,"provider_slug":null,"ai_provider_id":null,"model":null,"endpoint":"chat.completions","status_code":200,"error_type":null,"refusal":null,"streamed":false,"cancelled":false,"prompt_tokens":0,"completion_tokens":0,"cached_tokens":0,"total_tokens":1,"tokens_estimated":false,"cost_picos":1000,"latency_us":0,"ttft_us":null,"upstream_latency_us":null,"metadata":{"team":"a\nb"},"request_body":null,"response_body":null,"target_path":null,"retry_attempt":0,"attempt":0,"superseded":false}"#;
        assert_eq!(serde_json::from_str::<LogRecord>(old).unwrap(), rec(1));
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_cut_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPILL_FILE);
        let len = append(&path, 0, &[rec(1), rec(2)]).unwrap();
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":"req-3","created_at":"2023-1"#).unwrap();
        drop(f);
        let r = read(&path, 0, 100).unwrap();
        assert_eq!(r.records, vec![rec(1), rec(2)]);
        assert_eq!((r.next, r.corrupt), (len, 0));
        assert_eq!(recover(&path).unwrap(), len);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        // Appends after recovery follow the last whole record.
        let len2 = append(&path, len, &[rec(4)]).unwrap();
        assert_eq!(read(&path, 0, 100).unwrap().records, vec![rec(1), rec(2), rec(4)]);
        assert_eq!(recover(&path).unwrap(), len2);
        // A file that is nothing but a torn record recovers to empty.
        let only = dir.path().join("torn");
        std::fs::write(&only, b"{\"id\":").unwrap();
        assert_eq!(recover(&only).unwrap(), 0);
        assert!(read(&only, 0, 10).unwrap().records.is_empty());
    }

    #[test]
    fn a_damaged_line_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPILL_FILE);
        let len = append(&path, 0, &[rec(1)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n").unwrap();
        drop(f);
        append(&path, len + 9, &[rec(2)]).unwrap();
        let r = read(&path, 0, 100).unwrap();
        assert_eq!(r.records, vec![rec(1), rec(2)]);
        assert_eq!(r.corrupt, 1);
    }

    #[test]
    fn a_failed_append_reports_its_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the open fails.
        let path = dir.path().join(SPILL_FILE);
        std::fs::create_dir(&path).unwrap();
        assert!(append(&path, 0, &[rec(1)]).is_err());
        assert!(read(&path, 0, 1).is_err());
        assert!(remove(&path).is_err());
    }
}

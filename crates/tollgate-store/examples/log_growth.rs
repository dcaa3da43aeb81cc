//! What a request-log row costs to write as the log grows, with trace ids
//! in random order (UUID v4) or in time order (UUID v7).
//!
//! ```sh
//! cargo run --release -p tollgate-store --example log_growth -- --trace v4
//! cargo run --release -p tollgate-store --example log_growth -- --trace v7
//! cargo run --release -p tollgate-store --example log_growth -- --trace v7 \
//!     --rows 300000 --database-url postgres://postgres@127.0.0.1/log_growth
//! ```
//!
//! Rows go through the store's own writer in transactions of `--batch`
//! rows (16 by default: the server's batch at moderate load), into a fresh
//! SQLite database in a temporary directory, or into the (empty)
//! PostgreSQL database given.
//! Every `--every` rows it prints the wall-clock time per row of the last
//! stretch and the size of the database so far. Each index of `usage_log`
//! is a B-tree: a key that arrives in time order lands on its last page,
//! one in random order on any page, so once the index outgrows the page
//! cache each insert reads and rewrites a page of its own.

use chrono::Utc;
use std::path::Path;
use std::time::Instant;
use tollgate_store::db::{Location, SQLITE_FILE};
use tollgate_store::request_log::LogRecord;
use tollgate_store::Store;

struct Args {
    rows: u64,
    every: u64,
    v7: bool,
    batch: u64,
    database_url: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        rows: 1_000_000,
        every: 100_000,
        v7: true,
        batch: 16,
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = value()?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--every" => a.every = value()?.parse().map_err(|e| format!("--every: {e}"))?,
            "--trace" => {
                a.v7 = match value()?.as_str() {
                    "v4" => false,
                    "v7" => true,
                    other => return Err(format!("--trace is v4 or v7, not {other:?}")),
                }
            }
            "--batch" => a.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--database-url" => a.database_url = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.every == 0 || a.rows < a.every {
        return Err("--every must be at least 1 and at most --rows".into());
    }
    if a.batch == 0 || a.batch > 512 {
        return Err("--batch must be from 1 to 512 (the writer's largest transaction)".into());
    }
    Ok(a)
}

/// A record like the benchmark's: a workspace, a key, a provider and a
/// model, tokens and a cost.
fn record(trace_id: String) -> LogRecord {
    LogRecord {
        id: format!("req-{}", uuid::Uuid::now_v7().simple()),
        created_at: Utc::now(),
        trace_id,
        workspace_id: Some("ws-bench-1a2b3c".into()),
        api_key_id: Some("ak-0190f3b2c4d57e6f8a9b0c1d2e3f4a5b".into()),
        integration_id: Some("int-0190f3b2c4d57e6f8a9b0c1d2e3f4a5c".into()),
        integration_slug: Some("mock".into()),
        provider_slug: Some("mock".into()),
        ai_provider_id: Some("openai".into()),
        model: Some("gpt-4o".into()),
        endpoint: "chat.completions".into(),
        status_code: 200,
        prompt_tokens: 12,
        completion_tokens: 9,
        total_tokens: 21,
        cost_picos: Some(120_000_000),
        latency_us: 450,
        ..LogRecord::default()
    }
}

/// Bytes of the SQLite database at `file` and its write-ahead log.
fn sqlite_bytes(file: &Path) -> u64 {
    let wal = file.with_extension("db-wal");
    [file, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let db_file = dir.path().join(SQLITE_FILE);
    let (location, backend) = match &a.database_url {
        Some(url) => (Location::Postgres(url.clone()), "PostgreSQL"),
        None => (Location::Sqlite(db_file.clone()), "SQLite"),
    };
    let store = Store::open(&location).await?;
    let (log, writer) = store.spawn_log_writer()?;
    println!(
        "trace ids {}, {} rows in transactions of {}, {backend}",
        if a.v7 { "v7 (time order)" } else { "v4 (random order)" },
        a.rows,
        a.batch,
    );
    let mut stretch = Instant::now();
    let started = stretch;
    for n in 1..=a.rows {
        let trace = if a.v7 {
            uuid::Uuid::now_v7()
        } else {
            uuid::Uuid::new_v4()
        };
        log.record(record(trace.to_string()));
        if n % a.batch == 0 || n == a.rows {
            log.flush().await;
        }
        if n % a.every == 0 {
            let per_row = stretch.elapsed().as_secs_f64() * 1e6 / a.every as f64;
            if a.database_url.is_some() {
                println!("{n:>9} rows: {per_row:6.1} µs a row");
            } else {
                let mb = sqlite_bytes(&db_file) >> 20;
                println!("{n:>9} rows: {per_row:6.1} µs a row, database {mb} MB");
            }
            stretch = Instant::now();
        }
    }
    drop(log);
    writer.await?;
    println!(
        "all: {:.1} µs a row",
        started.elapsed().as_secs_f64() * 1e6 / a.rows as f64
    );
    Ok(())
}

//! The test backend switch (`TOLLGATE_TEST_BACKEND`, see
//! `tollgate_testkit::backend`) for `scripts/test`:
//!
//! - `tollgate-test-backend drop-stale` drops the test databases that killed
//!   runs left behind (older than `postgres_db::STALE_AFTER`).
//! - `tollgate-test-backend run CMD [ARG…]` runs `CMD` with the storage the
//!   switch selects in its environment (`TOLLGATE_DATABASE_URL`,
//!   `TOLLGATE_REDIS_URL`, `TOLLGATE_REDIS_KEY_PREFIX` on `postgres`;
//!   nothing on `sqlite`), drops that storage afterwards, and exits with
//!   `CMD`'s status.

use std::process::{Command, ExitCode};
use tollgate_testkit::backend::Storage;
use tollgate_testkit::postgres_db;

const USAGE: &str = "usage: tollgate-test-backend drop-stale | run CMD [ARG...]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, [])) if cmd == "drop-stale" => match postgres_db::drop_stale().await {
            Ok(dropped) => {
                println!("dropped {} stale test database(s)", dropped.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tollgate-test-backend: {e}");
                ExitCode::FAILURE
            }
        },
        Some((cmd, [program, rest @ ..])) if cmd == "run" => {
            let storage = Storage::create().await;
            let status = Command::new(program).args(rest).envs(storage.env()).status();
            drop(storage);
            match status {
                Ok(s) => ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)),
                Err(e) => {
                    eprintln!("tollgate-test-backend: {program}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

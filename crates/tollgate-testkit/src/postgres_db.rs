//! A throwaway PostgreSQL database for tests: each test creates its own
//! (`tollgate_test_<unix seconds>_<random>`) and drops it afterwards, with
//! [`TestDb::drop_db`] or, failing that, when the `TestDb` is dropped. A run
//! that is killed leaves its databases behind: [`drop_stale`] drops those
//! created more than [`STALE_AFTER`] ago (`scripts/test` calls it, through
//! the `tollgate-test-dbs` binary, before the PostgreSQL leg). The server is
//! `TOLLGATE_TEST_POSTGRES` (a URL without a database), default
//! `postgres://postgres@127.0.0.1:5432` (the machine's, trust auth).

use sqlx::postgres::PgPool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every test database's name starts with this.
pub const PREFIX: &str = "tollgate_test_";

/// A test database older than this belongs to a run that was killed (no
/// single test runs this long), so [`drop_stale`] may drop it while other
/// runs on the same server go on.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The PostgreSQL server tests use, without a database.
pub fn server() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A freshly created database, dropped by [`TestDb::drop_db`] or on drop.
pub struct TestDb {
    name: String,
    /// Its URL.
    pub url: String,
    dropped: bool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!(
            "{PREFIX}{}_{:016x}",
            unix_secs(SystemTime::now()),
            rand::random::<u64>()
        );
        let sql = format!("CREATE DATABASE {name}");
        admin(&sql).await.expect(&sql);
        let url = format!("{}/{name}", server());
        TestDb {
            name,
            url,
            dropped: false,
        }
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_db(mut self) {
        let sql = drop_sql(&self.name);
        admin(&sql).await.expect(&sql);
        self.dropped = true;
    }
}

/// Drops the database if [`TestDb::drop_db`] did not: on a thread with a
/// runtime of its own, since this may run inside the test's runtime. It
/// cannot fail the test (a panic while unwinding would abort), so a failure
/// is printed and [`drop_stale`] catches the database later.
impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let sql = drop_sql(&self.name);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(admin(&sql)).map_err(std::io::Error::other)
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database {} not dropped: {e}", self.name),
            Err(_) => eprintln!("test database {} not dropped: the dropping thread panicked", self.name),
        }
    }
}

fn drop_sql(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// When the test database `name` was created, from its name; `None` for a
/// name not made by [`TestDb::create`].
fn created_at(name: &str) -> Option<SystemTime> {
    let (secs, rand) = name.strip_prefix(PREFIX)?.split_once('_')?;
    if rand.len() != 16 || !rand.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?))
}

/// Whether a test database called `name` is stale at `now`.
fn is_stale(name: &str, now: SystemTime) -> bool {
    created_at(name)
        .and_then(|at| now.duration_since(at).ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// Drops every test database on [`server`] created more than
/// [`STALE_AFTER`] ago (left by killed runs), and returns their names.
pub async fn drop_stale() -> Result<Vec<String>, sqlx::Error> {
    let pool = PgPool::connect(&format!("{}/postgres", server())).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind(PREFIX)
        .fetch_all(&pool)
        .await?;
    let now = SystemTime::now();
    let mut dropped = Vec::new();
    for name in names.into_iter().filter(|n| is_stale(n, now)) {
        sqlx::query(&drop_sql(&name)).execute(&pool).await?;
        dropped.push(name);
    }
    pool.close().await;
    Ok(dropped)
}

/// Runs one statement on the server's `postgres` database.
async fn admin(sql: &str) -> Result<(), sqlx::Error> {
    let pool = PgPool::connect(&format!("{}/postgres", server())).await?;
    let done = sqlx::query(sql).execute(&pool).await;
    pool.close().await;
    done.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(name: &str) -> bool {
        let pool = PgPool::connect(&format!("{}/postgres", server())).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        n == 1
    }

    #[test]
    fn only_names_made_here_and_older_than_the_limit_are_stale() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = 1_800_000_000 - STALE_AFTER.as_secs() - 1;
        let fresh = 1_800_000_000 - STALE_AFTER.as_secs() + 60;
        assert!(is_stale(&format!("{PREFIX}{old}_00000000deadbeef"), now));
        assert!(!is_stale(&format!("{PREFIX}{fresh}_00000000deadbeef"), now));
        // Not made by `create`: another project's, or a hand-made one.
        assert!(!is_stale(&format!("{PREFIX}{old}_x"), now));
        assert!(!is_stale(&format!("{PREFIX}{old}_00000000deadbeeg"), now));
        assert!(!is_stale(&format!("{PREFIX}deadbeefdeadbeef"), now));
        assert!(!is_stale("postgres", now));
        // A clock behind the name: not stale.
        assert!(!is_stale(&format!("{PREFIX}1900000000_00000000deadbeef"), now));
    }

    #[tokio::test]
    async fn a_test_db_is_dropped_when_dropped_without_drop_db() {
        let db = TestDb::create().await;
        let name = db.name.clone();
        assert!(exists(&name).await);
        // Held open, as a server would: the drop closes it.
        let pool = PgPool::connect(&db.url).await.unwrap();
        drop(db);
        assert!(!exists(&name).await);
        drop(pool);
    }

    #[tokio::test]
    async fn drop_stale_drops_old_test_databases_and_keeps_fresh_ones() {
        let old = unix_secs(SystemTime::now()) - STALE_AFTER.as_secs() - 5;
        let stale = format!("{PREFIX}{old}_{:016x}", rand::random::<u64>());
        admin(&format!("CREATE DATABASE {stale}")).await.unwrap();
        let fresh = TestDb::create().await;
        let dropped = drop_stale().await.unwrap();
        assert!(dropped.contains(&stale), "{dropped:?}");
        assert!(!exists(&stale).await);
        assert!(exists(&fresh.name).await);
        fresh.drop_db().await;
    }
}

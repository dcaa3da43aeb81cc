//! The test backend switch: `TOLLGATE_TEST_BACKEND` selects where every test
//! server of this run keeps its data, and this module is the one place that
//! reads it.
//!
//! - `sqlite` (the default, also when unset or empty): the embedded SQLite
//!   database in the test's data directory, limit counters in process.
//! - `postgres`: each test server gets a PostgreSQL database of its own
//!   ([`TestDb`], dropped with its [`Storage`]) and Redis
//!   (`TOLLGATE_TEST_REDIS`, default `redis://127.0.0.1:6379`) under a key
//!   prefix of its own, whose keys are deleted with its `Storage`.
//!
//! Any other value fails the test that asks, naming the variable.

use crate::postgres_db::TestDb;

/// The variable that selects the backend.
pub const SWITCH: &str = "TOLLGATE_TEST_BACKEND";

/// Where this run's test servers keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory, counters in process.
    Sqlite,
    /// PostgreSQL and Redis.
    Postgres,
}

impl Backend {
    /// The backend [`SWITCH`] names.
    pub fn current() -> Backend {
        match Backend::parse(std::env::var(SWITCH).ok().as_deref()) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse(value: Option<&str>) -> Result<Backend, String> {
        match value.map(str::trim).unwrap_or("") {
            "" | "sqlite" => Ok(Backend::Sqlite),
            "postgres" => Ok(Backend::Postgres),
            other => Err(format!("{SWITCH}={other:?}: use sqlite (the default) or postgres")),
        }
    }
}

/// The Redis server tests share: `TOLLGATE_TEST_REDIS`, default
/// `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis key prefix of a test's own, and the one place that deletes test
/// keys: dropping it deletes every key under the prefix (also while the test
/// unwinds from a failure). Every test that keeps keys in the shared Redis
/// ([`redis_url`]) takes its prefix from one of these.
pub struct RedisKeys {
    url: String,
    prefix: String,
}

impl RedisKeys {
    /// A fresh prefix (`tgtest:<random>:`) in the shared Redis.
    pub fn new() -> RedisKeys {
        RedisKeys::on(&redis_url())
    }

    /// A fresh prefix (`tgtest:<random>:`) in the Redis at `url`.
    pub fn on(url: &str) -> RedisKeys {
        RedisKeys {
            url: url.to_owned(),
            prefix: format!("tgtest:{:016x}{:016x}:", rand::random::<u64>(), rand::random::<u64>()),
        }
    }

    /// The Redis the keys are in: the `redis_url` setting.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The prefix: the `redis_key_prefix` setting. It holds no glob
    /// characters.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Default for RedisKeys {
    fn default() -> RedisKeys {
        RedisKeys::new()
    }
}

/// Deletes the keys under the prefix. A failure is printed, not raised:
/// this may run while a test unwinds. On a thread of its own, so that it
/// blocks no async runtime it is dropped in.
impl Drop for RedisKeys {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}*", self.prefix));
        let done = std::thread::spawn(move || delete_keys(&url, &pattern)).join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test Redis keys {}* not deleted: {e}", self.prefix),
            Err(_) => eprintln!(
                "test Redis keys {}* not deleted: the deleting thread panicked",
                self.prefix
            ),
        }
    }
}

/// Deletes every key matching `pattern` (SCAN, then UNLINK).
fn delete_keys(url: &str, pattern: &str) -> redis::RedisResult<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let keys: Vec<String> = redis::Commands::scan_match(&mut conn, pattern)?.collect();
    for batch in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(batch).query::<()>(&mut conn)?;
    }
    Ok(())
}

/// One test server's data on this run's [`Backend`]. Keep it as long as the
/// server runs; dropping it drops the database and the Redis keys.
pub struct Storage {
    db: Option<TestDb>,
    redis: Option<RedisKeys>,
}

impl Storage {
    /// Creates the storage [`Backend::current`] asks for.
    pub async fn create() -> Storage {
        match Backend::current() {
            Backend::Sqlite => Storage::embedded(),
            Backend::Postgres => Storage {
                db: Some(TestDb::create().await),
                redis: Some(RedisKeys::new()),
            },
        }
    }

    /// The embedded SQLite database and counters in process, whatever the
    /// switch says (for a test that sets up its backend itself).
    pub fn embedded() -> Storage {
        Storage { db: None, redis: None }
    }

    /// The `database_url` setting: `None` for the embedded SQLite database.
    pub fn database_url(&self) -> Option<&str> {
        self.db.as_ref().map(|db| db.url.as_str())
    }

    /// The `redis_url` and `redis_key_prefix` settings: `None` for counters
    /// in process.
    pub fn redis(&self) -> Option<(&str, &str)> {
        self.redis.as_ref().map(|r| (r.url(), r.prefix()))
    }

    /// The same settings as `TOLLGATE_*` variables, for a `tollgate` process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(url) = self.database_url() {
            vars.push(("TOLLGATE_DATABASE_URL", url.to_owned()));
        }
        if let Some((url, prefix)) = self.redis() {
            vars.push(("TOLLGATE_REDIS_URL", url.to_owned()));
            vars.push(("TOLLGATE_REDIS_KEY_PREFIX", prefix.to_owned()));
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_takes_sqlite_or_postgres_and_names_itself_otherwise() {
        assert_eq!(Backend::parse(None), Ok(Backend::Sqlite));
        assert_eq!(Backend::parse(Some("")), Ok(Backend::Sqlite));
        assert_eq!(Backend::parse(Some("sqlite")), Ok(Backend::Sqlite));
        assert_eq!(Backend::parse(Some(" postgres\n")), Ok(Backend::Postgres));
        let e = Backend::parse(Some("mysql")).unwrap_err();
        assert!(e.contains(SWITCH) && e.contains("mysql"), "{e}");
    }

    #[test]
    fn dropping_redis_keys_deletes_its_keys_only() {
        let url = redis_url();
        let mut conn = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let mine = RedisKeys::new();
        let other = RedisKeys::new();
        let (mine_prefix, other_prefix) = (mine.prefix().to_owned(), other.prefix().to_owned());
        assert_ne!(mine_prefix, other_prefix);
        let mut set = vec![format!("{mine_prefix}b{{ws:1}}"), format!("{other_prefix}a")];
        // More than one SCAN page and one UNLINK batch.
        set.extend((0..2500).map(|i| format!("{mine_prefix}{i}")));
        for k in &set {
            redis::cmd("SET").arg(k).arg(1).query::<()>(&mut conn).unwrap();
        }
        drop(Storage {
            db: None,
            redis: Some(mine),
        });
        let left: Vec<String> = redis::cmd("KEYS").arg("tgtest:*").query(&mut conn).unwrap();
        assert!(!left.iter().any(|k| k.starts_with(&mine_prefix)), "{left:?}");
        assert!(left.contains(&format!("{other_prefix}a")));
        drop(other);
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{other_prefix}*"))
            .query(&mut conn)
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}

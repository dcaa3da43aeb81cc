//! A throwaway PostgreSQL database for tests: each test creates its own
//! (`tollgate_test_<random>`) and drops it afterwards. The server is
//! `TOLLGATE_TEST_POSTGRES` (a URL without a database), default
//! `postgres://postgres@127.0.0.1:5432` (the machine's, trust auth).

use sqlx::postgres::PgPool;

/// The PostgreSQL server tests use, without a database.
pub fn server() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A freshly created database, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("tollgate_test_{:016x}", rand::random::<u64>());
        admin(&format!("CREATE DATABASE {name}")).await;
        let url = format!("{}/{name}", server());
        TestDb { name, url }
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_db(self) {
        admin(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).await;
    }
}

/// Runs one statement on the server's `postgres` database.
async fn admin(sql: &str) {
    let pool = PgPool::connect(&format!("{}/postgres", server()))
        .await
        .expect("the test PostgreSQL server");
    sqlx::query(sql).execute(&pool).await.expect(sql);
    pool.close().await;
}

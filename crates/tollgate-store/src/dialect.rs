//! What the request log and analytics need to know about a backend's SQL
//! dialect and driver, so that their query planning, SQL building and row
//! decoding are written once and compiled per backend ([`Backend`] is
//! implemented for SQLite and PostgreSQL). Statements whose shape differs
//! altogether (the request-log insert's roll-up write, `consumed_since`)
//! stay per-backend functions.

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Database, Pool, Postgres, QueryBuilder, Row, Sqlite};
use std::future::Future;

/// `items` in pieces for multi-row statements: as many of `max` (a power of
/// two) as fit, then the rest in decreasing powers of two. Such a
/// statement's SQL depends on its row count, and each distinct text is
/// prepared anew and kept in its connection's statement cache: with these
/// sizes a writer uses at most log2(`max`) + 1 texts, however its batches
/// vary, instead of one per batch size (each prepared at a cost that grows
/// with its rows, and each cached, large, for the connection's life).
pub(crate) fn statement_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// [`Backend`]'s `add_*` methods: the same on every backend (each encodes
/// the value its own way).
macro_rules! adds {
    () => {
        fn add_i64(args: &mut Self::Arguments<'_>, v: i64) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn add_str<'a>(args: &mut Self::Arguments<'a>, v: &'a str) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn add_bool(args: &mut Self::Arguments<'_>, v: bool) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn add_opt_str<'a>(args: &mut Self::Arguments<'a>, v: Option<&'a str>) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn add_opt_i64(args: &mut Self::Arguments<'_>, v: Option<i64>) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn add_json(args: &mut Self::Arguments<'_>, v: Option<String>) -> Result<(), BoxDynError> {
            args.add(v)
        }
        fn query_with<'a>(sql: &'a str, args: Self::Arguments<'a>) -> Query<'a, Self, Self::Arguments<'a>> {
            sqlx::query_with(sql, args)
        }
    };
}

/// A backend the shared request-log and analytics code runs on.
pub(crate) trait Backend: Database + Sized {
    /// Binds an integer.
    fn bind_i64(qb: &mut QueryBuilder<'_, Self>, v: i64);
    /// Binds a string.
    fn bind_str<'a>(qb: &mut QueryBuilder<'a, Self>, v: &'a str);
    /// Binds a blob.
    fn bind_bytes(qb: &mut QueryBuilder<'_, Self>, v: Vec<u8>);
    /// The JSON column `col`, read as text.
    fn json_text(col: &str) -> String;

    /// Appends the placeholder of a statement's `n`th value (from 1), for
    /// SQL text built once and bound with [`Backend::add_i64`] and the
    /// others: `?`, or `$n`.
    fn placeholder(sql: &mut String, n: usize);
    /// [`Backend::placeholder`] of a JSON document given as text, for a
    /// JSON column (PostgreSQL's JSONB needs the cast).
    fn json_placeholder(sql: &mut String, n: usize);
    /// Adds an integer to a statement's values.
    fn add_i64(args: &mut Self::Arguments<'_>, v: i64) -> Result<(), BoxDynError>;
    /// Adds a string.
    fn add_str<'a>(args: &mut Self::Arguments<'a>, v: &'a str) -> Result<(), BoxDynError>;
    /// Adds a flag.
    fn add_bool(args: &mut Self::Arguments<'_>, v: bool) -> Result<(), BoxDynError>;
    /// Adds an optional string.
    fn add_opt_str<'a>(args: &mut Self::Arguments<'a>, v: Option<&'a str>) -> Result<(), BoxDynError>;
    /// Adds an optional integer.
    fn add_opt_i64(args: &mut Self::Arguments<'_>, v: Option<i64>) -> Result<(), BoxDynError>;
    /// Adds a JSON document given as text.
    fn add_json(args: &mut Self::Arguments<'_>, v: Option<String>) -> Result<(), BoxDynError>;
    /// The statement `sql` with the values `args`.
    fn query_with<'a>(sql: &'a str, args: Self::Arguments<'a>) -> Query<'a, Self, Self::Arguments<'a>>;

    /// A count column read as an integer of at least 0, whatever a damaged
    /// row holds (SQLite's columns are not typed; PostgreSQL's are BIGINT).
    fn count(col: &str) -> String;
    /// `GREATEST(a, b)`.
    fn greatest(a: &str, b: &str) -> String;
    /// `LEAST(a, b)`.
    fn least(a: &str, b: &str) -> String;
    /// A column as stored, read as an integer.
    fn int(col: &str) -> String;
    /// An integer aggregate (`SUM`, `COUNT`, `MAX`), read back exactly with
    /// [`Backend::get_exact`].
    fn exact(agg: &str) -> String;
    /// The texts of `expr` joined by commas.
    fn text_agg(expr: &str) -> String;
    /// The distinct values of the text `expr`, hex-encoded (so that no value
    /// can be mistaken for the separator) and joined by commas.
    fn distinct_hex_agg(expr: &str) -> String;
    /// The blobs of `col`, hex-encoded and joined by commas.
    fn blob_hex_agg(col: &str) -> String;
    /// Pushes the request's metadata value under `key`, as text (NULL when
    /// absent).
    fn push_metadata<'a>(qb: &mut QueryBuilder<'a, Self>, key: &'a str);

    fn get_i64(r: &Self::Row, i: usize) -> Result<i64, sqlx::Error>;
    fn get_opt_i64(r: &Self::Row, i: usize) -> Result<Option<i64>, sqlx::Error>;
    fn get_opt_str(r: &Self::Row, i: usize) -> Result<Option<String>, sqlx::Error>;
    fn get_bool(r: &Self::Row, i: usize) -> Result<bool, sqlx::Error>;
    fn get_opt_bytes(r: &Self::Row, i: usize) -> Result<Option<&[u8]>, sqlx::Error>;
    /// A [`Backend::exact`] aggregate; `None` for a sum over no rows.
    fn get_exact(r: &Self::Row, i: usize) -> Result<Option<i128>, sqlx::Error>;

    /// Runs `qb` and returns its rows.
    fn fetch_all<'a>(
        pool: &Pool<Self>,
        qb: QueryBuilder<'a, Self>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;
    /// Runs `query` on `conn` (a transaction's, say) and returns its rows.
    fn fetch_all_on<'a>(
        conn: &mut Self::Connection,
        query: Query<'a, Self, Self::Arguments<'a>>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;
}

impl Backend for Sqlite {
    adds!();
    fn placeholder(sql: &mut String, _: usize) {
        sql.push('?');
    }
    fn json_placeholder(sql: &mut String, _: usize) {
        sql.push('?');
    }
    fn bind_i64(qb: &mut QueryBuilder<'_, Self>, v: i64) {
        qb.push_bind(v);
    }
    fn bind_str<'a>(qb: &mut QueryBuilder<'a, Self>, v: &'a str) {
        qb.push_bind(v);
    }
    fn bind_bytes(qb: &mut QueryBuilder<'_, Self>, v: Vec<u8>) {
        qb.push_bind(v);
    }
    fn json_text(col: &str) -> String {
        col.to_owned()
    }
    fn count(col: &str) -> String {
        format!("max(CAST({col} AS INTEGER), 0)")
    }
    fn greatest(a: &str, b: &str) -> String {
        format!("max({a}, {b})")
    }
    fn least(a: &str, b: &str) -> String {
        format!("min({a}, {b})")
    }
    fn int(col: &str) -> String {
        format!("CAST({col} AS INTEGER)")
    }
    fn exact(agg: &str) -> String {
        // 64-bit: a SUM that overflows is an error, and the caller then
        // reads row by row.
        agg.to_owned()
    }
    fn text_agg(expr: &str) -> String {
        format!("group_concat({expr})")
    }
    fn distinct_hex_agg(expr: &str) -> String {
        format!("group_concat(DISTINCT hex({expr}))")
    }
    fn blob_hex_agg(col: &str) -> String {
        format!("group_concat(hex({col}))")
    }
    fn push_metadata<'a>(qb: &mut QueryBuilder<'a, Self>, key: &'a str) {
        // json_extract takes a JSON path; the key is quoted so any string is
        // safe. It gives numbers as numbers: cast to text.
        qb.push("CAST(json_extract(metadata, ")
            .push_bind(format!("$.{}", serde_json::Value::String(key.to_owned())))
            .push(") AS TEXT)");
    }
    fn get_i64(r: &SqliteRow, i: usize) -> Result<i64, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_i64(r: &SqliteRow, i: usize) -> Result<Option<i64>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_str(r: &SqliteRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_bool(r: &SqliteRow, i: usize) -> Result<bool, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_bytes(r: &SqliteRow, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_exact(r: &SqliteRow, i: usize) -> Result<Option<i128>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(i)?.map(i128::from))
    }
    async fn fetch_all<'a>(pool: &Pool<Self>, mut qb: QueryBuilder<'a, Self>) -> Result<Vec<SqliteRow>, sqlx::Error> {
        qb.build().fetch_all(pool).await
    }
    async fn fetch_all_on<'a>(
        conn: &mut sqlx::SqliteConnection,
        query: Query<'a, Self, SqliteArguments<'a>>,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        query.fetch_all(conn).await
    }
}

impl Backend for Postgres {
    adds!();
    fn placeholder(sql: &mut String, n: usize) {
        sql.push('$');
        sql.push_str(&n.to_string());
    }
    fn json_placeholder(sql: &mut String, n: usize) {
        sql.push_str("CAST(");
        Self::placeholder(sql, n);
        sql.push_str(" AS JSONB)");
    }
    fn bind_i64(qb: &mut QueryBuilder<'_, Self>, v: i64) {
        qb.push_bind(v);
    }
    fn bind_str<'a>(qb: &mut QueryBuilder<'a, Self>, v: &'a str) {
        qb.push_bind(v);
    }
    fn bind_bytes(qb: &mut QueryBuilder<'_, Self>, v: Vec<u8>) {
        qb.push_bind(v);
    }
    fn json_text(col: &str) -> String {
        format!("CAST({col} AS TEXT)")
    }
    fn count(col: &str) -> String {
        format!("GREATEST({col}, 0)")
    }
    fn greatest(a: &str, b: &str) -> String {
        format!("GREATEST({a}, {b})")
    }
    fn least(a: &str, b: &str) -> String {
        format!("LEAST({a}, {b})")
    }
    fn int(col: &str) -> String {
        col.to_owned()
    }
    fn exact(agg: &str) -> String {
        // SUM of BIGINT is NUMERIC (exact, never overflows): read as text.
        format!("CAST({agg} AS TEXT)")
    }
    fn text_agg(expr: &str) -> String {
        format!("string_agg({expr}, ',')")
    }
    fn distinct_hex_agg(expr: &str) -> String {
        format!("string_agg(DISTINCT encode(convert_to({expr}, 'UTF8'), 'hex'), ',')")
    }
    fn blob_hex_agg(col: &str) -> String {
        format!("string_agg(encode({col}, 'hex'), ',')")
    }
    fn push_metadata<'a>(qb: &mut QueryBuilder<'a, Self>, key: &'a str) {
        qb.push("(metadata ->> ").push_bind(key).push(")");
    }
    fn get_i64(r: &PgRow, i: usize) -> Result<i64, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_i64(r: &PgRow, i: usize) -> Result<Option<i64>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_str(r: &PgRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_bool(r: &PgRow, i: usize) -> Result<bool, sqlx::Error> {
        r.try_get(i)
    }
    fn get_opt_bytes(r: &PgRow, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        r.try_get(i)
    }
    fn get_exact(r: &PgRow, i: usize) -> Result<Option<i128>, sqlx::Error> {
        match r.try_get::<Option<String>, _>(i)? {
            None => Ok(None),
            // Beyond i128 (not reachable from BIGINT rows): saturate.
            Some(s) => Ok(Some(s.parse::<i128>().unwrap_or(if s.starts_with('-') {
                i128::MIN
            } else {
                i128::MAX
            }))),
        }
    }
    async fn fetch_all<'a>(pool: &Pool<Self>, mut qb: QueryBuilder<'a, Self>) -> Result<Vec<PgRow>, sqlx::Error> {
        qb.build().fetch_all(pool).await
    }
    async fn fetch_all_on<'a>(
        conn: &mut sqlx::PgConnection,
        query: Query<'a, Self, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        query.fetch_all(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::statement_chunks;

    #[test]
    fn statement_chunks_come_in_few_sizes_and_keep_every_item_in_order() {
        let sizes = |n: usize| -> Vec<usize> {
            let items: Vec<usize> = (0..n).collect();
            let pieces: Vec<&[usize]> = statement_chunks(&items, 64).collect();
            assert_eq!(pieces.concat(), items, "{n} items in order");
            pieces.iter().map(|p| p.len()).collect()
        };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(16), [16]);
        assert_eq!(sizes(17), [16, 1]);
        assert_eq!(sizes(63), [32, 16, 8, 4, 2, 1]);
        assert_eq!(sizes(64), [64]);
        assert_eq!(sizes(200), [64, 64, 64, 8]);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..=600 {
            seen.extend(sizes(n));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 64]);
    }
}

//! Copying the embedded SQLite database into PostgreSQL (`tollgate migrate
//! --to postgres://…`).
//!
//! Every table is copied as stored: control-plane documents (sealed secrets
//! stay sealed under the same master key; the master key's fingerprint comes
//! along in `meta`), config versions, the audit trail, the request log with
//! every column, its roll-ups and the alert outbox. Each table's columns are
//! listed once ([`TABLES`]) and that list drives both the read and the write.
//!
//! The source is read in one SQLite transaction (one consistent snapshot,
//! even while a server writes to it); the target is written in one
//! PostgreSQL transaction that first checks it holds nothing, so a copy lands
//! whole or not at all, and never into a database already in use.

use crate::db::Db;
use crate::{Store, StoreError};
use futures::TryStreamExt;
use sqlx::postgres::Postgres;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row};

/// How a column is read from SQLite and bound into PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TEXT (nullable where the schema allows).
    Text,
    /// INTEGER / BIGINT.
    Int,
    /// SQLite 0/1 INTEGER → PostgreSQL BOOLEAN.
    Bool,
    /// BLOB / BYTEA.
    Blob,
    /// JSON text → PostgreSQL JSONB.
    Json,
}

/// One table to copy: its name, the order rows are read in (insertion order
/// where the target numbers rows itself), and its columns.
struct Table {
    name: &'static str,
    order: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// A table the target's migrations already fill (with defaults that the
    /// source's values replace); it does not make the target "non-empty".
    preset: Option<&'static str>,
}

use Kind::{Blob, Bool, Int, Json, Text};

/// Every table, parents before children. Identity columns (`seq`) are left
/// out: PostgreSQL numbers the rows again, in the order they are copied.
const TABLES: &[Table] = &[
    Table {
        name: "meta",
        order: "key",
        columns: &[("key", Text), ("value", Text)],
        preset: None,
    },
    Table {
        name: "workspaces",
        order: "rowid",
        columns: &[("id", Text), ("slug", Text), ("data", Text)],
        preset: None,
    },
    Table {
        name: "integrations",
        order: "rowid",
        columns: &[("id", Text), ("slug", Text), ("workspace_id", Text), ("data", Text)],
        preset: None,
    },
    Table {
        name: "api_keys",
        order: "rowid",
        columns: &[("id", Text), ("key_hash", Text), ("workspace_id", Text), ("data", Text)],
        preset: None,
    },
    Table {
        name: "providers",
        order: "rowid",
        columns: &[
            ("id", Text),
            ("workspace_id", Text),
            ("integration_id", Text),
            ("slug", Text),
            ("data", Text),
        ],
        preset: None,
    },
    Table {
        name: "configs",
        order: "rowid",
        columns: &[("id", Text), ("slug", Text), ("workspace_id", Text), ("data", Text)],
        preset: None,
    },
    Table {
        name: "config_versions",
        order: "rowid",
        columns: &[
            ("version_id", Text),
            ("config_id", Text),
            ("created_at_ms", Int),
            ("config", Text),
        ],
        preset: None,
    },
    Table {
        name: "audit_logs",
        order: "seq",
        columns: &[
            ("id", Text),
            ("at_ms", Int),
            ("actor", Text),
            ("action", Text),
            ("object_type", Text),
            ("object_id", Text),
            ("details", Text),
        ],
        preset: None,
    },
    Table {
        name: "usage_log",
        order: "seq",
        columns: &[
            ("id", Text),
            ("created_at_ms", Int),
            ("trace_id", Text),
            ("workspace_id", Text),
            ("api_key_id", Text),
            ("integration_id", Text),
            ("integration_slug", Text),
            ("provider_slug", Text),
            ("ai_provider_id", Text),
            ("model", Text),
            ("endpoint", Text),
            ("status_code", Int),
            ("error_type", Text),
            ("refusal", Text),
            ("streamed", Bool),
            ("cancelled", Bool),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("cached_tokens", Int),
            ("total_tokens", Int),
            ("tokens_estimated", Bool),
            ("cost_picos", Int),
            ("latency_us", Int),
            ("ttft_us", Int),
            ("upstream_latency_us", Int),
            ("metadata", Json),
            ("request_body", Text),
            ("response_body", Text),
            ("target_path", Text),
            ("retry_attempt", Int),
            ("attempt", Int),
            ("is_final", Bool),
            ("latency_bucket", Int),
            ("ttft_bucket", Int),
            ("overhead_bucket", Int),
        ],
        preset: None,
    },
    Table {
        name: "usage_daily",
        order: "day_ms, workspace_id, api_key_id, provider_slug, ai_provider_id, model, status_code",
        columns: &[
            ("day_ms", Int),
            ("workspace_id", Text),
            ("api_key_id", Text),
            ("provider_slug", Text),
            ("ai_provider_id", Text),
            ("model", Text),
            ("status_code", Int),
            ("requests", Int),
            ("successful", Int),
            ("status_4xx", Int),
            ("status_5xx", Int),
            ("upstream_errors", Int),
            ("timeouts", Int),
            ("refused_rate_limit", Int),
            ("refused_budget", Int),
            ("refused_policy", Int),
            ("refused_auth", Int),
            ("refused_permission", Int),
            ("cancelled", Int),
            ("streamed", Int),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("cached_tokens", Int),
            ("total_tokens", Int),
            ("cost_picos", Int),
            ("priced_requests", Int),
            ("priced_tokens", Int),
            ("latency_sum_us", Int),
            ("latency_max_us", Int),
            ("gen_tokens", Int),
            ("gen_us", Int),
            ("attempts", Int),
            ("latency_hist", Blob),
            ("ttft_hist", Blob),
            ("overhead_hist", Blob),
        ],
        preset: None,
    },
    Table {
        name: "usage_minute",
        order: "minute_ms, workspace_id",
        columns: &[("minute_ms", Int), ("workspace_id", Text), ("requests", Int)],
        preset: None,
    },
    Table {
        name: "analytics_meta",
        order: "key",
        columns: &[("key", Text), ("value", Int)],
        preset: Some(" ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
    },
    Table {
        name: "alert_outbox",
        order: "rowid",
        columns: &[
            ("id", Text),
            ("dedupe_key", Text),
            ("kind", Text),
            ("limit_id", Text),
            ("workspace_id", Text),
            ("payload", Text),
            ("created_at", Int),
            ("sent_at", Int),
            ("email_state", Text),
            ("email_attempts", Int),
            ("email_next_at", Int),
            ("email_error", Text),
            ("email_done_at", Int),
            ("webhook_state", Text),
            ("webhook_attempts", Int),
            ("webhook_next_at", Int),
            ("webhook_error", Text),
            ("webhook_done_at", Int),
        ],
        preset: None,
    },
];

/// Rows per INSERT (PostgreSQL takes at most 65535 bound values).
const BATCH_VALUES: usize = 30_000;

/// How many rows of one table a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub table: &'static str,
    pub rows: u64,
}

/// One column's value, as read from SQLite.
#[derive(Debug)]
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Blob(Option<Vec<u8>>),
}

impl Store {
    /// Copies everything in this store (the embedded SQLite database) into
    /// `target` (a migrated PostgreSQL database that holds nothing yet), in
    /// one target transaction. Refuses a target that holds any record, meta
    /// entry, log row or roll-up, naming the tables that do.
    pub async fn copy_to(&self, target: &Store) -> Result<Vec<Copied>, StoreError> {
        let Db::Sqlite(source) = &self.db else {
            return Err(StoreError::Unsupported(
                "the source of a copy must be the embedded SQLite database".to_owned(),
            ));
        };
        let Db::Postgres(dest) = &target.db else {
            return Err(StoreError::Unsupported(
                "the target of a copy must be a PostgreSQL database".to_owned(),
            ));
        };
        let mut src = source.begin().await?;
        let mut dst = dest.begin().await?;
        let mut occupied = Vec::new();
        for t in TABLES.iter().filter(|t| t.preset.is_none()) {
            let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.name))
                .fetch_one(&mut *dst)
                .await?;
            if any {
                occupied.push(t.name);
            }
        }
        if !occupied.is_empty() {
            return Err(StoreError::NotEmpty(occupied.join(", ")));
        }
        let mut copied = Vec::with_capacity(TABLES.len());
        for t in TABLES {
            // The alert outbox exists in SQLite only once a server has run.
            let exists: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1")
                    .bind(t.name)
                    .fetch_one(&mut *src)
                    .await?;
            let mut rows = 0u64;
            if exists > 0 {
                let names: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
                let select = format!("SELECT {} FROM {} ORDER BY {}", names.join(", "), t.name, t.order);
                let per_batch = (BATCH_VALUES / t.columns.len()).max(1);
                let mut batch: Vec<Vec<Value>> = Vec::with_capacity(per_batch);
                let mut stream = sqlx::query(&select).fetch(&mut *src);
                while let Some(row) = stream.try_next().await? {
                    batch.push(read_row(t, &row)?);
                    if batch.len() == per_batch {
                        write_batch(&mut dst, t, &names, &batch).await?;
                        rows += batch.len() as u64;
                        batch.clear();
                    }
                }
                drop(stream);
                if !batch.is_empty() {
                    write_batch(&mut dst, t, &names, &batch).await?;
                    rows += batch.len() as u64;
                }
            }
            copied.push(Copied { table: t.name, rows });
        }
        dst.commit().await?;
        src.rollback().await?;
        Ok(copied)
    }
}

fn read_row(t: &Table, row: &SqliteRow) -> Result<Vec<Value>, StoreError> {
    let corrupt = |col: &str, e: sqlx::Error| StoreError::Corrupt("row", format!("{}.{col}: {e}", t.name));
    t.columns
        .iter()
        .enumerate()
        .map(|(i, (col, kind))| {
            Ok(match kind {
                Text | Json => Value::Text(row.try_get::<Option<String>, _>(i).map_err(|e| corrupt(col, e))?),
                Int => Value::Int(row.try_get::<Option<i64>, _>(i).map_err(|e| corrupt(col, e))?),
                Bool => Value::Bool(
                    row.try_get::<Option<i64>, _>(i)
                        .map_err(|e| corrupt(col, e))?
                        .unwrap_or(0)
                        != 0,
                ),
                Blob => Value::Blob(row.try_get::<Option<Vec<u8>>, _>(i).map_err(|e| corrupt(col, e))?),
            })
        })
        .collect()
}

async fn write_batch(
    dst: &mut sqlx::Transaction<'static, Postgres>,
    t: &Table,
    names: &[&str],
    batch: &[Vec<Value>],
) -> Result<(), StoreError> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!("INSERT INTO {} ({}) ", t.name, names.join(", ")));
    qb.push_values(batch, |mut b, row| {
        for ((_, kind), v) in t.columns.iter().zip(row) {
            match v {
                // PostgreSQL text cannot hold NUL characters (nor JSONB
                // `\u0000`): stored with U+FFFD, as the request-log writer does.
                Value::Text(s) if *kind == Json => {
                    b.push("CAST(")
                        .push_bind_unseparated(s.as_deref().map(json_without_nul))
                        .push_unseparated(" AS JSONB)");
                }
                Value::Text(s) => {
                    b.push_bind(s.as_deref().map(|s| s.replace('\0', "\u{FFFD}")));
                }
                Value::Int(n) => {
                    b.push_bind(*n);
                }
                Value::Bool(x) => {
                    b.push_bind(*x);
                }
                Value::Blob(bytes) => {
                    b.push_bind(bytes.clone());
                }
            }
        }
    });
    if let Some(conflict) = t.preset {
        qb.push(conflict);
    }
    qb.build().execute(&mut **dst).await?;
    Ok(())
}

/// `json` with every NUL character (escaped as `\u0000`) replaced by U+FFFD;
/// text that is not JSON is passed on for PostgreSQL to refuse.
fn json_without_nul(json: &str) -> String {
    if !json.contains("\\u0000") && !json.contains('\0') {
        return json.to_owned();
    }
    fn clean(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::String(s) => serde_json::Value::String(s.replace('\0', "\u{FFFD}")),
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(clean).collect()),
            serde_json::Value::Object(m) => serde_json::Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k.replace('\0', "\u{FFFD}"), clean(v)))
                    .collect(),
            ),
            other => other,
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => clean(v).to_string(),
        Err(_) => json.replace('\0', "\u{FFFD}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_loses_only_its_nul_characters() {
        assert_eq!(json_without_nul(r#"{"a":"b"}"#), r#"{"a":"b"}"#);
        assert_eq!(
            json_without_nul(r#"{"a\u0000":"b\u0000c"}"#),
            "{\"a\u{FFFD}\":\"b\u{FFFD}c\"}"
        );
        // An escaped backslash before `u0000` is not a NUL.
        assert_eq!(json_without_nul(r#"{"a":"\\u0000"}"#), r#"{"a":"\\u0000"}"#);
    }

    #[test]
    fn every_table_lists_its_columns_once() {
        for t in TABLES {
            let mut names: Vec<_> = t.columns.iter().map(|(c, _)| c).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), t.columns.len(), "{}", t.name);
        }
    }
}

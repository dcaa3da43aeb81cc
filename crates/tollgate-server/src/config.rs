//! Configuration: built-in defaults, then a TOML file (`--config`), then
//! `TOLLGATE_*` environment variables, then command-line flags; the later one
//! wins. Unknown keys in the file are an error that names the key; a syntax
//! or type error names the line and the key.
//!
//! [`SETTINGS`] is the one list of settings (file key, environment variable,
//! meaning); `serve --help`, the README's table and the example
//! `tollgate.toml` at the repository root follow it, and tests keep them in
//! step.

use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use tollgate_core::secrets::Secret;
use tollgate_store::counters::OnRedisError;
pub use tollgate_store::counters::DEFAULT_REDIS_KEY_PREFIX;

/// Every setting, as the file spells it. All optional: absent means "not set
/// here".
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub master_key: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub log_level: Option<String>,
    pub metrics_listen: Option<String>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub smtp_url: Option<String>,
    pub alert_from: Option<String>,
    pub alert_emails: Option<Vec<String>>,
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_secret: Option<String>,
    pub public_base_path: Option<String>,
    pub redis_url: Option<String>,
    pub redis_cluster: Option<bool>,
    pub redis_key_prefix: Option<String>,
    pub limits_on_redis_error: Option<String>,
    pub log_buffer_records: Option<usize>,
}

/// One setting: its file key, its environment variable and what it does.
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub help: &'static str,
}

/// Every setting, in the order the documentation lists them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        env: "TOLLGATE_LISTEN",
        help: "address to listen on, HOST:PORT (a host name is resolved); default 127.0.0.1:8787",
    },
    Setting {
        key: "data_dir",
        env: "TOLLGATE_DATA_DIR",
        help: "data directory; default ./tollgate-data",
    },
    Setting {
        key: "database_url",
        env: "TOLLGATE_DATABASE_URL",
        help: "postgres://… keeps the control plane, request log and analytics in PostgreSQL (every command, serve included); default: SQLite in DATA_DIR",
    },
    Setting {
        key: "master_key",
        env: "TOLLGATE_MASTER_KEY",
        help: "master key, 64 hex characters, the same on every replica; default: the key file DATA_DIR/master.key",
    },
    Setting {
        key: "max_body_bytes",
        env: "TOLLGATE_MAX_BODY_BYTES",
        help: "largest request body; default 10485760 (10 MiB)",
    },
    Setting {
        key: "request_timeout_ms",
        env: "TOLLGATE_REQUEST_TIMEOUT_MS",
        help: "upstream timeout; default 600000",
    },
    Setting {
        key: "log_level",
        env: "TOLLGATE_LOG_LEVEL",
        help: "error, warn, info, debug or trace; default info (TOLLGATE_LOG takes a full filter)",
    },
    Setting {
        key: "metrics_listen",
        env: "TOLLGATE_METRICS_LISTEN",
        help: "also serve /metrics without a key on this HOST:PORT; default none",
    },
    Setting {
        key: "header_read_timeout_ms",
        env: "TOLLGATE_HEADER_READ_TIMEOUT_MS",
        help: "time a client has to send a request's headers; default 10000",
    },
    Setting {
        key: "idle_timeout_ms",
        env: "TOLLGATE_IDLE_TIMEOUT_MS",
        help: "close a connection with no request in flight after this much silence; default 60000",
    },
    Setting {
        key: "max_connections",
        env: "TOLLGATE_MAX_CONNECTIONS",
        help: "open client connections at most (more wait to be accepted); default 10000",
    },
    Setting {
        key: "smtp_url",
        env: "TOLLGATE_SMTP_URL",
        help: "SMTP server for alert e-mails; default none",
    },
    Setting {
        key: "alert_from",
        env: "TOLLGATE_ALERT_FROM",
        help: "sender of alert e-mails; default tollgate@HOSTNAME",
    },
    Setting {
        key: "alert_emails",
        env: "TOLLGATE_ALERT_EMAILS",
        help: "organisation admins' addresses (comma separated); default none",
    },
    Setting {
        key: "alert_webhook_url",
        env: "TOLLGATE_ALERT_WEBHOOK_URL",
        help: "URL that receives alerts as JSON; default none",
    },
    Setting {
        key: "alert_webhook_secret",
        env: "TOLLGATE_ALERT_WEBHOOK_SECRET",
        help: "HMAC-SHA256 key that signs webhook bodies; default none",
    },
    Setting {
        key: "public_base_path",
        env: "TOLLGATE_PUBLIC_BASE_PATH",
        help: "sub-path the dashboard is served under behind a reverse proxy, e.g. /tollgate; default none (at /)",
    },
    Setting {
        key: "redis_url",
        env: "TOLLGATE_REDIS_URL",
        help:
            "keep the limit counters in this Redis (redis://HOST:PORT), shared by replicas; with redis_cluster, seed nodes of a Redis Cluster, comma separated; default none (in process: on PostgreSQL, then only one replica may run)",
    },
    Setting {
        key: "redis_cluster",
        env: "TOLLGATE_REDIS_CLUSTER",
        help: "true: redis_url names a Redis Cluster (one or more seed nodes, comma separated); default false",
    },
    Setting {
        key: "redis_key_prefix",
        env: "TOLLGATE_REDIS_KEY_PREFIX",
        help: "prefix of every Redis key, so that deployments can share one Redis; default tollgate:",
    },
    Setting {
        key: "limits_on_redis_error",
        env: "TOLLGATE_LIMITS_ON_REDIS_ERROR",
        help: "while Redis is unreachable: closed (answer 503) or open (admit without limits, logged); default closed",
    },
    Setting {
        key: "log_buffer_records",
        env: "TOLLGATE_LOG_BUFFER_RECORDS",
        help: "while PostgreSQL is unreachable: request-log records kept in memory, beyond them appended to DATA_DIR/request-log.spill; default 10000",
    },
];

/// The environment variables, for `serve --help`.
pub fn env_help() -> String {
    let mut s = String::from("Environment (a flag wins over its variable, a variable over the --config file):");
    for set in SETTINGS {
        s.push_str(&format!("\n  {:<32} {}", set.env, set.help));
    }
    s.push('\n');
    s
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the data lives: `database_url`, else SQLite in `data_dir`.
    pub database: tollgate_store::Location,
    /// `TOLLGATE_MASTER_KEY` (64 hex characters); else the key file.
    pub master_key: Option<Secret<String>>,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub log_level: String,
    /// A second listener that serves `/metrics` without a key.
    pub metrics_listen: Option<SocketAddr>,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub smtp_url: Option<Secret<String>>,
    pub alert_from: Option<String>,
    pub alert_emails: Vec<String>,
    pub alert_webhook_url: Option<Secret<String>>,
    pub alert_webhook_secret: Option<Secret<String>>,
    /// The dashboard's path prefix behind a reverse proxy: "" or "/prefix".
    pub public_base_path: String,
    /// Limit counters in Redis; `None`: in process.
    pub redis_url: Option<Secret<String>>,
    /// `redis_url` lists seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub limits_on_redis_error: OnRedisError,
    /// Request-log records kept in memory while PostgreSQL is unreachable.
    pub log_buffer_records: usize,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_DATA_DIR: &str = "./tollgate-data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The levels `log_level` accepts.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl FileConfig {
    pub fn from_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses a file's text; a failure names the line and, when the error
    /// is about a value, its key.
    pub fn from_toml(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', "; ");
            let Some(span) = e.span() else {
                return message;
            };
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line = text[line_start..].lines().next().unwrap_or("");
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"'))
                .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with('['));
            match key {
                // An unknown key's message already names it.
                Some(k) if !message.contains(k) => format!("line {line_no}, key `{k}`: {message}"),
                _ => format!("line {line_no}: {message}"),
            }
        })
    }

    /// Reads `TOLLGATE_*` variables through `get` (the process environment in
    /// production, a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<FileConfig, ConfigError> {
        let parse_num = |key: &'static str| -> Result<Option<u64>, ConfigError> {
            get(key)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|e| ConfigError::Invalid {
                        key,
                        message: format!("{v:?} is not a non-negative integer ({e})"),
                    })
                })
                .transpose()
        };
        Ok(FileConfig {
            listen: get("TOLLGATE_LISTEN"),
            data_dir: get("TOLLGATE_DATA_DIR").map(PathBuf::from),
            database_url: get("TOLLGATE_DATABASE_URL"),
            master_key: get("TOLLGATE_MASTER_KEY"),
            max_body_bytes: parse_num("TOLLGATE_MAX_BODY_BYTES")?.map(|v| v as usize),
            request_timeout_ms: parse_num("TOLLGATE_REQUEST_TIMEOUT_MS")?,
            log_level: get("TOLLGATE_LOG_LEVEL"),
            metrics_listen: get("TOLLGATE_METRICS_LISTEN"),
            header_read_timeout_ms: parse_num("TOLLGATE_HEADER_READ_TIMEOUT_MS")?,
            idle_timeout_ms: parse_num("TOLLGATE_IDLE_TIMEOUT_MS")?,
            max_connections: parse_num("TOLLGATE_MAX_CONNECTIONS")?.map(|v| v as usize),
            smtp_url: get("TOLLGATE_SMTP_URL"),
            alert_from: get("TOLLGATE_ALERT_FROM"),
            alert_emails: get("TOLLGATE_ALERT_EMAILS").map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            alert_webhook_url: get("TOLLGATE_ALERT_WEBHOOK_URL"),
            alert_webhook_secret: get("TOLLGATE_ALERT_WEBHOOK_SECRET"),
            public_base_path: get("TOLLGATE_PUBLIC_BASE_PATH"),
            redis_url: get("TOLLGATE_REDIS_URL"),
            redis_cluster: get("TOLLGATE_REDIS_CLUSTER")
                .map(|v| {
                    parse_bool(&v).ok_or_else(|| ConfigError::Invalid {
                        key: "TOLLGATE_REDIS_CLUSTER",
                        message: format!("{v:?} is not true or false"),
                    })
                })
                .transpose()?,
            redis_key_prefix: get("TOLLGATE_REDIS_KEY_PREFIX"),
            limits_on_redis_error: get("TOLLGATE_LIMITS_ON_REDIS_ERROR"),
            log_buffer_records: parse_num("TOLLGATE_LOG_BUFFER_RECORDS")?.map(|v| v as usize),
        })
    }

    /// `other`'s settings override this one's where set.
    pub fn overlay(mut self, other: FileConfig) -> FileConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            listen,
            data_dir,
            database_url,
            master_key,
            max_body_bytes,
            request_timeout_ms,
            log_level,
            metrics_listen,
            header_read_timeout_ms,
            idle_timeout_ms,
            max_connections,
            smtp_url,
            alert_from,
            alert_emails,
            alert_webhook_url,
            alert_webhook_secret,
            public_base_path,
            redis_url,
            redis_cluster,
            redis_key_prefix,
            limits_on_redis_error,
            log_buffer_records
        );
        self
    }

    /// Applies defaults and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = resolve_addr("listen", self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| resolve_addr("metrics_listen", s))
            .transpose()?;
        let max_body_bytes = positive("max_body_bytes", self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES))?;
        let request_timeout_ms = positive(
            "request_timeout_ms",
            self.request_timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
        )?;
        let header_read_timeout_ms = positive(
            "header_read_timeout_ms",
            self.header_read_timeout_ms.unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS),
        )?;
        let idle_timeout_ms = positive(
            "idle_timeout_ms",
            self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS),
        )?;
        let max_connections = positive(
            "max_connections",
            self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        )?;
        let log_level = self
            .log_level
            .map(|l| l.trim().to_ascii_lowercase())
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                message: format!("{log_level:?} is not one of {}", LOG_LEVELS.join(", ")),
            });
        }
        let public_base_path = base_path(self.public_base_path.as_deref().unwrap_or(""))?;
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database = tollgate_store::Location::from_url(self.database_url.as_deref(), &data_dir).map_err(|e| {
            ConfigError::Invalid {
                key: "database_url",
                message: e.to_string(),
            }
        })?;
        let redis_key_prefix = self
            .redis_key_prefix
            .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_owned());
        if redis_key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                key: "redis_key_prefix",
                message: format!(
                    "{redis_key_prefix:?} must not contain '{{' or '}}' (they set Redis Cluster hash tags)"
                ),
            });
        }
        let redis_url = self.redis_url.filter(|u| !u.trim().is_empty());
        let redis_cluster = self.redis_cluster.unwrap_or(false);
        match (&redis_url, redis_cluster) {
            (None, true) => {
                return Err(ConfigError::Invalid {
                    key: "redis_cluster",
                    message: "a Redis Cluster needs its seed nodes in redis_url (TOLLGATE_REDIS_URL)".into(),
                })
            }
            (Some(url), false) if tollgate_store::counters::redis_nodes(url).len() > 1 => {
                return Err(ConfigError::Invalid {
                    key: "redis_url",
                    message: "lists several Redis servers: set redis_cluster = true (TOLLGATE_REDIS_CLUSTER, --redis-cluster) if they are a Redis Cluster's seed nodes, else give one URL".into(),
                })
            }
            _ => {}
        }
        let on_error = self.limits_on_redis_error.as_deref().map(str::trim).unwrap_or("closed");
        let limits_on_redis_error = OnRedisError::parse(on_error).ok_or_else(|| ConfigError::Invalid {
            key: "limits_on_redis_error",
            message: format!("{on_error:?} is not closed or open"),
        })?;
        let log_buffer_records = positive(
            "log_buffer_records",
            self.log_buffer_records
                .unwrap_or(tollgate_store::request_log::DEFAULT_OUTAGE_MEMORY_RECORDS),
        )?;
        Ok(Config {
            listen,
            data_dir,
            database,
            master_key: self.master_key.filter(|k| !k.is_empty()).map(Secret::from),
            max_body_bytes,
            request_timeout_ms,
            log_level,
            metrics_listen,
            header_read_timeout_ms,
            idle_timeout_ms,
            max_connections,
            smtp_url: self.smtp_url.map(Secret::from),
            alert_from: self.alert_from,
            alert_emails: self.alert_emails.unwrap_or_default(),
            alert_webhook_url: self.alert_webhook_url.map(Secret::from),
            alert_webhook_secret: self.alert_webhook_secret.map(Secret::from),
            public_base_path,
            redis_url: redis_url.map(Secret::from),
            redis_cluster,
            redis_key_prefix,
            limits_on_redis_error,
            log_buffer_records,
        })
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case) for a
/// variable.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn positive<T: PartialEq + Default>(key: &'static str, v: T) -> Result<T, ConfigError> {
    if v == T::default() {
        return Err(ConfigError::Invalid {
            key,
            message: "must be positive".into(),
        });
    }
    Ok(v)
}

/// `HOST:PORT` to an address; a host name is resolved (the first address
/// wins).
fn resolve_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let invalid = |why: String| ConfigError::Invalid {
        key,
        message: format!("{text:?} is not HOST:PORT ({why})"),
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(invalid("no port".into()));
    };
    let port: u16 = port.parse().map_err(|_| invalid(format!("{port:?} is not a port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(invalid("no host".into()));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(format!("cannot resolve {host:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| invalid(format!("{host:?} resolves to no address")))
}

/// Checks a `public_base_path`: empty or "/", or "/segment[/segment...]" of
/// URL-safe characters; a trailing slash is dropped.
pub fn base_path(v: &str) -> Result<String, ConfigError> {
    let v = v.trim().trim_end_matches('/');
    let invalid = |message: &str| ConfigError::Invalid {
        key: "public_base_path",
        message: message.to_owned(),
    };
    if v.is_empty() {
        return Ok(String::new());
    }
    if !v.starts_with('/') {
        return Err(invalid("must start with '/', e.g. /tollgate"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-._~/".contains(c);
    if !v.chars().all(ok) || v.contains("//") {
        return Err(invalid(
            "may hold only letters, digits, '-', '.', '_', '~' and single '/' between segments",
        ));
    }
    if v == "/v1" || v.starts_with("/v1/") || v == "/health" || v == "/metrics" {
        return Err(invalid("must not be /v1, /health or /metrics, which the API uses"));
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:1000\"\nlog_level = \"debug\"\nmax_body_bytes = 5").unwrap();
        let env: HashMap<&str, &str> = [
            ("TOLLGATE_LISTEN", "127.0.0.1:2000"),
            ("TOLLGATE_ALERT_EMAILS", "a@x, b@x"),
        ]
        .into();
        let env = FileConfig::from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        let flags = FileConfig {
            data_dir: Some("/tmp/flag".into()),
            ..Default::default()
        };
        let c = file.overlay(env).overlay(flags).resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:2000");
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.max_body_bytes, 5);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(c.alert_emails, vec!["a@x", "b@x"]);
        assert_eq!(c.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
    }

    #[test]
    fn base_paths_are_checked() {
        assert_eq!(base_path("").unwrap(), "");
        assert_eq!(base_path("/").unwrap(), "");
        assert_eq!(base_path("/tollgate/").unwrap(), "/tollgate");
        assert_eq!(base_path("/a/b").unwrap(), "/a/b");
        for bad in ["tollgate", "/a b", "/a//b", "/v1", "/x\"<"] {
            let e = base_path(bad).unwrap_err().to_string();
            assert!(e.contains("public_base_path"), "{bad}: {e}");
        }
        let env = FileConfig::from_env(|k| (k == "TOLLGATE_PUBLIC_BASE_PATH").then(|| "/gw/".to_owned())).unwrap();
        assert_eq!(env.resolve().unwrap().public_base_path, "/gw");
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let e = FileConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let e = FileConfig {
            listen: Some("nope".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("listen"));
        let e = FileConfig::from_env(|k| (k == "TOLLGATE_MAX_BODY_BYTES").then(|| "ten".to_owned())).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_MAX_BODY_BYTES"));
        assert!(FileConfig {
            max_body_bytes: Some(0),
            ..Default::default()
        }
        .resolve()
        .is_err());
        assert!(FileConfig::from_file(Path::new("/nonexistent/x.toml")).is_err());
    }

    /// The example file at the repository root, with its commented-out
    /// settings switched on.
    fn example_with_everything_on() -> String {
        include_str!("../../../tollgate.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if SETTINGS.iter().any(|s| rest.starts_with(&format!("{} = ", s.key))) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn settings_list_every_file_key() {
        let fields = serde_json::to_value(FileConfig::default()).unwrap();
        let mut fields: Vec<&String> = fields.as_object().unwrap().keys().collect();
        let mut listed: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        fields.sort();
        listed.sort();
        assert_eq!(fields, listed, "SETTINGS and FileConfig differ");
        // Each variable is read by from_env.
        for s in SETTINGS {
            let value = match s.key {
                "listen" | "metrics_listen" => "127.0.0.1:1",
                "log_level" => "debug",
                "redis_cluster" => "true",
                k if k.ends_with("_ms") || k.starts_with("max_") || k.ends_with("_records") => "7",
                _ => "x",
            };
            let c = FileConfig::from_env(|k| (k == s.env).then(|| value.to_owned())).unwrap();
            let v = serde_json::to_value(c).unwrap();
            assert!(!v[s.key].is_null(), "{} does not set {}", s.env, s.key);
        }
    }

    #[test]
    fn the_example_file_has_every_setting_and_parses() {
        let text = include_str!("../../../tollgate.toml");
        let as_shipped = FileConfig::from_toml(text).expect("the example parses as shipped");
        let c = as_shipped.resolve().expect("and resolves");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN, "its values are the defaults");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
        assert_eq!(c.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS);
        assert_eq!(c.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.log_level, DEFAULT_LOG_LEVEL);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.redis_url, None, "counters in process unless asked");
        assert!(!c.redis_cluster);
        assert_eq!(c.redis_key_prefix, DEFAULT_REDIS_KEY_PREFIX);
        assert_eq!(c.limits_on_redis_error, OnRedisError::Closed);
        assert_eq!(
            c.log_buffer_records,
            tollgate_store::request_log::DEFAULT_OUTAGE_MEMORY_RECORDS
        );
        let all = FileConfig::from_toml(&example_with_everything_on()).expect("every example value parses");
        let v = serde_json::to_value(all.clone()).unwrap();
        for s in SETTINGS {
            assert!(!v[s.key].is_null(), "tollgate.toml lacks {}", s.key);
            assert!(text.contains(s.env), "tollgate.toml does not name {}", s.env);
        }
        all.resolve().expect("the example values are valid");
    }

    #[test]
    fn the_readme_table_lists_every_setting() {
        let readme = include_str!("../../../README.md");
        for s in SETTINGS {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", s.key)))
                .unwrap_or_else(|| panic!("README has no row for {}", s.key));
            assert!(row.contains(s.env), "README row of {} lacks {}", s.key, s.env);
        }
    }

    #[test]
    fn redis_settings_are_checked() {
        let env: HashMap<&str, &str> = [
            ("TOLLGATE_REDIS_URL", "redis://127.0.0.1:6379"),
            ("TOLLGATE_REDIS_KEY_PREFIX", "prod:"),
            ("TOLLGATE_LIMITS_ON_REDIS_ERROR", "open"),
        ]
        .into();
        let c = FileConfig::from_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(
            c.redis_url.as_ref().map(|u| u.expose().as_str()),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(c.redis_key_prefix, "prod:");
        assert_eq!(c.limits_on_redis_error, OnRedisError::Open);
        assert!(!format!("{c:?}").contains("6379"), "the URL may hold a password");
        let empty = FileConfig {
            redis_url: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(empty.resolve().unwrap().redis_url, None);
        for (f, key) in [
            (
                FileConfig {
                    limits_on_redis_error: Some("ajar".into()),
                    ..Default::default()
                },
                "limits_on_redis_error",
            ),
            (
                FileConfig {
                    redis_key_prefix: Some("{x}:".into()),
                    ..Default::default()
                },
                "redis_key_prefix",
            ),
            (
                FileConfig {
                    redis_cluster: Some(true),
                    ..Default::default()
                },
                "redis_cluster",
            ),
            (
                FileConfig {
                    redis_url: Some("redis://10.0.0.1:7000, redis://10.0.0.2:7000".into()),
                    ..Default::default()
                },
                "redis_url",
            ),
        ] {
            let e = f.resolve().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        // A cluster's seed nodes: one or several.
        for (value, url) in [
            ("true", "redis://10.0.0.1:7000,redis://10.0.0.2:7000"),
            ("1", "redis://10.0.0.1:7000"),
        ] {
            let env: HashMap<&str, &str> = [("TOLLGATE_REDIS_URL", url), ("TOLLGATE_REDIS_CLUSTER", value)].into();
            let c = FileConfig::from_env(|k| env.get(k).map(|v| v.to_string()))
                .unwrap()
                .resolve()
                .unwrap();
            assert!(c.redis_cluster);
            assert_eq!(c.redis_url.as_ref().map(|u| u.expose().as_str()), Some(url));
        }
        let file: FileConfig = toml::from_str("redis_url = \"redis://a:1\"\nredis_cluster = false").unwrap();
        assert!(!file.resolve().unwrap().redis_cluster);
        let e = FileConfig::from_env(|k| (k == "TOLLGATE_REDIS_CLUSTER").then(|| "maybe".to_owned())).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_REDIS_CLUSTER"), "{e}");
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_key() {
        let e = FileConfig::from_toml("log_level = \"info\"\n\nmax_connections = -3\n").unwrap_err();
        assert!(e.contains("line 3") && e.contains("max_connections"), "{e}");
        let e = FileConfig::from_toml("alert_emails = \"a@x\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("alert_emails"), "{e}");
        let e = FileConfig::from_toml("listen = \"a\"\nlisten = \"b\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = FileConfig::from_toml("[section\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn log_levels_host_names_and_new_bounds_are_checked() {
        let with = |f: FileConfig| f.resolve();
        for bad in ["loud", "", "info,debug"] {
            let e = with(FileConfig {
                log_level: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("log_level"), "{e}");
        }
        let c = with(FileConfig {
            log_level: Some("WARN".into()),
            listen: Some("localhost:8788".into()),
            metrics_listen: Some("localhost:0".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.log_level, "warn");
        assert!(c.listen.ip().is_loopback() && c.listen.port() == 8788, "{}", c.listen);
        assert!(c.metrics_listen.is_some_and(|a| a.ip().is_loopback()));
        for (bad, key) in [
            ("localhost", "listen"),
            ("localhost:99999", "listen"),
            (":80", "listen"),
        ] {
            let e = with(FileConfig {
                listen: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(key) && e.contains(bad), "{e}");
        }
        for f in [
            FileConfig {
                header_read_timeout_ms: Some(0),
                ..Default::default()
            },
            FileConfig {
                idle_timeout_ms: Some(0),
                ..Default::default()
            },
            FileConfig {
                max_connections: Some(0),
                ..Default::default()
            },
            FileConfig {
                log_buffer_records: Some(0),
                ..Default::default()
            },
        ] {
            assert!(with(f).is_err());
        }
    }
}

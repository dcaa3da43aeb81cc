//! Configuration: built-in defaults, then a TOML file (`--config`), then
//! `TOLLGATE_*` environment variables, then command-line flags; the later one
//! wins. Unknown keys in the file are an error that names the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Every setting, as the file spells it. All optional: absent means "not set
/// here".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub master_key: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub log_level: Option<String>,
    pub smtp_url: Option<String>,
    pub alert_from: Option<String>,
    pub alert_emails: Option<Vec<String>>,
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_secret: Option<String>,
    pub public_base_path: Option<String>,
}

/// The settings in force.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `TOLLGATE_MASTER_KEY` (64 hex characters); else the key file.
    pub master_key: Option<String>,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub log_level: String,
    pub smtp_url: Option<String>,
    pub alert_from: Option<String>,
    pub alert_emails: Vec<String>,
    pub alert_webhook_url: Option<String>,
    pub alert_webhook_secret: Option<String>,
    /// The dashboard's path prefix behind a reverse proxy: "" or "/prefix".
    pub public_base_path: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of debug output.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("master_key", &self.master_key.as_ref().map(|_| "<set>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("log_level", &self.log_level)
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<set>"))
            .field("alert_from", &self.alert_from)
            .field("alert_emails", &self.alert_emails)
            .field("alert_webhook_url", &self.alert_webhook_url)
            .field("public_base_path", &self.public_base_path)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
pub const DEFAULT_DATA_DIR: &str = "./tollgate-data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 600_000;

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
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_owned(),
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
                        message: e.to_string(),
                    })
                })
                .transpose()
        };
        Ok(FileConfig {
            listen: get("TOLLGATE_LISTEN"),
            data_dir: get("TOLLGATE_DATA_DIR").map(PathBuf::from),
            master_key: get("TOLLGATE_MASTER_KEY"),
            max_body_bytes: parse_num("TOLLGATE_MAX_BODY_BYTES")?.map(|v| v as usize),
            request_timeout_ms: parse_num("TOLLGATE_REQUEST_TIMEOUT_MS")?,
            log_level: get("TOLLGATE_LOG_LEVEL"),
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
            master_key,
            max_body_bytes,
            request_timeout_ms,
            log_level,
            smtp_url,
            alert_from,
            alert_emails,
            alert_webhook_url,
            alert_webhook_secret,
            public_base_path
        );
        self
    }

    /// Applies defaults and validates.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
            key: "listen",
            message: format!("{listen_text:?} is not ADDR:PORT"),
        })?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "max_body_bytes",
                message: "must be positive".into(),
            });
        }
        let request_timeout_ms = self.request_timeout_ms.unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS);
        if request_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "request_timeout_ms",
                message: "must be positive".into(),
            });
        }
        let public_base_path = base_path(self.public_base_path.as_deref().unwrap_or(""))?;
        Ok(Config {
            listen,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            master_key: self.master_key.filter(|k| !k.is_empty()),
            max_body_bytes,
            request_timeout_ms,
            log_level: self.log_level.unwrap_or_else(|| "info".to_owned()),
            smtp_url: self.smtp_url,
            alert_from: self.alert_from,
            alert_emails: self.alert_emails.unwrap_or_default(),
            alert_webhook_url: self.alert_webhook_url,
            alert_webhook_secret: self.alert_webhook_secret,
            public_base_path,
        })
    }
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
}

//! The `tollgate` command line: `serve`, `admin-key create`,
//! `rotate-master-key`, `migrate`, `prices import`, `seed-usage` and
//! `mock-upstream`.

use crate::config::{Config, ConfigError, FileConfig};
use crate::server::{self, StartError};
use crate::state::meta;
use axum::serve::ListenerExt;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tollgate_core::catalogue::PriceTable;
use tollgate_core::clock::SystemClock;
use tollgate_core::records::{KeySubType, KeyType};
use tollgate_store::secrets::{self, MasterKey, SealedSecret};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An AI gateway for organisations: one OpenAI-compatible endpoint, every provider, budgets and rate limits that hold."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway and admin API.
    #[command(after_help = crate::config::env_help())]
    Serve(ServeArgs),
    /// Organisation admin keys.
    #[command(subcommand)]
    AdminKey(AdminKeyCommand),
    /// Re-wrap every secret's data key under a new master key.
    RotateMasterKey(DataArgs),
    /// Create or upgrade the database schema, then exit (every command that
    /// opens the database does this too; one process at a time migrates).
    /// With --to, copy everything from the SQLite database in the data
    /// directory into an empty PostgreSQL database.
    Migrate(MigrateArgs),
    /// The model price table.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Fill the request log with synthetic requests (for benchmarking analytics).
    SeedUsage {
        #[command(flatten)]
        data: DataArgs,
        /// How many requests to write.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Spread them evenly over this many days before now.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Serve a mock upstream of one provider protocol (for trying Tollgate
    /// without a provider account). Prints its base URL and the test
    /// credentials it accepts on stderr.
    MockUpstream {
        /// Port to listen on (127.0.0.1; 0 picks a free one).
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// Which provider's API to mock.
        #[arg(long, value_enum, default_value_t = MockProtocol::Openai)]
        protocol: MockProtocol,
        /// Answer every model call with this HTTP status (400-599) and the
        /// provider's error body, at once: a failing upstream for trying
        /// fallbacks (and for the routing benchmark).
        #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
        fail_status: Option<u16>,
    },
}

/// The protocols `tollgate mock-upstream` can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MockProtocol {
    /// OpenAI and OpenAI-compatible (any key or none).
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Azure OpenAI deployments.
    Azure,
    /// Google Gemini API.
    Gemini,
    /// Google Vertex AI (service-account JWT, OAuth token endpoint).
    Vertex,
    /// AWS Bedrock runtime and STS.
    Bedrock,
}

#[derive(Debug, Subcommand)]
pub enum AdminKeyCommand {
    /// Create another organisation admin key and print it (only the key) on stdout.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// A name for the key.
        #[arg(long, default_value = "Admin key (CLI)")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Replace the price table with FILE (same shape as the shipped one).
    Import {
        file: PathBuf,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// `tollgate serve`'s options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see tollgate.toml in the repository).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:8787].
    #[arg(long, env = "TOLLGATE_LISTEN")]
    pub listen: Option<String>,
    /// Data directory, created on first start [default: ./tollgate-data].
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://…); serve does not support it yet [default: SQLite in the data directory].
    #[arg(long, env = "TOLLGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Also serve /metrics without a key on this HOST:PORT.
    #[arg(long, env = "TOLLGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Keep the limit counters in this Redis (redis://HOST:PORT), shared by replicas.
    #[arg(long, env = "TOLLGATE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// redis_url names a Redis Cluster (one or more seed nodes, comma separated) [env: TOLLGATE_REDIS_CLUSTER].
    #[arg(long)]
    pub redis_cluster: bool,
}

/// The options of commands that work on an existing data directory.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// A TOML configuration file (only its data_dir, database_url and master_key matter here).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory; it must exist [default: ./tollgate-data].
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database in PostgreSQL (postgres://…) [default: SQLite in the data directory].
    #[arg(long, env = "TOLLGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// `tollgate migrate`'s options.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Copy everything (control plane, request log, analytics, alert outbox)
    /// from the SQLite database in the data directory into this empty
    /// PostgreSQL database (postgres://…). Secrets stay sealed under the same
    /// master key, so replicas on it need that key too.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] tollgate_store::StoreError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(
        "data directory {0} does not exist or is not a directory (only `tollgate serve` creates one); check --data-dir"
    )]
    NoDataDir(String),
    #[error("{0}")]
    Other(String),
}

/// Defaults < file < environment < flags.
fn layered(config_file: Option<&Path>, flags: FileConfig) -> Result<Config, ConfigError> {
    let file = match config_file {
        Some(p) => FileConfig::from_file(p)?,
        None => FileConfig::default(),
    };
    let env = FileConfig::from_env(|k| std::env::var(k).ok())?;
    file.overlay(env).overlay(flags).resolve()
}

impl ServeArgs {
    pub fn config(&self) -> Result<Config, ConfigError> {
        layered(
            self.config.as_deref(),
            FileConfig {
                listen: self.listen.clone(),
                data_dir: self.data_dir.clone(),
                database_url: self.database_url.clone(),
                metrics_listen: self.metrics_listen.clone(),
                redis_url: self.redis_url.clone(),
                redis_cluster: self.redis_cluster.then_some(true),
                ..Default::default()
            },
        )
    }
}

impl DataArgs {
    /// The configuration, refusing a data directory that does not exist
    /// (these commands never create one: a mistyped path would otherwise get
    /// a fresh master key and data that no server reads).
    pub fn config(&self) -> Result<Config, CliError> {
        let config = layered(
            self.config.as_deref(),
            FileConfig {
                data_dir: self.data_dir.clone(),
                database_url: self.database_url.clone(),
                ..Default::default()
            },
        )?;
        if !config.data_dir.is_dir() {
            return Err(CliError::NoDataDir(config.data_dir.display().to_string()));
        }
        Ok(config)
    }
}

/// An error and its causes on one line, each cause once: a message that
/// already quotes its source (`"reading x: denied"` caused by `"denied"`)
/// is not followed by it again.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Raises the soft open-file limit to the hard one (each connection is a
/// descriptor) and returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// `tollgate serve`.
pub async fn serve(config: Config) -> Result<(), CliError> {
    let fds = raise_fd_limit();
    // Descriptors beyond the connections: the database, upstream
    // connections, the listeners.
    if let Some(fds) = fds.filter(|n| *n < config.max_connections as u64 + 256) {
        tracing::warn!(
            open_file_limit = fds,
            max_connections = config.max_connections,
            "the open-file limit is below max_connections + 256: connections beyond it are refused by the kernel"
        );
    }
    let running = server::start(config, Arc::new(SystemClock)).await?;
    if let Some(key) = &running.first_admin_key {
        // The key on stdout (alone on its line, for scripts), the advice
        // with the logs on stderr.
        eprintln!("\nOrganisation admin key (shown only this once; store it now):\n");
        println!("    {key}");
        eprintln!("\nSend it as `x-portkey-api-key: <key>` (or `Authorization: Bearer <key>`) to http://{}/v1/admin/... to create workspaces, API keys and integrations.\n", running.addr);
    }
    if let Some(m) = running.metrics_addr {
        eprintln!("Metrics (no key) on http://{m}/metrics");
    }
    eprintln!("Tollgate is listening on http://{}", running.addr);
    let token = running.shutdown_token();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        token.cancel();
    });
    running.wait().await.map_err(|e| CliError::Other(e.to_string()))
}

/// `tollgate admin-key create`: prints only the key, for scripts.
pub async fn create_admin_key(config: Config, name: String) -> Result<String, CliError> {
    let (store, _, _) = server::open_store(&config).await?;
    let now = chrono::Utc::now();
    server::bootstrap(&store, now).await?;
    let (rec, key) =
        crate::admin::api_keys::new_key(KeyType::Organisation, KeySubType::Service, name, None, vec![], now);
    let mut tx = store.begin().await?;
    tx.put_api_key(&rec).await?;
    tx.audit(&tollgate_store::control::AuditEntry {
        id: tollgate_core::ids::prefixed_id("aud"),
        at: now,
        actor: None,
        action: "create".into(),
        object_type: "api_key".into(),
        object_id: rec.id.clone(),
        details: serde_json::json!({"name": rec.name, "type": "organisation-service", "via": "cli"}),
    })
    .await?;
    tx.bump_control_version().await?;
    tx.commit().await?;
    Ok(key)
}

/// `tollgate rotate-master-key`: every secret's data key is re-wrapped under
/// a new master key in one transaction; the secrets' ciphertexts are not
/// touched. With a key file, the new key is written beside it first
/// (`master.key.new`) and renamed over it after the commit; with
/// `TOLLGATE_MASTER_KEY`, the new key is printed and must replace it.
pub async fn rotate_master_key(config: Config) -> Result<Option<String>, CliError> {
    let (store, old, source) = server::open_store(&config).await?;
    let new = MasterKey::generate()?;
    let key_file = config.data_dir.join(secrets::MASTER_KEY_FILE);
    let staged = config.data_dir.join(format!("{}.new", secrets::MASTER_KEY_FILE));
    let from_env = matches!(source, secrets::KeySource::Env);
    if !from_env {
        new.write_to_file(&staged)?;
    }
    let data = store.load_all().await?;
    let mut tx = store.begin().await?;
    let mut n = 0;
    for mut i in data.integrations {
        for text in i.sealed_secrets.values_mut() {
            let sealed = SealedSecret::parse(text)?;
            *text = secrets::rewrap(&old, &new, &sealed)?.to_string();
            n += 1;
        }
        tx.put_integration(&i).await?;
    }
    tx.meta_set(meta::MASTER_KEY_FINGERPRINT, &new.fingerprint()).await?;
    tx.audit(&tollgate_store::control::AuditEntry {
        id: tollgate_core::ids::prefixed_id("aud"),
        at: chrono::Utc::now(),
        actor: None,
        action: "rotate".into(),
        object_type: "master_key".into(),
        object_id: new.fingerprint(),
        details: serde_json::json!({"rewrapped_secrets": n, "previous_fingerprint": old.fingerprint()}),
    })
    .await?;
    tx.bump_control_version().await?;
    tx.commit().await?;
    if from_env {
        Ok(Some(new.to_hex().expose().clone()))
    } else {
        std::fs::rename(&staged, &key_file).map_err(|e| CliError::Other(format!("renaming the new key file: {e}")))?;
        Ok(None)
    }
}

/// `tollgate migrate`: opens the database, which creates or upgrades its
/// schema (under a lock on PostgreSQL, so replicas migrate once).
pub async fn migrate(config: Config) -> Result<(), CliError> {
    tollgate_store::Store::open(&config.database).await?;
    Ok(())
}

/// `tollgate migrate --to URL`: copies the embedded SQLite database named
/// by `config` into the empty PostgreSQL database at `to` (migrating it
/// first), and returns how many rows of each table it copied.
pub async fn migrate_to(config: Config, to: &str) -> Result<Vec<tollgate_store::transfer::Copied>, CliError> {
    use tollgate_store::Location;
    // `from_url` names only the scheme of a URL it refuses: it may carry a password.
    let target = match Location::from_url(Some(to), &config.data_dir) {
        Ok(target @ Location::Postgres(_)) => target,
        Ok(Location::Sqlite(_)) | Err(_) => {
            return Err(CliError::Other(
                "--to must be a PostgreSQL URL (postgres://… or postgresql://…)".to_owned(),
            ))
        }
    };
    let Location::Sqlite(path) = &config.database else {
        return Err(CliError::Other(
            "migrate --to copies from the embedded SQLite database: leave database_url unset (it names the target only through --to)"
                .to_owned(),
        ));
    };
    if !path.is_file() {
        return Err(CliError::Other(format!("no database to copy at {}", path.display())));
    }
    let source = tollgate_store::Store::open(&config.database).await?;
    let target = tollgate_store::Store::open(&target).await?;
    Ok(source.copy_to(&target).await?)
}

/// `tollgate prices import FILE`.
pub async fn import_prices(config: Config, file: PathBuf) -> Result<usize, CliError> {
    let text = std::fs::read_to_string(&file).map_err(|e| CliError::Other(format!("{}: {e}", file.display())))?;
    let table = PriceTable::from_json(&text).map_err(CliError::Other)?;
    let (store, _, _) = server::open_store(&config).await?;
    let mut tx = store.begin().await?;
    tx.meta_set(meta::PRICE_TABLE, &text).await?;
    tx.bump_control_version().await?;
    tx.commit().await?;
    Ok(table.len())
}

// ---- `tollgate mock-upstream` ----

/// The fixed test credentials `tollgate mock-upstream` accepts. They protect
/// nothing (the mocks serve canned answers on 127.0.0.1) and are documented
/// in docs/SDK_TESTS.md so that an integration can be pointed at a mock.
pub mod mock_credentials {
    /// Anthropic: the `x-api-key`.
    pub const ANTHROPIC_KEY: &str = "sk-ant-test";
    /// Azure OpenAI: the `api-key`.
    pub const AZURE_KEY: &str = "azure-test-key";
    /// Gemini API: the `x-goog-api-key`.
    pub const GEMINI_KEY: &str = "gemini-test-key";
    /// Vertex AI: project and region in the model paths.
    pub const VERTEX_PROJECT: &str = "test-project";
    pub const VERTEX_REGION: &str = "us-central1";
    /// Bedrock: the region SigV4 signatures are scoped to.
    pub const BEDROCK_REGION: &str = "us-east-1";
}

/// `tollgate mock-upstream`: binds `127.0.0.1:port`, prints one line on
/// stderr with the base URL and the credentials the mock accepts, and
/// serves until the process ends. Nothing is recorded, so memory stays flat
/// however long it runs.
pub async fn mock_upstream(protocol: MockProtocol, port: u16, fail_status: Option<u16>) -> Result<(), CliError> {
    use mock_credentials as creds;
    use tollgate_testkit::control::Control;
    use tollgate_testkit::{anthropic, azure, bedrock, google, openai};

    let control = Control::new();
    if let Some(status) = fail_status {
        control.fail(status, "the mock upstream was started with --fail-status");
    }

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| CliError::Other(format!("binding 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| CliError::Other(e.to_string()))?;
    let url = format!("http://{addr}");
    let (router, line) = match protocol {
        MockProtocol::Openai => (
            openai::router(
                openai::OpenAiMock {
                    api_key: None,
                    control: control.clone(),
                },
                None,
            ),
            format!(
                "mock-upstream openai: base_url={url}/v1 accepts any key \
                 (integration: ai_provider_id=openai, configurations.custom_host={url}/v1)"
            ),
        ),
        MockProtocol::Anthropic => {
            let config = anthropic::AnthropicMock {
                api_key: creds::ANTHROPIC_KEY.into(),
                control: control.clone(),
            };
            (
                anthropic::standalone_router(config),
                format!(
                    "mock-upstream anthropic: base_url={url}/v1 x-api-key={} \
                     (integration: ai_provider_id=anthropic, key={}, configurations.custom_host={url}/v1)",
                    creds::ANTHROPIC_KEY,
                    creds::ANTHROPIC_KEY
                ),
            )
        }
        MockProtocol::Azure => {
            let config = azure::AzureMock {
                api_key: creds::AZURE_KEY.into(),
                deployments: Vec::new(),
                control: control.clone(),
            };
            (
                azure::standalone_router(config),
                format!(
                    "mock-upstream azure: base_url={url} api-key={} any deployment, api-version YYYY-MM-DD \
                     (integration: ai_provider_id=azure-openai, key={}, configurations.custom_host={url})",
                    creds::AZURE_KEY,
                    creds::AZURE_KEY
                ),
            )
        }
        MockProtocol::Gemini => (
            google::standalone_gemini_router(creds::GEMINI_KEY, control.clone()),
            format!(
                "mock-upstream gemini: base_url={url}/v1beta x-goog-api-key={} \
                 (integration: ai_provider_id=google, key={}, configurations.custom_host={url}/v1beta)",
                creds::GEMINI_KEY,
                creds::GEMINI_KEY
            ),
        ),
        MockProtocol::Vertex => {
            let config = google::VertexConfig::new(creds::VERTEX_PROJECT, creds::VERTEX_REGION, control.clone());
            let router = google::standalone_vertex_router(config).map_err(|e| CliError::Other(e.to_string()))?;
            // The key file's `token_uri` must be this mock's token endpoint:
            // the JWT's audience is checked against it.
            let account = google::service_account_json(
                google::TEST_CLIENT_EMAIL,
                &format!("{url}/token"),
                creds::VERTEX_PROJECT,
            );
            (
                router,
                format!(
                    "mock-upstream vertex: base_url={url} vertex_project_id={} vertex_region={} \
                     vertex_service_account_json={account} \
                     (integration: ai_provider_id=vertex-ai, configurations.custom_host={url} and the three above)",
                    creds::VERTEX_PROJECT,
                    creds::VERTEX_REGION
                ),
            )
        }
        MockProtocol::Bedrock => {
            let config = bedrock::BedrockConfig::new(creds::BEDROCK_REGION, control.clone());
            let line = format!(
                "mock-upstream bedrock: base_url={url} aws_region={} aws_access_key_id={} \
                 aws_secret_access_key={} aws_role_arn={} aws_external_id={} \
                 (integration: ai_provider_id=bedrock, aws_auth_type=accessKey, configurations.custom_host={url}; \
                 for assumedRole also configurations.aws_sts_endpoint={url}/)",
                config.region,
                config.access_key_id,
                config.secret_access_key,
                config.role_arn,
                config.external_id.as_deref().unwrap_or(""),
            );
            (bedrock::standalone_router(config), line)
        }
    };
    eprintln!("{line}");
    axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        router,
    )
    .await
    .map_err(|e| CliError::Other(format!("mock upstream: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {path}: {source}")]
    struct Quoting {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("start-up failed")]
    struct Outer(#[source] Quoting);

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Quoting {
            path: "x.toml".into(),
            source: io(),
        };
        assert_eq!(error_chain(&e), "reading x.toml: no such file");
        let e = Outer(Quoting {
            path: "x.toml".into(),
            source: io(),
        });
        assert_eq!(error_chain(&e), "start-up failed: reading x.toml: no such file");
    }

    #[test]
    fn redis_cluster_is_a_serve_flag() {
        use clap::Parser;
        let serve = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Serve(a)) => a.config(),
            other => panic!("{other:?}"),
        };
        let seeds = "redis://127.0.0.1:7000,redis://127.0.0.1:7001";
        let c = serve(&["tollgate", "serve", "--redis-url", seeds, "--redis-cluster"]).unwrap();
        assert!(c.redis_cluster);
        let e = serve(&["tollgate", "serve", "--redis-url", seeds]).unwrap_err();
        assert!(e.to_string().contains("redis_cluster"), "{e}");
        assert!(
            serve(&["tollgate", "serve", "--redis-cluster"]).is_err(),
            "no redis_url"
        );
    }
}

//! The `tollgate` binary.

use clap::Parser;
use std::process::ExitCode;
use tollgate_server::cli::{self, AdminKeyCommand, Cli, Command, PricesCommand};

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn,hyper=warn,reqwest=warn")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    let result: anyhow::Result<()> = async {
        match args.command {
            Command::Serve(args) => {
                let config = args.config()?;
                init_tracing(&config.log_level);
                cli::serve(config).await?;
            }
            Command::AdminKey(AdminKeyCommand::Create { data, name }) => {
                let config = data.config()?;
                init_tracing("warn");
                println!("{}", cli::create_admin_key(config, name).await?);
            }
            Command::RotateMasterKey(data) => {
                let config = data.config()?;
                init_tracing("warn");
                match cli::rotate_master_key(config).await? {
                    Some(hex) => {
                        eprintln!(
                            "Master key rotated. Set TOLLGATE_MASTER_KEY to this new value before the next start:"
                        );
                        println!("{hex}");
                    }
                    None => eprintln!(
                        "Master key rotated; the key file was replaced. Running servers pick it up within a second."
                    ),
                }
            }
            Command::Migrate(cli::MigrateArgs { data, to: None }) => {
                let config = data.config()?;
                init_tracing("warn");
                cli::migrate(config).await?;
                eprintln!("The database schema is up to date.");
            }
            Command::Migrate(cli::MigrateArgs { data, to: Some(to) }) => {
                let config = data.config()?;
                init_tracing("warn");
                let copied = cli::migrate_to(config, &to).await?;
                for c in &copied {
                    println!("{:<16} {} rows", c.table, c.rows);
                }
                eprintln!("Copied into PostgreSQL. Start servers with database_url set to it and the same master key.");
            }
            Command::Prices(PricesCommand::Import { file, data }) => {
                let config = data.config()?;
                init_tracing("warn");
                let n = cli::import_prices(config, file).await?;
                eprintln!("Imported prices for {n} models.");
            }
            Command::SeedUsage { data, rows, days } => {
                init_tracing("warn");
                let s = tollgate_server::seed::seed_usage(data.config()?, rows, days).await?;
                eprintln!("Wrote {} requests in {:.1} s.", s.rows, s.seconds);
            }
            Command::MockUpstream {
                port,
                protocol,
                fail_status,
            } => {
                init_tracing("info");
                cli::mock_upstream(protocol, port, fail_status).await?;
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

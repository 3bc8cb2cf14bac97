#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use triptrip_realtime::config::Settings;
use triptrip_realtime::db::{self, Database};
use triptrip_realtime::{migrate, server};

/// Realtime rooms, documents and notifications on PostgreSQL.
#[derive(Parser)]
#[command(name = "triptrip-realtime", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default): HTTP/WebSocket listener and replication worker.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the replication slot's state: holder, confirmed position, lag and retained WAL.
    Status,
    /// Print a JWT the server accepts (signed with the configured or generated key).
    Token(cli::token::TokenArgs),
    /// Join a room on the running server and print every event as a JSON line.
    Listen(cli::listen::ListenArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(args) => cli::token::run(&cli.settings, &args),
        Command::Listen(args) => cli::listen::run(&cli.settings, &args).await,
        Command::Serve => server::serve(cli.settings).await,
        Command::Migrate => {
            let database = Database::open(&cli.settings).await?;
            let result = migrate_once(&database.url).await;
            database.release().await?;
            println!("{} migration(s) applied", result?);
            Ok(())
        }
        Command::Status => {
            let database = Database::open(&cli.settings).await?;
            let report = match db::connect(&database.url).await {
                Ok(client) => db::slot_report(&client, &cli.settings.slot).await,
                Err(e) => Err(e),
            };
            database.release().await?;
            print!("{}", report?);
            Ok(())
        }
    }
}

async fn migrate_once(url: &str) -> anyhow::Result<usize> {
    let mut client = db::connect(url).await?;
    db::check_logical_replication(&client).await?;
    migrate::run(&mut client).await
}

//! `serve`: open the database, migrate, stream the WAL and answer HTTP until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::db::{self, Database};
use crate::ops::{self, OpsState};
use crate::wal::{self, WalStatus};

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    if let Some(cluster) = &database.embedded {
        tracing::info!(
            "embedded PostgreSQL on port {port}; connect with: psql -h {socket} -p {port} -U postgres {db}",
            port = cluster.port(),
            socket = cluster.socket_dir().display(),
            db = db::EMBEDDED_DB,
        );
    }
    let result = serve_on(&settings, &database.url).await;
    database.shutdown().await?;
    result
}

async fn serve_on(settings: &Settings, url: &str) -> anyhow::Result<()> {
    let mut client = db::connect(url).await?;
    db::check_logical_replication(&client).await?;
    crate::migrate::run(&mut client).await?;
    drop(client);

    let pool = db::pool(url, 16)?;
    let status = Arc::new(WalStatus::default());
    let (stop, stopped) = watch::channel(false);
    let worker = {
        let (url, slot, status) = (url.to_owned(), settings.slot.clone(), status.clone());
        tokio::spawn(async move { wal::run(&url, &slot, status, stopped).await })
    };

    let app = ops::router(OpsState {
        pool,
        wal: status,
        slot: settings.slot.clone(),
    });
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    let mut http_stop = stop.subscribe();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = http_stop.changed() => {}
            }
        })
        .await?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    worker.await.context("replication worker panicked")?
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

//! `serve`: open the database, migrate, stream the WAL into the hub and serve clients until
//! SIGTERM/SIGINT, then drain (seed §3.3).

use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Verifier;
use crate::config::Settings;
use crate::db::{self, Database};
use crate::docs::Docs;
use crate::gateway::store::Store;
use crate::gateway::Gateway;
use crate::hub::Hub;
use crate::inventory::Inventory;
use crate::notify::channels::webhook::WebhookSender;
use crate::notify::channels::Channels;
use crate::notify::dispatch::{DispatchStats, Dispatcher, SystemClock};
use crate::notify::inapp::Receipts;
use crate::ops::{self, OpsState};
use crate::outbox::{OutboxStats, Relay};
use crate::presence::Presence;
use crate::wal::{self, WalStatus};

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    let result = serve_on(&settings, &database).await;
    database.shutdown().await?;
    result
}

async fn serve_on(settings: &Settings, database: &Database) -> anyhow::Result<()> {
    let url = database.url.as_str();
    let mut client = db::connect(url).await?;
    db::check_logical_replication(&client).await?;
    crate::migrate::run(&mut client).await?;
    drop(client);

    let verifier = Verifier::from_settings(settings)?;
    let pool = db::pool(url, 16)?;
    let hub = Arc::new(Hub::default());
    let docs = Arc::new(Docs::new(pool.clone(), settings.docs.clone()));
    let receipts = Arc::new(Receipts::default());
    let presence = Arc::new(Presence::new(
        hub.clone(),
        pool.clone(),
        settings.presence.clone(),
    ));
    presence
        .start()
        .await
        .context("registering this node's presence")?;
    let inventory = Arc::new(Inventory::new(hub.clone(), pool.clone()));
    let status = Arc::new(WalStatus::default());
    let (stop, stopped) = watch::channel(false);
    let worker = {
        let (url, slot) = (url.to_owned(), settings.slot.clone());
        let (hub, docs, status) = (hub.clone(), docs.clone(), status.clone());
        let presence = presence.clone();
        let (receipts, inventory) = (receipts.clone(), inventory.clone());
        tokio::spawn(async move {
            wal::run(
                &url, &slot, hub, docs, receipts, presence, inventory, status, stopped,
            )
            .await
        })
    };
    {
        let (receipts, pool, stopped) = (receipts.clone(), pool.clone(), stop.subscribe());
        tokio::spawn(async move { receipts.run(pool, stopped).await });
    }
    let presence_writer = tokio::spawn(presence.clone().run(stop.subscribe()));
    let channels = Arc::new(
        Channels::from_settings(&settings.notify.channels).context("notification providers")?,
    );
    let gateway = Arc::new(Gateway::new(
        hub,
        docs,
        receipts,
        inventory,
        presence,
        channels.vapid_public_key().map(str::to_owned),
        Store::new(pool.clone(), settings.gateway.replay_retention_secs),
        verifier,
        settings.gateway.clone(),
    ));
    tokio::spawn(crate::gateway::run_resync(gateway.clone()));
    let dispatch_stats = Arc::new(DispatchStats::default());
    tracing::info!(providers = ?channels.configured(), dispatchers = settings.notify.dispatchers, "notification delivery");
    for _ in 0..settings.notify.dispatchers {
        let dispatcher = Dispatcher::new(
            pool.clone(),
            channels.clone(),
            Arc::new(SystemClock),
            settings.notify.dispatch_batch,
            dispatch_stats.clone(),
        );
        let (url, stopped) = (url.to_owned(), stop.subscribe());
        tokio::spawn(async move { dispatcher.run(&url, stopped).await });
    }
    let outbox_stats = Arc::new(OutboxStats::default());
    for _ in 0..settings.notify.outbox_relays {
        let relay = Relay::new(
            pool.clone(),
            WebhookSender::new(
                settings
                    .notify
                    .channels
                    .http
                    .client()
                    .context("the webhook client")?,
            ),
            outbox_stats.clone(),
        );
        let (url, stopped) = (url.to_owned(), stop.subscribe());
        tokio::spawn(async move { relay.run(&url, stopped).await });
    }
    tokio::spawn(crate::maintenance::run(
        pool.clone(),
        settings.gateway.history_retention_days,
        stop.subscribe(),
    ));
    let app = gateway.router().merge(ops::router(OpsState {
        pool,
        wal: status,
        slot: settings.slot.clone(),
        gateway: gateway.clone(),
        dispatch: dispatch_stats,
        outbox: outbox_stats,
    }));
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let address = listener.local_addr()?;
    // Events are small frames written as they come: Nagle's algorithm would hold a frame back
    // until the client acknowledged the previous one (up to its 40 ms delayed ACK).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    tracing::info!(%address, "listening");
    if let Some(cluster) = &database.embedded {
        print_welcome(&address.to_string(), cluster);
    }
    let mut http_stop = stop.subscribe();
    let draining = gateway.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = http_stop.changed() => {}
            }
            tracing::info!("draining connections");
            draining.drain().await;
        })
        .await?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    // The presence changes of the last flush interval are written before the process exits.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), presence_writer).await;
    worker.await.context("replication worker panicked")?
}

/// What a newcomer needs to see an event flow, printed by `./run.sh`.
fn print_welcome(address: &str, cluster: &pgcluster::Cluster) {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(
                p.strip_prefix(&cwd)
                    .map(|r| format!("./{}", r.display()))
                    .unwrap_or_else(|_| p.display().to_string()),
            )
        })
        .unwrap_or_else(|| "triptrip-realtime".into());
    let psql = format!(
        "psql -h {} -p {} -U postgres {}",
        cluster.socket_dir().display(),
        cluster.port(),
        db::EMBEDDED_DB
    );
    println!(
        "\nTripTrip Realtime is running.\n\
         \n  WebSocket  ws://{address}/ws?token=<JWT>\
         \n  a token    {exe} token --user alice --room 'demo:*'\
         \n  watch      {exe} listen --room demo:lobby\
         \n  publish    {psql} -c \"SELECT realtime.publish('demo:lobby', 'hello', '{{\\\"text\\\": \\\"hi\\\"}}')\"\
         \n  health     curl http://{address}/ready\n"
    );
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

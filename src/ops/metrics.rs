use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::OpsState;

/// Slot figures straight from PostgreSQL, so they are right even when the worker is stuck.
const SLOT_SQL: &str = "SELECT active, \
        pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8, \
        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 \
    FROM pg_replication_slots WHERE slot_name = $1";

pub(super) async fn render(State(state): State<OpsState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    let wal = &state.wal;
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        &mut out,
        "triptrip_replication_streaming",
        "1 while the replication worker streams from its slot.",
        "gauge",
        f64::from(u8::from(wal.streaming.load(Ordering::Relaxed))),
    );
    let gw = &state.gateway;
    gauge(
        &mut out,
        "triptrip_connections",
        "Open client connections, all transports.",
        "gauge",
        gw.connections() as f64,
    );
    gauge(
        &mut out,
        "triptrip_docs_loaded",
        "Collaborative documents loaded in memory on this node.",
        "gauge",
        gw.docs.loaded() as f64,
    );
    gauge(
        &mut out,
        "triptrip_rooms",
        "Rooms with at least one subscriber on this node.",
        "gauge",
        gw.hub.rooms() as f64,
    );
    for (name, help, value) in [
        (
            "triptrip_replication_reconnects_total",
            "Replication connections re-established.",
            &wal.reconnects,
        ),
        (
            "triptrip_replication_transactions_total",
            "Committed transactions received.",
            &wal.transactions,
        ),
        (
            "triptrip_replication_changes_total",
            "Row changes received.",
            &wal.changes,
        ),
        (
            "triptrip_replication_received_bytes_total",
            "Replication payload bytes received.",
            &wal.bytes,
        ),
        (
            "triptrip_connections_total",
            "Client connections accepted.",
            &gw.stats.connections_total,
        ),
        (
            "triptrip_connections_rejected_total",
            "Connections refused by the per-user limit.",
            &gw.stats.rejected,
        ),
        (
            "triptrip_slow_consumer_disconnects_total",
            "Connections cut because their queue passed its byte budget.",
            &gw.stats.slow_consumers,
        ),
        (
            "triptrip_publishes_total",
            "Client publishes committed.",
            &gw.stats.publishes,
        ),
        (
            "triptrip_events_in_total",
            "Room events received from the WAL.",
            &gw.hub.stats.events,
        ),
        (
            "triptrip_deliveries_total",
            "Room events queued to subscribers.",
            &gw.hub.stats.deliveries,
        ),
        (
            "triptrip_doc_updates_stored_total",
            "Document updates from editors committed to realtime.doc_updates.",
            &gw.docs.stats.updates_stored,
        ),
        (
            "triptrip_doc_commits_total",
            "Group commits of document updates (each stores one or more updates).",
            &gw.docs.stats.commits,
        ),
        (
            "triptrip_doc_commit_failures_total",
            "Group commits that failed (the document was reloaded).",
            &gw.docs.stats.commit_failures,
        ),
        (
            "triptrip_doc_updates_refused_total",
            "Editor updates refused: oversized, undecodable or missing dependencies.",
            &gw.docs.stats.refused,
        ),
        (
            "triptrip_doc_remote_updates_total",
            "Document updates from other nodes or SQL, received through the WAL.",
            &gw.docs.stats.remote_updates,
        ),
        (
            "triptrip_doc_versions_total",
            "Document versions taken by this node.",
            &gw.docs.stats.versions,
        ),
    ] {
        gauge(
            &mut out,
            name,
            help,
            "counter",
            value.load(Ordering::Relaxed) as f64,
        );
    }
    gauge(
        &mut out,
        "triptrip_replication_lag_seconds",
        "Delay between the last transaction's commit and its hand-over to the hub.",
        "gauge",
        wal.lag_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    gauge(
        &mut out,
        "triptrip_replication_acknowledged_lsn",
        "Position confirmed to PostgreSQL, as a byte offset in the WAL.",
        "gauge",
        wal.acknowledged_lsn.load(Ordering::Relaxed) as f64,
    );
    let slot = match state.pool.get().await {
        Ok(client) => client
            .query_opt(SLOT_SQL, &[&state.slot])
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    if let Some(row) = slot {
        let active: bool = row.get(0);
        let lag: Option<f64> = row.get(1);
        let retained: Option<f64> = row.get(2);
        gauge(
            &mut out,
            "triptrip_replication_slot_active",
            "1 if a consumer holds the slot.",
            "gauge",
            f64::from(u8::from(active)),
        );
        gauge(
            &mut out,
            "triptrip_replication_lag_bytes",
            "WAL written but not yet confirmed by the slot (pg_current_wal_lsn - confirmed_flush_lsn).",
            "gauge",
            lag.unwrap_or(0.0),
        );
        gauge(
            &mut out,
            "triptrip_replication_retained_wal_bytes",
            "WAL kept on disk for the slot (pg_current_wal_lsn - restart_lsn).",
            "gauge",
            retained.unwrap_or(0.0),
        );
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::OpsState;
use crate::notify::dispatch::{ChannelStats, DispatchStats, CHANNELS, LATENCY_BUCKETS};
use crate::presence::Presence;

/// Slot figures straight from PostgreSQL, so they are right even when the worker is stuck.
const SLOT_SQL: &str = "SELECT active, \
        pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8, \
        pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 \
    FROM pg_replication_slots WHERE slot_name = $1";

/// Presence on this node: sessions, typing indicators and what the writer did.
fn presence_metrics(out: &mut String, presence: &Presence) {
    let stats = &presence.stats;
    for (name, help, kind, value) in [
        (
            "triptrip_presence_sessions",
            "Presence sessions on this node (connections, and closed ones within the grace period).",
            "gauge",
            presence.sessions() as u64,
        ),
        (
            "triptrip_presence_typing",
            "Typing indicators alive on this node.",
            "gauge",
            presence.typing_indicators() as u64,
        ),
        (
            "triptrip_presence_flushes_total",
            "Presence writes of this node (one statement each, at most one per flush interval).",
            "counter",
            stats.flushes.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_flush_failures_total",
            "Presence writes that failed (their changes go with the next one).",
            "counter",
            stats.flush_failures.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_ops_total",
            "Session changes, session ends and modes written.",
            "counter",
            stats.ops.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_rows_written_total",
            "Rows the presence writes inserted, updated or deleted.",
            "counter",
            stats.rows_written.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_heartbeats_total",
            "Node heartbeats written (each also reaps dead nodes).",
            "counter",
            stats.heartbeats.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_reaped_sessions_total",
            "Sessions of dead nodes this node ended.",
            "counter",
            stats.reaped.load(Ordering::Relaxed),
        ),
        (
            "triptrip_presence_typing_relayed_total",
            "Typing indicators relayed (starts and stops).",
            "counter",
            stats.typing_relayed.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Per-channel delivery counters and the created-to-sent latency histogram.
fn notification_metrics(out: &mut String, stats: &DispatchStats) {
    let _ = writeln!(
        out,
        "# HELP triptrip_notification_dispatch_rounds_total Dispatcher rounds (claim, send, record).\n\
         # TYPE triptrip_notification_dispatch_rounds_total counter\n\
         triptrip_notification_dispatch_rounds_total {}\n\
         # HELP triptrip_notification_dispatch_failures_total Dispatcher rounds that failed (their deliveries stay due).\n\
         # TYPE triptrip_notification_dispatch_failures_total counter\n\
         triptrip_notification_dispatch_failures_total {}",
        stats.rounds.load(Ordering::Relaxed),
        stats.round_failures.load(Ordering::Relaxed),
    );
    for (name, help, pick) in [
        (
            "triptrip_notification_sent_total",
            "Deliveries a provider accepted.",
            (|c: &ChannelStats| &c.sent) as fn(&ChannelStats) -> &AtomicU64,
        ),
        (
            "triptrip_notification_retries_total",
            "Delivery attempts that met a transient error (retried later unless retries ran out).",
            |c: &ChannelStats| &c.retried,
        ),
        (
            "triptrip_notification_failures_total",
            "Delivery attempts that failed for good (permanent error or dead target).",
            |c: &ChannelStats| &c.failed,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (channel, c) in CHANNELS.iter().zip(&stats.channels) {
            let _ = writeln!(
                out,
                "{name}{{channel=\"{channel}\"}} {}",
                pick(c).load(Ordering::Relaxed)
            );
        }
    }
    let name = "triptrip_notification_send_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} From the notification's commit to the provider's acceptance.\n# TYPE {name} histogram"
    );
    for (channel, c) in CHANNELS.iter().zip(&stats.channels) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&c.latency) {
            let _ = writeln!(
                out,
                "{name}_bucket{{channel=\"{channel}\",le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = c.latency[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{channel=\"{channel}\",le=\"+Inf\"}} {total}\n\
             {name}_sum{{channel=\"{channel}\"}} {}\n\
             {name}_count{{channel=\"{channel}\"}} {total}",
            c.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

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
    gauge(
        &mut out,
        "triptrip_inventory_watched_resources",
        "Inventory resources with at least one subscriber on this node.",
        "gauge",
        gw.inventory.watched() as f64,
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
        (
            "triptrip_outbox_to_rooms_total",
            "Outbox events relayed into rooms.",
            &state.outbox.to_rooms,
        ),
        (
            "triptrip_outbox_to_webhooks_total",
            "Outbox events a webhook accepted.",
            &state.outbox.to_webhooks,
        ),
        (
            "triptrip_outbox_webhook_failures_total",
            "Outbox webhook attempts that failed (the topic waits and retries).",
            &state.outbox.webhook_failures,
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
    presence_metrics(&mut out, &gw.presence);
    notification_metrics(&mut out, &state.dispatch);
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

//! Operator endpoints: `/health` (the process runs), `/ready` (database reachable,
//! replication streaming, not draining) and `/metrics` (Prometheus text format).

mod metrics;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;

use crate::gateway::Gateway;
use crate::notify::dispatch::DispatchStats;
use crate::outbox::OutboxStats;
use crate::wal::WalStatus;

/// Shared by the operator endpoints.
#[derive(Clone)]
pub struct OpsState {
    pub pool: Pool,
    pub wal: Arc<WalStatus>,
    pub slot: String,
    pub gateway: Arc<Gateway>,
    pub dispatch: Arc<DispatchStats>,
    pub outbox: Arc<OutboxStats>,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .with_state(state)
}

async fn ready(State(state): State<OpsState>) -> (StatusCode, Json<serde_json::Value>) {
    let database = match state.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let replication = state.wal.streaming.load(Ordering::Relaxed);
    let draining = state.gateway.is_draining();
    let code = if database && replication && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "database": database, "replication": replication, "draining": draining })),
    )
}

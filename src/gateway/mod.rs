//! The client-facing gateway: WebSocket (`/ws`), plus the shared state every transport uses.
//!
//! Guarantees: a client is authenticated before it can do anything, authorized once per join
//! (JWT `rooms` patterns or `realtime.can_join`) and per publish (`realtime.can_publish`), and
//! re-checked when its membership row is deleted. Limits (frame size, rooms, publish rate,
//! connections per user, queue bytes) answer with documented error codes.

mod activity;
mod docs;
mod http;
mod notifications;
mod poll;
mod presence;
mod publish;
mod replay;
mod session;
mod settings;
mod sse;
pub mod store;
mod ws;
mod yjs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;

pub use replay::run_resync;
pub use session::{Refusal, Session};
pub use settings::GatewaySettings;
use store::Store;

use crate::auth::Verifier;
use crate::docs::Docs;
use crate::hub::{CloseReason, Frame, Hub, Outbox};
use crate::inventory::Inventory;
use crate::notify::inapp::Receipts;
use crate::presence::Presence;
use crate::protocol;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct GatewayStats {
    pub connections_total: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub publishes: AtomicU64,
    pub rejected: AtomicU64,
}

pub struct Gateway {
    pub hub: Arc<Hub>,
    pub docs: Arc<Docs>,
    pub receipts: Arc<Receipts>,
    pub inventory: Arc<Inventory>,
    pub presence: Arc<Presence>,
    /// What `GET /api/push/vapid-public-key` answers (None: Web Push is not configured).
    pub vapid_public_key: Option<String>,
    pub store: Store,
    pub verifier: Verifier,
    pub settings: GatewaySettings,
    pub stats: GatewayStats,
    next_conn_id: AtomicU64,
    per_user: Mutex<HashMap<String, usize>>,
    outboxes: Mutex<HashMap<u64, Arc<Outbox>>>,
    draining: AtomicBool,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hub: Arc<Hub>,
        docs: Arc<Docs>,
        receipts: Arc<Receipts>,
        inventory: Arc<Inventory>,
        presence: Arc<Presence>,
        vapid_public_key: Option<String>,
        store: Store,
        verifier: Verifier,
        settings: GatewaySettings,
    ) -> Gateway {
        Gateway {
            hub,
            docs,
            receipts,
            inventory,
            presence,
            vapid_public_key,
            store,
            verifier,
            settings,
            stats: GatewayStats::default(),
            next_conn_id: AtomicU64::new(1),
            per_user: Mutex::default(),
            outboxes: Mutex::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// `/ws`, and the HTTP transports: `/sse`, `/poll` and `POST /api/rooms/{room}/messages`
    /// (behind the origin allow-list, with CORS for allowed origins).
    pub fn router(self: &Arc<Self>) -> Router {
        let rates = Arc::new(publish::UserRates::new(self.settings.publish_rate));
        let over_http = Router::new()
            .route("/sse", get(sse::stream).options(http::preflight))
            .route("/poll", get(poll::poll).options(http::preflight))
            .route(
                "/api/rooms/{room}/messages",
                post(publish::publish).options(http::preflight),
            )
            .route(
                "/api/rooms/{room}/presence",
                get(presence::room_presence).options(http::preflight),
            )
            .route("/api/docs/{doc}", get(docs::get).options(http::preflight))
            .route(
                "/api/docs/{doc}/versions",
                get(docs::versions).options(http::preflight),
            )
            .route(
                "/api/docs/{doc}/versions/{version}",
                get(docs::version).options(http::preflight),
            )
            .route(
                "/api/docs/{doc}/versions/{version}/restore",
                post(docs::restore).options(http::preflight),
            )
            .route(
                "/api/docs/{doc}/diff",
                get(docs::diff).options(http::preflight),
            )
            .route(
                "/api/notifications",
                get(notifications::list).options(http::preflight),
            )
            .route(
                "/api/activity",
                get(activity::feed).options(http::preflight),
            )
            .route(
                "/api/inventory",
                get(crate::inventory::list_resources).options(http::preflight),
            )
            .route(
                "/api/inventory/{resource_id}",
                get(crate::inventory::get_resource).options(http::preflight),
            )
            .route(
                "/api/reservations",
                get(crate::inventory::list_reservations).options(http::preflight),
            )
            .route(
                "/api/notifications/{action}",
                post(notifications::mark_action).options(http::preflight),
            )
            .route(
                "/api/notifications/preferences",
                get(notifications::preferences)
                    .put(notifications::set_preferences)
                    .options(http::preflight),
            )
            .route(
                "/api/push/vapid-public-key",
                get(notifications::vapid_public_key).options(http::preflight),
            )
            .route(
                "/api/push-tokens",
                post(notifications::register_push_token)
                    .delete(notifications::remove_push_token)
                    .options(http::preflight),
            )
            .layer(axum::Extension(rates))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                http::cors,
            ));
        Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/yjs/{doc}", get(yjs::upgrade))
            .merge(over_http)
            .with_state(self.clone())
    }

    /// The caller of an HTTP request (`?token=` or `Authorization: Bearer`), verified.
    pub fn authenticate(
        &self,
        query_token: Option<&str>,
        headers: &axum::http::HeaderMap,
    ) -> Result<crate::auth::Claims, Refusal> {
        http::authenticate(self, query_token, headers)
    }

    /// Open connections, all transports.
    pub fn connections(&self) -> usize {
        self.outboxes.lock().len()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Seed §3.3 draining: refuse new connections, ask every client to reconnect (to another
    /// node), and close what is still open after `settings.drain`.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let retry_after = 1_000;
        let notice = Frame::from(protocol::system_reconnect("draining", retry_after));
        let outboxes: Vec<_> = self.outboxes.lock().values().cloned().collect();
        for outbox in &outboxes {
            outbox.push(notice.clone());
        }
        let deadline = tokio::time::Instant::now() + self.settings.drain();
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for outbox in self.outboxes.lock().values() {
            outbox.close(CloseReason::Draining);
        }
    }

    /// Counts a connection for `user`, or refuses it past the per-user limit or while draining.
    pub fn admit(self: &Arc<Self>, user: &str, outbox: Arc<Outbox>) -> Result<Admission, Refusal> {
        if self.is_draining() {
            return Err(Refusal::new(
                "draining",
                "the server is restarting; reconnect",
            ));
        }
        {
            let mut per_user = self.per_user.lock();
            let count = per_user.entry(user.to_owned()).or_default();
            if *count >= self.settings.max_connections_per_user {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::new(
                    "too_many_connections",
                    format!(
                        "at most {} connections per user",
                        self.settings.max_connections_per_user
                    ),
                ));
            }
            *count += 1;
        }
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        self.outboxes.lock().insert(conn_id, outbox);
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            gateway: self.clone(),
            user: user.to_owned(),
            conn_id,
        })
    }
}

/// A counted connection; dropping it frees the user's slot.
pub struct Admission {
    gateway: Arc<Gateway>,
    user: String,
    pub conn_id: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gateway.outboxes.lock().remove(&self.conn_id);
        let mut per_user = self.gateway.per_user.lock();
        if let Some(count) = per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

//! Notifications over HTTP, for the signed-in user (the token's `sub`):
//!
//! - `GET /api/notifications?cursor=C&limit=N&unread=true`: newest first, keyset-paginated by
//!   (created_at, id), so pages stay stable while new notifications arrive;
//! - `POST /api/notifications/read` and `/dismiss` with `{"ids": [...]}`;
//! - `GET` and `PUT /api/notifications/preferences`: channel and type opt-outs, time zone and
//!   do-not-disturb window;
//! - `POST` and `DELETE /api/push-tokens`: register or remove a device;
//! - `GET /api/push/vapid-public-key`: the key browsers subscribe to Web Push with.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use super::http::{authenticate, decode_cursor, encode_cursor, invalid, refusal_response};
use super::{Gateway, Refusal};
use crate::protocol::{MarkAction, MAX_MARK_IDS};

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    token: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
    unread: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    ids: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    time_zone: Option<String>,
    dnd_start: Option<String>,
    dnd_end: Option<String>,
    #[serde(default)]
    preferences: Vec<Preference>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preference {
    channel: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushTokenBody {
    platform: String,
    token: String,
    p256dh: Option<String>,
    auth: Option<String>,
}

/// Most preference rows one `PUT` may set.
const MAX_PREFERENCES: usize = 100;

const LIST_SQL: &str = "SELECT id, seq, type, priority, title, body, payload, \
        to_json(created_at) #>> '{}', to_json(expires_at) #>> '{}', \
        to_json(read_at) #>> '{}' \
    FROM realtime.notifications \
    WHERE user_id = $1 AND seq IS NOT NULL AND dismissed_at IS NULL \
      AND (NOT $2 OR read_at IS NULL) \
      AND ($3::text IS NULL OR (created_at, id) < ($3::text::timestamptz, $4)) \
    ORDER BY created_at DESC, id DESC LIMIT $5";

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("request body: {e}")))
}

/// A database error as a refusal: bad input (SQLSTATE classes 22 and 23, and the functions'
/// own invalid_parameter_value) keeps its message; anything else is unavailability.
fn failed(e: tokio_postgres::Error) -> Refusal {
    match e.as_db_error() {
        Some(db)
            if db.code().code().starts_with("22")
                || db.code().code().starts_with("23")
                || *db.code() == SqlState::INVALID_PARAMETER_VALUE =>
        {
            Refusal::new("invalid_field", db.message())
        }
        _ => Refusal::new("unavailable", format!("database unavailable: {e}")),
    }
}

fn pool_failed(e: deadpool_postgres::PoolError) -> Refusal {
    Refusal::new("unavailable", format!("database unavailable: {e}"))
}

/// A handler's result as a response.
fn respond(result: Result<Value, Refusal>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

/// `GET /api/notifications`: one page, newest first, without dismissed notifications.
pub(super) async fn list(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    respond(list_page(&gateway, &query, &headers).await)
}

async fn list_page(
    gateway: &Gateway,
    query: &ListQuery,
    headers: &HeaderMap,
) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, query.token.as_deref(), headers)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit must be 1-{MAX_PAGE}")));
    }
    let (after_at, after_id) = match query.cursor.as_deref() {
        None => (None, 0),
        Some(cursor) => {
            let (at, id) = decode_cursor(cursor)
                .ok_or_else(|| invalid("cursor: not a cursor this API gave".into()))?;
            (Some(at), id)
        }
    };
    let client = gateway.store.pool().get().await.map_err(pool_failed)?;
    let unread_only = query.unread.unwrap_or(false);
    let rows = client
        .query(
            LIST_SQL,
            &[
                &claims.user,
                &unread_only,
                &after_at,
                &after_id,
                &(limit + 1),
            ],
        )
        .await
        .map_err(failed)?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next_cursor = more
        .then(|| page.last())
        .flatten()
        .map(|row| encode_cursor(row.get(7), row.get(0)));
    let notifications: Vec<Value> = page
        .iter()
        .map(|row| {
            json!({
                "id": row.get::<_, i64>(0),
                "seq": row.get::<_, i64>(1),
                "type": row.get::<_, &str>(2),
                "priority": row.get::<_, &str>(3),
                "title": row.get::<_, &str>(4),
                "body": row.get::<_, &str>(5),
                "payload": row.get::<_, Value>(6),
                "created_at": row.get::<_, &str>(7),
                "expires_at": row.get::<_, &str>(8),
                "read_at": row.get::<_, Option<&str>>(9),
            })
        })
        .collect();
    let unread = gateway
        .store
        .unread(&claims.user)
        .await
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    Ok(json!({
        "notifications": notifications,
        "next_cursor": next_cursor,
        "unread": unread,
    }))
}

async fn mark(
    gateway: &Gateway,
    token: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
    action: MarkAction,
) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, token, headers)?;
    let ids = body::<MarkBody>(bytes)?.ids;
    if ids.is_empty() || ids.len() > MAX_MARK_IDS {
        return Err(invalid(format!(
            "ids: 1 to {MAX_MARK_IDS} notification ids"
        )));
    }
    let changed = gateway
        .store
        .mark_notifications(&claims.user, &ids, action)
        .await
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    Ok(json!({ "changed": changed }))
}

/// `POST /api/notifications/read` and `POST /api/notifications/dismiss`.
pub(super) async fn mark_action(
    State(gateway): State<Arc<Gateway>>,
    Path(action): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let action = match action.as_str() {
        "read" => MarkAction::Read,
        "dismiss" => MarkAction::Dismiss,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    respond(mark(&gateway, query.token.as_deref(), &headers, &bytes, action).await)
}

/// `GET /api/notifications/preferences`.
pub(super) async fn preferences(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = authenticate(&gateway, query.token.as_deref(), &headers)?;
        read_preferences(&gateway, &claims.user).await
    };
    respond(result.await)
}

async fn read_preferences(gateway: &Gateway, user: &str) -> Result<Value, Refusal> {
    let client = gateway.store.pool().get().await.map_err(pool_failed)?;
    let profile = client
        .query_opt(
            "SELECT time_zone, to_char(dnd_start, 'HH24:MI'), to_char(dnd_end, 'HH24:MI') \
             FROM realtime.users WHERE user_id = $1",
            &[&user],
        )
        .await
        .map_err(failed)?;
    let rows = client
        .query(
            "SELECT channel, type, enabled FROM realtime.notification_preferences \
             WHERE user_id = $1 ORDER BY channel, type NULLS FIRST",
            &[&user],
        )
        .await
        .map_err(failed)?;
    let preferences: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "channel": row.get::<_, &str>(0),
                "type": row.get::<_, Option<&str>>(1),
                "enabled": row.get::<_, bool>(2),
            })
        })
        .collect();
    let (time_zone, dnd_start, dnd_end) = profile.map_or(
        ("UTC".to_owned(), "22:00".to_owned(), "07:00".to_owned()),
        |row| (row.get(0), row.get(1), row.get(2)),
    );
    Ok(json!({
        "time_zone": time_zone,
        "dnd_start": dnd_start,
        "dnd_end": dnd_end,
        "preferences": preferences,
    }))
}

/// `PUT /api/notifications/preferences`: changes what the body names, in one transaction;
/// nothing changes if any of it is invalid. Answers with the preferences as they now are.
pub(super) async fn set_preferences(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    respond(write_preferences(&gateway, query.token.as_deref(), &headers, &bytes).await)
}

async fn write_preferences(
    gateway: &Gateway,
    token: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, token, headers)?;
    let body = body::<PreferencesBody>(bytes)?;
    if body.preferences.len() > MAX_PREFERENCES {
        return Err(invalid(format!(
            "preferences: at most {MAX_PREFERENCES} entries"
        )));
    }
    let mut client = gateway.store.pool().get().await.map_err(pool_failed)?;
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute(
        "INSERT INTO realtime.users (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&claims.user],
    )
    .await
    .map_err(failed)?;
    tx.execute(
        "UPDATE realtime.users SET time_zone = coalesce($2, time_zone), \
             dnd_start = coalesce($3::text::time, dnd_start), \
             dnd_end = coalesce($4::text::time, dnd_end) \
         WHERE user_id = $1",
        &[
            &claims.user,
            &body.time_zone,
            &body.dnd_start,
            &body.dnd_end,
        ],
    )
    .await
    .map_err(failed)?;
    for p in &body.preferences {
        tx.execute(
            "INSERT INTO realtime.notification_preferences (user_id, channel, type, enabled) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT ON CONSTRAINT notification_preferences_key \
             DO UPDATE SET enabled = excluded.enabled, updated_at = now()",
            &[&claims.user, &p.channel, &p.kind, &p.enabled],
        )
        .await
        .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    drop(client);
    read_preferences(gateway, &claims.user).await
}

/// `POST /api/push-tokens`: registers a device for the user (a token registered before by
/// another user moves to this one).
pub(super) async fn register_push_token(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    respond(register(&gateway, query.token.as_deref(), &headers, &bytes).await)
}

async fn register(
    gateway: &Gateway,
    token: Option<&str>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, token, headers)?;
    let body = body::<PushTokenBody>(bytes)?;
    let mut client = gateway.store.pool().get().await.map_err(pool_failed)?;
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute(
        "INSERT INTO realtime.users (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&claims.user],
    )
    .await
    .map_err(failed)?;
    let row = tx
        .query_one(
            "INSERT INTO realtime.push_tokens (user_id, platform, token, p256dh, auth) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (platform, token) DO UPDATE SET user_id = excluded.user_id, \
                 p256dh = excluded.p256dh, auth = excluded.auth, created_at = now() \
             RETURNING id",
            &[
                &claims.user,
                &body.platform,
                &body.token,
                &body.p256dh,
                &body.auth,
            ],
        )
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(json!({ "id": row.get::<_, i64>(0) }))
}

/// `DELETE /api/push-tokens`: removes one of the user's devices.
pub(super) async fn remove_push_token(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let result = async {
        let claims = authenticate(&gateway, query.token.as_deref(), &headers)?;
        let body = body::<PushTokenBody>(&bytes)?;
        let client = gateway.store.pool().get().await.map_err(pool_failed)?;
        let removed = client
            .execute(
                "DELETE FROM realtime.push_tokens \
                 WHERE user_id = $1 AND platform = $2 AND token = $3",
                &[&claims.user, &body.platform, &body.token],
            )
            .await
            .map_err(failed)?;
        Ok(json!({ "removed": removed }))
    };
    respond(result.await)
}

/// `GET /api/push/vapid-public-key`: `{"public_key": …}` for `PushManager.subscribe`'s
/// `applicationServerKey`; 404 when this server has no VAPID key. No token needed: the key is
/// public.
pub(super) async fn vapid_public_key(State(gateway): State<Arc<Gateway>>) -> Response {
    match &gateway.vapid_public_key {
        Some(key) => Json(json!({ "public_key": key })).into_response(),
        None => refusal_response(&Refusal::new(
            "not_configured",
            "this server has no Web Push key (TRIPTRIP_VAPID_PRIVATE_KEY_FILE)",
        )),
    }
}

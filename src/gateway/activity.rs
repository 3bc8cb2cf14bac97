//! The activity feed over HTTP: `GET /api/activity?room=R&cursor=C&limit=N`.
//!
//! With `room`, the room's activities (collaborators and public), for users who may join it;
//! without, the signed-in user's feed (`realtime.activity_feed`: their own, their rooms', the
//! public ones of whom they follow). Newest first, keyset-paginated by (created_at, id), so
//! pages stay stable while activities arrive.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{authenticate, decode_cursor, encode_cursor, invalid, refusal_response};
use super::{Gateway, Refusal};

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 50;

#[derive(Deserialize)]
pub(super) struct FeedQuery {
    token: Option<String>,
    room: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

const COLUMNS: &str = "a.id, a.type, a.actor_id, a.actor, a.target_type, a.target_id, \
    a.target_name, a.room, a.context, a.visibility, to_json(a.created_at) #>> '{}'";

/// `GET /api/activity`.
pub(super) async fn feed(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<FeedQuery>,
    headers: HeaderMap,
) -> Response {
    match page(&gateway, &query, &headers).await {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

async fn page(gateway: &Gateway, query: &FeedQuery, headers: &HeaderMap) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, query.token.as_deref(), headers)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit must be 1-{MAX_PAGE}")));
    }
    let (before_at, before_id) = match query.cursor.as_deref() {
        None => (None, None),
        Some(cursor) => {
            let (at, id) = decode_cursor(cursor)
                .ok_or_else(|| invalid("cursor: not a cursor this API gave".into()))?;
            (Some(at), Some(id))
        }
    };
    if let Some(room) = &query.room {
        gateway.doc_access(&claims, room).await?;
    }
    let unavailable = |e: tokio_postgres::Error| {
        Refusal::new("unavailable", format!("database unavailable: {e}"))
    };
    let client = gateway
        .store
        .pool()
        .get()
        .await
        .map_err(|e| Refusal::new("unavailable", format!("database unavailable: {e}")))?;
    let rows = match &query.room {
        Some(room) => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM realtime.activities a \
                         WHERE a.room = $1 AND a.visibility IN ('collaborators', 'public') \
                           AND ($2::text IS NULL OR (a.created_at, a.id) < ($2::text::timestamptz, $3)) \
                         ORDER BY a.created_at DESC, a.id DESC LIMIT $4"
                    ),
                    &[room, &before_at, &before_id.unwrap_or(0), &(limit + 1)],
                )
                .await
        }
        None => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM realtime.activity_feed($1, $2::text::timestamptz, $3, $4) a"
                    ),
                    &[&claims.user, &before_at, &before_id, &((limit + 1) as i32)],
                )
                .await
        }
    }
    .map_err(unavailable)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|row| encode_cursor(row.get(10), row.get(0)));
    let activities: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut actor: Value = row.get(3);
            if let Some(fields) = actor.as_object_mut() {
                fields.insert("id".into(), json!(row.get::<_, &str>(2)));
            }
            json!({
                "id": row.get::<_, i64>(0),
                "type": row.get::<_, &str>(1),
                "actor": actor,
                "target": {
                    "type": row.get::<_, Option<&str>>(4),
                    "id": row.get::<_, Option<&str>>(5),
                    "name": row.get::<_, Option<&str>>(6),
                },
                "room": row.get::<_, Option<&str>>(7),
                "context": row.get::<_, Value>(8),
                "visibility": row.get::<_, &str>(9),
                "created_at": row.get::<_, &str>(10),
            })
        })
        .collect();
    Ok(json!({ "activities": activities, "next_cursor": next_cursor }))
}

//! `GET /api/rooms/{room}/presence`: the members of a room with their status and `last_seen`,
//! as the caller may see them (`realtime.room_presence`). Authorized like joining the room.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{authenticate, invalid, refusal_response, shown};
use super::{Gateway, Refusal};
use crate::presence::store;
use crate::protocol;

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

pub(super) async fn room_presence(
    State(gateway): State<Arc<Gateway>>,
    Path(room): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    match members(&gateway, &room, query.token.as_deref(), &headers).await {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

async fn members(
    gateway: &Gateway,
    room: &str,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Value, Refusal> {
    let claims = authenticate(gateway, token, headers)?;
    if !protocol::valid_room(room) {
        return Err(invalid(format!(
            "{:?} is not a room name (1 to 200 characters of A-Z a-z 0-9 _ . : -)",
            shown(room)
        )));
    }
    let allowed = claims.rooms.allows(room)
        || gateway
            .store
            .can_join(&claims.user, room)
            .await
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    if !allowed {
        return Err(Refusal::new(
            "forbidden",
            format!("you may not join {room}"),
        ));
    }
    let members = store::room_presence(gateway.store.pool(), room, &claims.user)
        .await
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let members: Vec<Value> = members
        .into_iter()
        .map(|m| json!({ "user": m.user, "status": m.status, "last_seen": m.last_seen }))
        .collect();
    Ok(json!({ "room": room, "members": members }))
}

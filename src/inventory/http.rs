//! Inventory over HTTP. Every endpoint takes a token (`?token=` or `Authorization: Bearer`):
//! the catalog is open to any signed-in user.
//!
//! - `GET /api/inventory/{resource_id}`: one resource's current state;
//! - `GET /api/inventory?kind=K&available=true&min_available=N&limit=L`: resources, cheapest
//!   first (the alternatives of a sold-out one);
//! - `GET /api/reservations?limit=L`: the user's latest reservations, newest first.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::command::MAX_QUANTITY;
use super::store;
use crate::gateway::{Gateway, Refusal};
use crate::protocol;

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

/// Query parameters, as text: malformed values get the protocol's error envelope.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    token: Option<String>,
    kind: Option<String>,
    available: Option<String>,
    min_available: Option<String>,
    limit: Option<String>,
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new("invalid_field", message)
}

fn respond(result: Result<Value, Refusal>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => {
            let status = match refusal.code {
                "not_found" => StatusCode::NOT_FOUND,
                "unauthorized" | "token_expired" => StatusCode::UNAUTHORIZED,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                [(CONTENT_TYPE, "application/json")],
                protocol::error_frame(refusal.code, &refusal.message),
            )
                .into_response()
        }
    }
}

fn limit(text: Option<&str>) -> Result<i64, Refusal> {
    match text {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// `GET /api/inventory/{resource_id}`.
pub(crate) async fn get_resource(
    State(gateway): State<Arc<Gateway>>,
    Path(resource_id): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        gateway.authenticate(query.token.as_deref(), &headers)?;
        if !protocol::valid_room(&resource_id) {
            return Err(invalid(
                "a resource_id is 1 to 200 characters of A-Z a-z 0-9 _ . : -",
            ));
        }
        let states = store::states(&gateway.inventory.pool, &[&resource_id]).await?;
        states
            .first()
            .map(|s| s.to_json())
            .ok_or_else(|| Refusal::new("not_found", format!("no resource {resource_id}")))
    };
    respond(result.await)
}

/// `GET /api/inventory`: filtered by `kind`, and by units left with `available=true` (at
/// least one) or `min_available=N`.
pub(crate) async fn list_resources(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        gateway.authenticate(query.token.as_deref(), &headers)?;
        let kind = query.kind.as_deref();
        if kind.is_some_and(|k| {
            k.is_empty()
                || k.len() > 50
                || !k
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        }) {
            return Err(invalid("kind is 1 to 50 characters of a-z 0-9 _"));
        }
        let mut min_available = match query.available.as_deref() {
            None | Some("false") => 0,
            Some("true") => 1,
            Some(_) => return Err(invalid("available must be true or false")),
        };
        if let Some(text) = query.min_available.as_deref() {
            min_available = text
                .parse()
                .ok()
                .filter(|n| (0..=MAX_QUANTITY).contains(n))
                .ok_or_else(|| {
                    invalid(format!(
                        "min_available must be an integer from 0 to {MAX_QUANTITY}"
                    ))
                })?;
        }
        let limit = limit(query.limit.as_deref())?;
        let states = store::list(
            &gateway.inventory.pool,
            kind,
            i32::try_from(min_available).unwrap_or(i32::MAX),
            limit,
        )
        .await?;
        let resources: Vec<Value> = states.iter().map(|s| s.to_json()).collect();
        Ok(json!({ "resources": resources }))
    };
    respond(result.await)
}

/// `GET /api/reservations`: the signed-in user's latest reservations.
pub(crate) async fn list_reservations(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let claims = gateway.authenticate(query.token.as_deref(), &headers)?;
        let limit = limit(query.limit.as_deref())?;
        let reservations =
            store::reservations(&gateway.inventory.pool, &claims.user, limit).await?;
        Ok(json!({ "reservations": reservations }))
    };
    respond(result.await)
}

//! What the inventory channel asks PostgreSQL: resource states, reservations and releases
//! (through `realtime.reserve` and `realtime.release`, which hold every rule).

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::events::ResourceState;
use crate::gateway::Refusal;

const STATE_COLUMNS: &str = "resource_id, kind, name, available::int8, total::int8, \
    price::text, currency, version, to_json(updated_at) #>> '{}'";

/// A database error as a refusal: an unknown resource or reservation is `not_found`, bad
/// input (SQLSTATE classes 22 and 23) keeps its message, anything else is unavailability.
pub(super) fn refusal(e: tokio_postgres::Error) -> Refusal {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::NO_DATA_FOUND => {
            Refusal::new("not_found", db.message())
        }
        Some(db) if db.code().code().starts_with("22") || db.code().code().starts_with("23") => {
            Refusal::new("invalid_field", db.message())
        }
        _ => Refusal::new("unavailable", format!("database unavailable: {e}")),
    }
}

fn pool_refusal(e: deadpool_postgres::PoolError) -> Refusal {
    Refusal::new("unavailable", format!("database unavailable: {e}"))
}

fn state(row: &Row) -> ResourceState {
    ResourceState {
        resource_id: row.get(0),
        kind: row.get(1),
        name: row.get(2),
        available: row.get(3),
        total: row.get(4),
        price: row.get(5),
        currency: row.get(6),
        version: row.get(7),
        updated_at: row.get(8),
    }
}

/// The current states of those of `ids` that exist.
pub(super) async fn states(pool: &Pool, ids: &[&str]) -> Result<Vec<ResourceState>, Refusal> {
    let client = pool.get().await.map_err(pool_refusal)?;
    let sql = format!("SELECT {STATE_COLUMNS} FROM realtime.inventory WHERE resource_id = ANY($1)");
    let rows = client.query(&sql, &[&ids]).await.map_err(refusal)?;
    Ok(rows.iter().map(state).collect())
}

/// Resources of `kind` (any kind when `None`) with at least `min_available` units, cheapest
/// first, then by name.
pub(super) async fn list(
    pool: &Pool,
    kind: Option<&str>,
    min_available: i32,
    limit: i64,
) -> Result<Vec<ResourceState>, Refusal> {
    let client = pool.get().await.map_err(pool_refusal)?;
    let sql = format!(
        "SELECT {STATE_COLUMNS} FROM realtime.inventory \
         WHERE ($1::text IS NULL OR kind = $1) AND available >= $2 \
         ORDER BY price, name, resource_id LIMIT $3"
    );
    let rows = client
        .query(&sql, &[&kind, &min_available, &limit])
        .await
        .map_err(refusal)?;
    Ok(rows.iter().map(state).collect())
}

/// `realtime.reserve` for `user`: the reservation as JSON (confirmed or rejected).
pub(super) async fn reserve(
    pool: &Pool,
    resource_id: &str,
    user: &str,
    quantity: i32,
    key: Option<&str>,
) -> Result<Value, Refusal> {
    let client = pool.get().await.map_err(pool_refusal)?;
    let row = client
        .query_one(
            "SELECT realtime.reserve($1, $2, $3, $4)",
            &[&resource_id, &user, &quantity, &key],
        )
        .await
        .map_err(refusal)?;
    Ok(row.get(0))
}

/// `realtime.release` of `user`'s reservation.
pub(super) async fn release(
    pool: &Pool,
    reservation_id: i64,
    user: &str,
) -> Result<Value, Refusal> {
    let client = pool.get().await.map_err(pool_refusal)?;
    let row = client
        .query_one("SELECT realtime.release($1, $2)", &[&reservation_id, &user])
        .await
        .map_err(refusal)?;
    Ok(row.get(0))
}

/// `user`'s latest reservations, newest first.
pub(super) async fn reservations(
    pool: &Pool,
    user: &str,
    limit: i64,
) -> Result<Vec<Value>, Refusal> {
    let client = pool.get().await.map_err(pool_refusal)?;
    let rows = client
        .query(
            "SELECT realtime.reservation_json(r) FROM realtime.reservations r \
             WHERE r.user_id = $1 ORDER BY r.created_at DESC, r.id DESC LIMIT $2",
            &[&user, &limit],
        )
        .await
        .map_err(refusal)?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

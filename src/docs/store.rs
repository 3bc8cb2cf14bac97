//! What documents ask PostgreSQL: load, group commit, versions and the JSON projection.

use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use serde_json::Value;
use tokio_postgres::IsolationLevel;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::gateway::store::StoreError;

/// A document as stored: its base version and the updates after it.
pub struct Stored {
    pub base: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
    /// Seq of the last update included.
    pub seq: i64,
}

impl Stored {
    /// The document these bytes describe. Stored bytes were validated when accepted; an update
    /// that no longer decodes (written by SQL) is skipped with a warning rather than making the
    /// document unloadable.
    pub fn build(&self, name: &str) -> Doc {
        let doc = Doc::new();
        let mut txn = doc.transact_mut();
        for bytes in self.base.iter().chain(&self.updates) {
            match Update::decode_v1(bytes) {
                Ok(update) => {
                    if let Err(e) = txn.apply_update(update) {
                        tracing::warn!(doc = name, error = %e, "skipping a stored update");
                    }
                }
                Err(e) => tracing::warn!(doc = name, error = %e, "skipping an undecodable update"),
            }
        }
        drop(txn);
        doc
    }
}

/// One version in the history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub version: i64,
    pub reason: String,
    pub restored_from: Option<i64>,
    pub user_id: Option<String>,
    pub upto_seq: i64,
    pub created_at: String,
}

pub async fn ensure(pool: &Pool, doc: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO realtime.docs (doc) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&doc],
        )
        .await?;
    Ok(())
}

/// The latest version and the updates after it, read in one snapshot.
pub async fn load(pool: &Pool, doc: &str) -> Result<Stored, StoreError> {
    let mut client = pool.get().await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let stored = read(&txn, doc).await?;
    txn.commit().await?;
    Ok(stored)
}

/// What [`load`] reads, within the caller's (repeatable read) transaction.
async fn read(txn: &Transaction<'_>, doc: &str) -> Result<Stored, StoreError> {
    let base = txn
        .query_opt(
            "SELECT state, upto_seq FROM realtime.doc_versions WHERE doc = $1 \
             ORDER BY version DESC LIMIT 1",
            &[&doc],
        )
        .await?;
    let (base, from): (Option<Vec<u8>>, i64) = match base {
        Some(row) => (Some(row.get(0)), row.get(1)),
        None => (None, 0),
    };
    let rows = txn
        .query(
            "SELECT seq, update FROM realtime.doc_updates WHERE doc = $1 AND seq > $2 ORDER BY seq",
            &[&doc, &from],
        )
        .await?;
    let seq = rows.last().map_or(from, |row| row.get(0));
    Ok(Stored {
        base,
        updates: rows.into_iter().map(|row| row.get(1)).collect(),
        seq,
    })
}

/// Stores a batch of updates in one transaction; returns the seq of the last one. Seqs are
/// reserved under the document's row lock, so they are gap-free and in commit order.
pub async fn commit(
    pool: &Pool,
    doc: &str,
    origin: &str,
    updates: &[Vec<u8>],
    users: &[&str],
) -> Result<i64, StoreError> {
    let mut client = pool.get().await?;
    let txn = client.transaction().await?;
    let n = updates.len() as i64;
    let last: i64 = txn
        .query_one(
            "UPDATE realtime.docs SET last_seq = last_seq + $2 WHERE doc = $1 RETURNING last_seq",
            &[&doc, &n],
        )
        .await?
        .get(0);
    txn.execute(
        "INSERT INTO realtime.doc_updates (doc, seq, update, origin, user_id) \
         SELECT $1, $2 + u.ord, u.upd, $3, u.usr \
         FROM unnest($4::bytea[], $5::text[]) WITH ORDINALITY AS u(upd, usr, ord)",
        &[&doc, &(last - n), &origin, &updates, &users],
    )
    .await?;
    txn.commit().await?;
    Ok(last)
}

/// Takes a version from what is stored: the latest version plus the updates after it, merged
/// into one state, then deletes the updates it covers (compaction). Returns the new version,
/// or `None` when nothing changed since the latest version (or another node holds the
/// document's version lock right now, for `reason == "edit"`).
pub async fn cut_version(
    pool: &Pool,
    doc: &str,
    reason: &str,
    restored_from: Option<i64>,
    user: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let mut client = pool.get().await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let lock =
        "SELECT pg_try_advisory_xact_lock(hashtextextended('triptrip.doc_versions:' || $1, 0))";
    let locked: bool = txn.query_one(lock, &[&doc]).await?.get(0);
    if !locked {
        return Ok(None);
    }
    let stored = read(&txn, doc).await?;
    if stored.updates.is_empty() && reason == "edit" {
        return Ok(None);
    }
    let upto = stored.seq;
    let name = doc.to_owned();
    let state = tokio::task::spawn_blocking(move || {
        let doc = stored.build(&name);
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        state
    })
    .await
    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let version: i64 = txn
        .query_one(
            "INSERT INTO realtime.doc_versions (doc, state, upto_seq, reason, restored_from, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING version",
            &[&doc, &state, &upto, &reason, &restored_from, &user],
        )
        .await?
        .get(0);
    txn.execute(
        "DELETE FROM realtime.doc_updates WHERE doc = $1 AND seq <= $2",
        &[&doc, &upto],
    )
    .await?;
    txn.commit().await?;
    Ok(Some(version))
}

/// Writes the JSON projection, unless a newer one is already there.
pub async fn write_content(
    pool: &Pool,
    doc: &str,
    content: &Value,
    seq: i64,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE realtime.docs \
             SET content = $2::text::jsonb, content_seq = $3, content_updated_at = now() \
             WHERE doc = $1 AND content_seq <= $3",
            &[&doc, &content.to_string(), &seq],
        )
        .await?;
    Ok(())
}

/// The history, newest first: versions older than `before` (all when `None`), at most `limit`.
pub async fn versions(
    pool: &Pool,
    doc: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<VersionInfo>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT version, reason, restored_from, user_id, upto_seq, \
                    to_json(created_at) #>> '{}' \
             FROM realtime.doc_versions \
             WHERE doc = $1 AND ($2::bigint IS NULL OR version < $2) \
             ORDER BY version DESC LIMIT $3",
            &[&doc, &before, &limit],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| VersionInfo {
            version: row.get(0),
            reason: row.get(1),
            restored_from: row.get(2),
            user_id: row.get(3),
            upto_seq: row.get(4),
            created_at: row.get(5),
        })
        .collect())
}

/// A version's state, if the document has it.
pub async fn version_state(
    pool: &Pool,
    doc: &str,
    version: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state FROM realtime.doc_versions WHERE doc = $1 AND version = $2",
            &[&doc, &version],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

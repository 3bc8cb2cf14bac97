//! Documents over HTTP: the JSON projection, version history, diffs and restore.
//!
//! `GET /api/docs/{doc}`, `GET /api/docs/{doc}/versions`, `GET /api/docs/{doc}/versions/{v}`,
//! `GET /api/docs/{doc}/diff?from=V&to=W` and `POST /api/docs/{doc}/versions/{v}/restore`,
//! authorized like the room of the same name (restore needs write access).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{authenticate, refusal_response};
use super::{Gateway, Refusal};
use crate::auth::Claims;
use crate::docs::{content, store};
use crate::gateway::store::StoreError;
use crate::protocol;

/// What a user may do with a document.
pub(super) struct Access {
    pub(super) write: bool,
}

impl Gateway {
    /// Read access by the token's `rooms` patterns or `realtime.can_join`; write access by the
    /// patterns or `realtime.can_publish`.
    pub(super) async fn doc_access(&self, claims: &Claims, doc: &str) -> Result<Access, Refusal> {
        if !protocol::valid_room(doc) {
            return Err(Refusal::new(
                "invalid_field",
                "a document name is 1-200 characters from A-Z a-z 0-9 _ . : -",
            ));
        }
        if claims.rooms.allows(doc) {
            return Ok(Access { write: true });
        }
        let unavailable = |e: StoreError| Refusal::new(e.code(), e.to_string());
        if !self
            .store
            .can_join(&claims.user, doc)
            .await
            .map_err(unavailable)?
        {
            return Err(Refusal::new("forbidden", format!("you may not open {doc}")));
        }
        let write = self
            .store
            .can_publish(&claims.user, doc)
            .await
            .map_err(unavailable)?;
        Ok(Access { write })
    }
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    pub(super) token: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct VersionsQuery {
    token: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct DiffQuery {
    token: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn authorize(
    gateway: &Gateway,
    token: Option<&str>,
    headers: &HeaderMap,
    doc: &str,
    write: bool,
) -> Result<Claims, Response> {
    let claims = authenticate(gateway, token, headers).map_err(|r| refusal_response(&r))?;
    let access = gateway
        .doc_access(&claims, doc)
        .await
        .map_err(|r| refusal_response(&r))?;
    if write && !access.write {
        return Err(refusal_response(&Refusal::new(
            "forbidden",
            format!("you may not change {doc}"),
        )));
    }
    Ok(claims)
}

fn failed(e: StoreError) -> Response {
    refusal_response(&Refusal::new(e.code(), e.to_string()))
}

fn not_found(message: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [("content-type", "application/json")],
        protocol::error_frame("not_found", &message),
    )
        .into_response()
}

/// `GET /api/docs/{doc}`: the document as JSON, current to the last stored update.
pub(super) async fn get(
    State(gateway): State<Arc<Gateway>>,
    Path(doc): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&gateway, query.token.as_deref(), &headers, &doc, false).await
    {
        return response;
    }
    match gateway.docs.json(&doc).await {
        Ok((content, seq)) => {
            Json(json!({ "doc": doc, "seq": seq, "content": content })).into_response()
        }
        Err(e) => failed(e),
    }
}

/// `GET /api/docs/{doc}/versions?before=V&limit=N`: the history, newest first.
pub(super) async fn versions(
    State(gateway): State<Arc<Gateway>>,
    Path(doc): Path<String>,
    Query(query): Query<VersionsQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&gateway, query.token.as_deref(), &headers, &doc, false).await
    {
        return response;
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return refusal_response(&Refusal::new("invalid_field", "limit must be 1-500"));
    }
    match store::versions(gateway.docs.pool(), &doc, query.before, limit).await {
        Ok(versions) => {
            let next = (versions.len() as i64 == limit)
                .then(|| versions.last().map(|v| v.version))
                .flatten();
            Json(json!({ "doc": doc, "versions": versions, "next_before": next })).into_response()
        }
        Err(e) => failed(e),
    }
}

/// A version's content, or the current content for `current`.
async fn content_of(gateway: &Gateway, doc: &str, which: &str) -> Result<Value, Response> {
    if which == "current" {
        return gateway.docs.json(doc).await.map(|(c, _)| c).map_err(failed);
    }
    let version: i64 = which.parse().map_err(|_| {
        refusal_response(&Refusal::new(
            "invalid_field",
            format!(
                "a version is a number or current, not {}",
                super::http::shown(which)
            ),
        ))
    })?;
    let state = store::version_state(gateway.docs.pool(), doc, version)
        .await
        .map_err(failed)?
        .ok_or_else(|| not_found(format!("{doc} has no version {version}")))?;
    tokio::task::spawn_blocking(move || crate::docs::state_json(&state))
        .await
        .map_err(|e| failed(StoreError::Unavailable(e.to_string())))?
        .map_err(|e| failed(StoreError::Invalid(e)))
}

/// `GET /api/docs/{doc}/versions/{version}`: one version's content.
pub(super) async fn version(
    State(gateway): State<Arc<Gateway>>,
    Path((doc, version)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&gateway, query.token.as_deref(), &headers, &doc, false).await
    {
        return response;
    }
    match content_of(&gateway, &doc, &version).await {
        Ok(content) => {
            Json(json!({ "doc": doc, "version": version, "content": content })).into_response()
        }
        Err(response) => response,
    }
}

/// `GET /api/docs/{doc}/diff?from=V&to=W`: what changed between two versions (`to` defaults to
/// the current content).
pub(super) async fn diff(
    State(gateway): State<Arc<Gateway>>,
    Path(doc): Path<String>,
    Query(query): Query<DiffQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&gateway, query.token.as_deref(), &headers, &doc, false).await
    {
        return response;
    }
    let Some(from) = query.from else {
        return refusal_response(&Refusal::new(
            "invalid_field",
            "from (a version) is required",
        ));
    };
    let to = query.to.unwrap_or_else(|| "current".into());
    let old = match content_of(&gateway, &doc, &from).await {
        Ok(content) => content,
        Err(response) => return response,
    };
    let new = match content_of(&gateway, &doc, &to).await {
        Ok(content) => content,
        Err(response) => return response,
    };
    Json(json!({ "doc": doc, "from": from, "to": to, "changes": content::diff(&old, &new) }))
        .into_response()
}

/// `POST /api/docs/{doc}/versions/{version}/restore`: makes the document's content equal to
/// the version's, as a new change every editor receives; history is kept.
pub(super) async fn restore(
    State(gateway): State<Arc<Gateway>>,
    Path((doc, version)): Path<(String, i64)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let claims = match authorize(&gateway, query.token.as_deref(), &headers, &doc, true).await {
        Ok(claims) => claims,
        Err(response) => return response,
    };
    match gateway.docs.restore(&doc, version, &claims.user).await {
        Ok(Some(new_version)) => Json(json!({
            "doc": doc,
            "restored_from": version,
            "version": new_version,
        }))
        .into_response(),
        Ok(None) => not_found(format!("{doc} has no version {version}")),
        Err(e) => failed(e),
    }
}

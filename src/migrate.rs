//! Schema migrations (refinery, embedded in the binary), run under an advisory lock so that
//! nodes starting together apply each migration exactly once.

use anyhow::Context;

refinery::embed_migrations!("migrations");

/// Arbitrary key of the advisory lock that serialises migrations across nodes.
const MIGRATION_LOCK: i64 = 0x7472_6970_7472_6970;

/// Applies pending migrations; returns how many were applied.
pub async fn run(client: &mut tokio_postgres::Client) -> anyhow::Result<usize> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = migrations::runner().run_async(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = report.context("running migrations")?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "applied migration");
    }
    Ok(report.applied_migrations().len())
}

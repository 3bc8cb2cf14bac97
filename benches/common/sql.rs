//! SQL from the orchestrator: connections, and writers that each run one statement at a steady
//! rate, spread evenly in time over all writers. A writer's failures are counted (the first
//! three printed) and do not stop it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use super::{BoxError, Histogram};

/// A client on `url`, its connection driven by a task of its own.
pub(crate) async fn connect(url: &str) -> Result<Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// One writer of [`write_paced`].
pub(crate) trait PacedWriter: Send + 'static {
    /// Runs this writer's statement for the `j`th time; returns its round trip, timed from just
    /// before the statement is sent.
    fn write(
        &mut self,
        j: usize,
    ) -> impl Future<Output = Result<Duration, tokio_postgres::Error>> + Send;
}

/// What [`write_paced`] did.
pub(crate) struct PacedWrites<W> {
    /// The writers, in the order they were given.
    pub(crate) writers: Vec<W>,
    /// Statements that succeeded.
    pub(crate) written: u64,
    pub(crate) failures: u64,
    /// Round trips of the statements that succeeded, in µs.
    pub(crate) round_trips: Histogram,
}

/// Runs `writers`, each `per_writer` times a second from `start` until `end`, writer `w` offset
/// by `w / writers.len()` of a period; returns when all are done.
pub(crate) async fn write_paced<W: PacedWriter>(
    writers: Vec<W>,
    per_writer: f64,
    start: Instant,
    end: Instant,
) -> Result<PacedWrites<W>, BoxError> {
    let round_trips = Arc::new(Histogram::default());
    let failures = Arc::new(AtomicU64::new(0));
    let count = writers.len();
    let mut tasks = Vec::new();
    for (w, mut writer) in writers.into_iter().enumerate() {
        let (round_trips, failures) = (round_trips.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let period = 1.0 / per_writer;
            let offset = w as f64 * period / count as f64;
            let mut written = 0u64;
            let mut j = 0usize;
            loop {
                let at = start + Duration::from_secs_f64(offset + j as f64 * period);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                match writer.write(j).await {
                    Ok(round_trip) => {
                        written += 1;
                        round_trips.record(round_trip.as_micros() as u64);
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("writer {w}: {e}");
                        }
                    }
                }
                j += 1;
            }
            (writer, written)
        }));
    }
    let mut done = PacedWrites {
        writers: Vec::with_capacity(count),
        written: 0,
        failures: 0,
        round_trips: Histogram::default(),
    };
    for task in tasks {
        let (writer, written) = task.await?;
        done.writers.push(writer);
        done.written += written;
    }
    done.failures = failures.load(Ordering::Relaxed);
    done.round_trips.merge(&round_trips);
    Ok(done)
}

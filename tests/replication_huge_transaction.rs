//! A 1,000,000-row transaction streams through in memory that does not grow with its size.
//! (Its own test binary, so no other test's allocations blur the measurement.)

mod common;

use std::time::Duration;

use common::*;
use replication::Event;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_transaction_streams_in_bounded_memory() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "huge", "pub").await;
    client
        .execute(
            "INSERT INTO items (room, payload) SELECT 'huge', \
               jsonb_build_object('n', g, 'pad', repeat('x', 100)) FROM generate_series(1, 1000000) g",
            &[],
        )
        .await
        .unwrap();
    let before = rss_kb();
    let mut peak = before;
    let mut rows = 0u64;
    read_until(&mut stream, Duration::from_secs(300), |e| {
        if inserted_id(e).is_some() {
            rows += 1;
            if rows % 10_000 == 0 {
                peak = peak.max(rss_kb());
            }
        }
        matches!(e, Event::Commit(_))
    })
    .await;
    assert_eq!(rows, 1_000_000);
    let growth_mb = (peak.saturating_sub(before)) / 1024;
    // The transaction is about 150 MB of row data; buffering it would show here.
    assert!(
        growth_mb < 32,
        "memory grew by {growth_mb} MB while streaming"
    );
}

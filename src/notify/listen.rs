//! Wake-ups from `LISTEN`: a hint that work may be due, never the data itself (workers poll
//! as well, and a missed notification only delays a round).

use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// Wakes `wake` on every `NOTIFY channel`, reconnecting after failures. It owns its
/// connection: pooled connections would drop notifications.
pub async fn listen(database_url: &str, channel: &str, wake: &Notify) {
    loop {
        if let Err(e) = listen_once(database_url, channel, wake).await {
            tracing::warn!(error = %e, channel, "wake-ups unavailable; polling meanwhile");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(database_url: &str, channel: &str, wake: &Notify) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(database_url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    while rx.recv().await.is_some() {
        wake.notify_one();
    }
    driver.await??;
    Ok(())
}

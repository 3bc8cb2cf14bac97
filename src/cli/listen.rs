//! `triptrip-realtime listen`: join a room as a client and print every frame, one JSON line
//! each. Mints its own short-lived token with the server's settings (same data directory).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use triptrip_realtime::auth::Verifier;
use triptrip_realtime::config::Settings;

/// Options of the `listen` command.
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// The room to join (e.g. `demo:lobby`).
    #[arg(long)]
    pub(crate) room: String,

    /// Replay events after this seq before going live.
    #[arg(long)]
    pub(crate) since: Option<u64>,

    /// The user to listen as.
    #[arg(long, default_value = "listener")]
    pub(crate) user: String,

    /// The server's WebSocket URL; defaults to the one `--listen` describes.
    #[arg(long)]
    pub(crate) url: Option<String>,
}

pub(crate) async fn run(settings: &Settings, args: &ListenArgs) -> anyhow::Result<()> {
    let verifier = Verifier::from_settings(settings)?;
    let token = verifier.issue(
        &args.user,
        std::slice::from_ref(&args.room),
        Duration::from_secs(24 * 3600),
    )?;
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("ws://{}/ws", settings.listen));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}"))
        .await
        .with_context(|| format!("connecting to {url} (is the server running?)"))?;
    let mut join = json!({ "type": "room:join", "id": "listen", "data": { "room": args.room } });
    if let Some(since) = args.since {
        join["data"]["since"] = since.into();
    }
    ws.send(Message::Text(join.to_string().into())).await?;
    let mut stdout = std::io::stdout();
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => {
                if text.contains(r#""type":"ping""#) {
                    ws.send(Message::Text(json!({ "type": "pong" }).to_string().into()))
                        .await?;
                    continue;
                }
                writeln!(stdout, "{text}")?;
                stdout.flush()?;
            }
            Message::Close(frame) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                bail!("the server closed the connection {reason}");
            }
            _ => {}
        }
    }
    Ok(())
}

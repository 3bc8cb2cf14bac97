//! A real `triptrip-realtime serve` process on a private cluster, and WebSocket clients.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use pgcluster::Cluster;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-for-integration-tests";
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HS256 token for `user` granting `rooms`, valid for `ttl_secs`.
pub fn token(user: &str, rooms: &[&str], ttl_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "rooms": rooms, "exp": now + ttl_secs, "iat": now }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub struct TestServer {
    pub child: Option<Child>,
    pub port: u16,
    pub url: String,
    envs: Vec<(String, String)>,
}

impl TestServer {
    /// Starts the server on `cluster` with short test timings plus `envs`, and waits until ready.
    pub async fn start(cluster: &Cluster, envs: &[(&str, &str)]) -> TestServer {
        let mut server = TestServer {
            child: None,
            port: free_port(),
            url: cluster.url("postgres"),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_triptrip-realtime"));
        command
            .arg("serve")
            .env("DATABASE_URL", &self.url)
            .env("TRIPTRIP_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("TRIPTRIP_JWT_SECRET", SECRET)
            .env("TRIPTRIP_DRAIN_MS", "500")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.envs {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("spawn the server"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/ready", None, "").await {
                return;
            }
            assert!(Instant::now() < deadline, "server not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, then start again on the same port and database.
    pub async fn kill_and_restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://127.0.0.1:{}/ws?token={t}", self.port),
            None => format!("ws://127.0.0.1:{}/ws", self.port),
        }
    }

    pub async fn connect(&self, user: &str, rooms: &[&str]) -> Client {
        Client::connect(&self.ws_url(Some(&token(user, rooms, 3600)))).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw HTTP/1.1 request; returns status and body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames read while looking for a specific one, handed out by `recv` in order.
    pending: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        let mut client = Client {
            ws,
            next_id: 0,
            pending: Default::default(),
        };
        let hello = client.recv().await.expect("system:connected");
        assert_eq!(hello["type"], "system:connected", "{hello}");
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends `{type, id, data}` and returns the id.
    pub async fn request(&mut self, kind: &str, data: Value) -> String {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        self.send(json!({ "type": kind, "id": id, "data": data }))
            .await;
        id
    }

    /// The next JSON frame that is not a heartbeat, or None when the socket closed.
    pub async fn recv(&mut self) -> Option<Value> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => self.read_frame().await,
        }
    }

    async fn read_frame(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")?;
            match message {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).expect("JSON frame");
                    if v["type"] == "ping" || v["type"] == "pong" {
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The first frame (pending or new) that `wanted` accepts; others stay pending, in order.
    pub async fn find(&mut self, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i);
        }
        loop {
            let frame = self.read_frame().await?;
            if wanted(&frame) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Waits for the ack of `id` and returns its `data`.
    pub async fn ack(&mut self, id: &str) -> Value {
        let frame = self
            .find(|f| f["type"] == "ack" && f["data"]["original_id"] == id)
            .await
            .expect("socket open while waiting for an ack");
        frame["data"].clone()
    }

    /// Joins and returns the ack data (status success or error).
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> Value {
        let data = match since {
            Some(since) => json!({ "room": room, "since": since }),
            None => json!({ "room": room }),
        };
        let id = self.request("room:join", data).await;
        self.ack(&id).await
    }

    /// Collects `room:message` frames until `n` arrived; returns (room, seq, event payload).
    pub async fn messages(&mut self, n: usize) -> Vec<(String, u64, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self
                .recv()
                .await
                .expect("socket open while waiting for messages");
            if frame["type"] == "room:message" {
                out.push((
                    frame["room"].as_str().unwrap().to_owned(),
                    frame["seq"].as_u64().unwrap(),
                    frame["data"]["payload"].clone(),
                ));
            }
        }
        out
    }

    /// Waits for a frame of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.find(|f| f["type"] == kind)
            .await
            .unwrap_or_else(|| panic!("socket closed waiting for {kind}"))
    }
}

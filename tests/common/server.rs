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
        self.restart().await;
    }

    /// Starts the server again (after [`Self::kill9`]) and waits until it is ready.
    pub async fn restart(&mut self) {
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

/// A private cluster, a server on it (with `envs`), and a SQL client for writing as a service.
pub async fn setup(envs: &[(&str, &str)]) -> (Cluster, TestServer, tokio_postgres::Client) {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let server = TestServer::start(&cluster, envs).await;
    let sql = super::sql_client(&cluster.url("postgres")).await;
    (cluster, server, sql)
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

/// A streamed HTTP/1.1 response: status and headers, then the body read incrementally
/// (chunked transfer coding decoded), line by line or as Server-Sent Events.
pub struct HttpStream {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Comment lines (`:` keep-alives) skipped so far.
    pub comments: usize,
    reader: tokio::io::BufReader<TcpStream>,
    chunked: bool,
    content_left: Option<usize>,
    body: Vec<u8>,
    ended: bool,
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

impl SseEvent {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

/// Sends `GET path` with `headers` and reads the response head; the body stays on the wire.
pub async fn http_stream(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpStream {
    http_stream_with(port, path, headers, None).await
}

/// Like [`http_stream`], with the client socket's receive buffer set to `recv_buffer` bytes
/// (a reader that stops reading then backs up the server quickly).
pub async fn http_stream_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> HttpStream {
    http_request(port, "GET", path, headers, recv_buffer).await
}

/// Sends a bodiless `method path` request with `headers` and reads the response head.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> HttpStream {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut line))
        .await
        .expect("a response in time")
        .unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut response_headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            response_headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |name: &str| {
        response_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let content_left = find("content-length").and_then(|v| v.parse().ok());
    HttpStream {
        status,
        headers: response_headers,
        comments: 0,
        reader,
        chunked,
        content_left,
        body: Vec::new(),
        ended: false,
    }
}

impl HttpStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the body; false at its end.
    async fn fill(&mut self) -> bool {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        if self.ended {
            return false;
        }
        if self.chunked {
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
                self.ended = true;
                return false;
            }
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16).expect("a chunk size");
            if size == 0 {
                self.ended = true;
                return false;
            }
            let start = self.body.len();
            self.body.resize(start + size, 0);
            if self
                .reader
                .read_exact(&mut self.body[start..])
                .await
                .is_err()
            {
                self.ended = true;
                return false;
            }
            let mut crlf = [0u8; 2];
            let _ = self.reader.read_exact(&mut crlf).await;
            return true;
        }
        let mut buf = vec![0u8; 16 * 1024];
        let want = self
            .content_left
            .map_or(buf.len(), |left| left.min(buf.len()));
        if want == 0 {
            self.ended = true;
            return false;
        }
        match self.reader.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => {
                self.ended = true;
                false
            }
            Ok(n) => {
                self.body.extend_from_slice(&buf[..n]);
                if let Some(left) = &mut self.content_left {
                    *left -= n;
                }
                true
            }
        }
    }

    /// The next body line (without its line ending), or None at the end of the body.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.body.iter().position(|&b| b == b'\n') {
                let rest = self.body.split_off(at + 1);
                let mut line = std::mem::replace(&mut self.body, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8(line).expect("UTF-8 body"));
            }
            if !self.fill().await {
                if self.body.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut self.body);
                return Some(String::from_utf8(line).expect("UTF-8 body"));
            }
        }
    }

    /// The rest of the body.
    pub async fn body(mut self) -> String {
        while tokio::time::timeout(WAIT, self.fill())
            .await
            .expect("the body in time")
        {}
        String::from_utf8(std::mem::take(&mut self.body)).expect("UTF-8 body")
    }

    /// The next event (keep-alive comments skipped), or None when the stream ended. Panics
    /// after [`WAIT`] without one.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(WAIT, self.next_event_now())
            .await
            .expect("an event in time")
    }

    async fn next_event_now(&mut self) -> Option<SseEvent> {
        let mut event = SseEvent {
            event: "message".into(),
            data: String::new(),
            id: None,
            retry: None,
        };
        let mut fields = 0;
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            fields += 1;
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.event = value.to_owned(),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                "id" => event.id = Some(value.to_owned()),
                "retry" => event.retry = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// Waits for an event of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> SseEvent {
        loop {
            let event = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("the stream ended waiting for {kind}"));
            if event.event == kind {
                return event;
            }
        }
    }

    /// Collects `room:message` events until `n` arrived.
    pub async fn messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = self
                .next_event()
                .await
                .expect("stream open while waiting for messages");
            if event.event == "room:message" {
                out.push(event);
            }
        }
        out
    }
}

impl TestServer {
    /// Opens `/sse?rooms=…&token=…` with extra request headers.
    pub async fn sse(&self, rooms: &str, token: &str, headers: &[(&str, &str)]) -> HttpStream {
        http_stream(
            self.port,
            &format!("/sse?rooms={rooms}&token={token}"),
            headers,
        )
        .await
    }

    /// One `/poll?rooms=…&timeout_ms=…` with a bearer token; returns status and JSON body.
    pub async fn poll(&self, rooms: &str, token: &str, timeout_ms: u64) -> (u16, Value) {
        let path = format!("/poll?rooms={rooms}&timeout_ms={timeout_ms}");
        let (status, body) = http(self.port, "GET", &path, Some(token), "")
            .await
            .expect("a poll response");
        let body =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"));
        (status, body)
    }

    /// `POST /api/rooms/{room}/messages` with a bearer token; returns status and JSON body.
    pub async fn publish_http(&self, room: &str, token: &str, body: &str) -> (u16, Value) {
        let path = format!("/api/rooms/{room}/messages");
        let (status, body) = http(self.port, "POST", &path, Some(token), body)
            .await
            .expect("a publish response");
        let body =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"));
        (status, body)
    }
}

// ---------------------------------------------------------------------------------------------
// Additive helpers for the fault and limit tests (rooms_ws_faults.rs, rooms_ws_limits.rs).
// ---------------------------------------------------------------------------------------------

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token with exactly these claims (for tokens whose `exp` a test must know).
pub fn token_with_claims(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `/metrics` as a map from sample name to value.
pub async fn metrics(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, body) = http(port, "GET", "/metrics", None, "")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// What the server sent next, heartbeats included.
#[derive(Debug)]
pub enum Received {
    Frame(Value),
    /// A close frame, with its code (None for a close without one) and reason.
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    Gone,
    /// Nothing arrived in the time given.
    Silent,
}

impl Client {
    /// Wraps an open socket without waiting for `system:connected`.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            next_id: 0,
            pending: Default::default(),
        }
    }

    /// Opens the handshake `request` (a URL, or a request with extra headers) and waits for
    /// `system:connected`; a refused handshake is returned as the error.
    pub async fn handshake<R>(request: R) -> Result<Client, tokio_tungstenite::tungstenite::Error>
    where
        R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
    {
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut client = Client::from_ws(ws);
        let hello = client.recv().await.expect("system:connected");
        assert_eq!(hello["type"], "system:connected", "{hello}");
        Ok(client)
    }

    /// Connects to `url` without a token, authenticates with an `auth` first message and
    /// returns the client with its `system:connected` frame.
    pub async fn connect_with_auth_message(url: &str, token: &str) -> (Client, Value) {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        let mut client = Client::from_ws(ws);
        client
            .send(json!({ "type": "auth", "data": { "token": token } }))
            .await;
        let hello = client.recv().await.expect("system:connected");
        assert_eq!(hello["type"], "system:connected", "{hello}");
        (client, hello)
    }

    /// The next thing the server sent within `within` (frames kept by `find` first),
    /// heartbeats included.
    pub async fn receive(&mut self, within: Duration) -> Received {
        if let Some(frame) = self.pending.pop_front() {
            return Received::Frame(frame);
        }
        loop {
            let message = match tokio::time::timeout(within, self.ws.next()).await {
                Err(_) => return Received::Silent,
                Ok(None) | Ok(Some(Err(_))) => return Received::Gone,
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    return Received::Frame(serde_json::from_str(&text).expect("JSON frame"))
                }
                Message::Close(frame) => {
                    return match frame {
                        Some(f) => Received::Close(Some(u16::from(f.code)), f.reason.to_string()),
                        None => Received::Close(None, String::new()),
                    }
                }
                _ => {}
            }
        }
    }

    /// Every non-heartbeat frame until the connection ends, and the close code if the server
    /// sent a close frame (`Some(None)` for a close frame without a code, `None` without one).
    pub async fn until_close(&mut self) -> (Vec<Value>, Option<Option<u16>>) {
        let mut frames = Vec::new();
        loop {
            match self.receive(WAIT).await {
                Received::Frame(v) if v["type"] == "ping" || v["type"] == "pong" => {}
                Received::Frame(v) => frames.push(v),
                Received::Close(code, _) => return (frames, Some(code)),
                Received::Gone => return (frames, None),
                Received::Silent => panic!("the connection neither sent nor closed in {WAIT:?}"),
            }
        }
    }
}

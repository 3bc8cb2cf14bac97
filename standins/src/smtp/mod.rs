//! An SMTP server (RFC 5321: EHLO/HELO, AUTH PLAIN and LOGIN when given credentials, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT; 8BITMIME, SIZE and PIPELINING) that keeps
//! every accepted message in memory.
//!
//! Lines and messages are bounded ([`MAX_LINE_BYTES`], [`SmtpConfig::max_message_bytes`]):
//! longer input is read and dropped, then refused. Scripted failures: any reply code (451, 554…)
//! at the end of DATA for the next N messages, 550 5.1.1 at RCPT for marked recipients.

mod mail;
mod session;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub use mail::ReceivedMail;
use session::{Flow, Line, Session};

/// The longest line taken, CRLF included (RFC 5321 allows 1000 in DATA, 512 for commands).
pub const MAX_LINE_BYTES: usize = 4096;

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// User name and password that AUTH must present; without them AUTH is not offered and
    /// mail is taken from anyone.
    pub credentials: Option<(String, String)>,
    /// The largest message taken (advertised as SIZE).
    pub max_message_bytes: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            credentials: None,
            max_message_bytes: 10 << 20,
        }
    }
}

/// A running SMTP stand-in on 127.0.0.1; dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct SmtpStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl SmtpStandIn {
    /// Starts a stand-in that takes mail from anyone.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(SmtpConfig::default()).await
    }

    pub async fn start_with(config: SmtpConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://[user:password@]127.0.0.1:port` (plain text), with the configured credentials
    /// percent-encoded.
    pub fn url(&self) -> String {
        match &self.shared.config.credentials {
            Some((user, password)) => format!(
                "smtp://{}:{}@{}",
                percent_encode(user),
                percent_encode(password),
                self.addr
            ),
            None => format!("smtp://{}", self.addr),
        }
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.messages()
    }

    /// The accepted messages, which the stand-in then forgets.
    pub fn take_messages(&self) -> Vec<ReceivedMail> {
        std::mem::take(&mut self.shared.recorded.lock().messages)
    }

    pub fn message_count(&self) -> usize {
        self.shared.recorded.lock().messages.len()
    }

    /// Answers `code` (a 4xx or 5xx, for example 451) at the end of DATA to the next `n`
    /// messages, which are not kept.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.shared.recorded.lock().failures = (n, code);
    }

    /// Answers `550 5.1.1 … User unknown` to `RCPT TO:<address>` (compared without case).
    pub fn reject_recipient(&self, address: &str) {
        self.shared
            .recorded
            .lock()
            .rejected
            .insert(address.to_ascii_lowercase());
    }

    /// TCP connections accepted so far (a pooled client opens few).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// AUTH attempts refused so far.
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures()
    }
}

impl Drop for SmtpStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the end of DATA decided.
#[derive(Debug)]
enum Outcome {
    Queued(String),
    /// A scripted failure with this reply code.
    Failed(u16),
}

#[derive(Debug, Default)]
struct Recorded {
    messages: Vec<ReceivedMail>,
    rejected: HashSet<String>,
    /// How many messages still fail, and with which reply code.
    failures: (usize, u16),
}

/// State every connection of one stand-in shares; locks are held for a push or a lookup only.
#[derive(Debug)]
struct Shared {
    config: SmtpConfig,
    hostname: String,
    recorded: Mutex<Recorded>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    auth_failures: AtomicUsize,
}

impl Shared {
    fn new(config: SmtpConfig) -> Self {
        Self {
            config,
            hostname: "smtp.standin.invalid".to_owned(),
            recorded: Mutex::new(Recorded::default()),
            next_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
        }
    }

    fn messages(&self) -> Vec<ReceivedMail> {
        self.recorded.lock().messages.clone()
    }

    fn auth_failures(&self) -> usize {
        self.auth_failures.load(Ordering::SeqCst)
    }

    fn is_rejected(&self, address: &str) -> bool {
        self.recorded
            .lock()
            .rejected
            .contains(&address.to_ascii_lowercase())
    }

    fn check_credentials(&self, user: &str, password: &str) -> bool {
        let ok = self
            .config
            .credentials
            .as_ref()
            .is_some_and(|(u, p)| u == user && p == password);
        if !ok {
            self.auth_failures.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }

    fn accept(
        &self,
        helo: String,
        user: Option<String>,
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
    ) -> Outcome {
        let queue_id = format!("{:08X}", self.next_id.fetch_add(1, Ordering::SeqCst));
        let mail = ReceivedMail::new(queue_id.clone(), helo, user, mail_from, rcpt_to, data);
        let mut recorded = self.recorded.lock();
        if let (left @ 1.., code) = recorded.failures {
            recorded.failures.0 = left - 1;
            return Outcome::Failed(code);
        }
        recorded.messages.push(mail);
        Outcome::Queued(queue_id)
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(connection(stream, Arc::clone(&shared)));
                }
                Err(e) => tracing::debug!(error = %e, "smtp stand-in: accept failed"),
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    if let Err(e) = converse(stream, &shared).await {
        tracing::debug!(error = %e, "smtp stand-in: connection ended");
    }
}

/// Reads lines and answers them; replies are written once no pipelined input is waiting.
async fn converse(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut session = Session::new();
    let mut out = Vec::new();
    let mut line = Vec::new();
    Session::greeting(shared, &mut out);
    write.write_all(&out).await?;
    out.clear();
    loop {
        if reader.buffer().is_empty() {
            ack_promptly(reader.get_ref().as_ref());
        }
        let Some(complete) = read_line(&mut reader, &mut line).await? else {
            return Ok(());
        };
        let input = if complete {
            Line::Complete(&line)
        } else {
            Line::TooLong
        };
        let flow = session.handle(input, shared, &mut out);
        if flow == Flow::Close || reader.buffer().is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
        if flow == Flow::Close {
            return write.shutdown().await;
        }
    }
}

/// Asks Linux to acknowledge the next segments at once. A client that writes a message and
/// its final `.` in two writes with Nagle's algorithm on (lettre does) sends the dot only once
/// the message is acknowledged, which a delayed ACK holds back 40 ms: a message per 40 ms per
/// connection, too slow for a benchmark. The flag wears off, so it is set before every read.
#[cfg(target_os = "linux")]
fn ack_promptly(stream: &TcpStream) {
    // Only a speed-up: without it the stand-in is slower, not wrong.
    let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
}

#[cfg(not(target_os = "linux"))]
fn ack_promptly(_stream: &TcpStream) {}

/// Reads one line into `line` without its line ending: `Some(true)` for a line, `Some(false)`
/// for a line over [`MAX_LINE_BYTES`] (dropped as it streamed by), `None` at the end of input.
async fn read_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(None);
        }
        let (taken, end) = match buffer.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buffer.len(), false),
        };
        if !too_long {
            if line.len() + taken > MAX_LINE_BYTES {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buffer[..taken]);
            }
        }
        reader.consume(taken);
        if end {
            break;
        }
    }
    if too_long {
        return Ok(Some(false));
    }
    if line.ends_with(b"\n") {
        line.pop();
    }
    if line.ends_with(b"\r") {
        line.pop();
    }
    Ok(Some(true))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn pipelined_commands_and_an_endless_line_over_a_socket() {
        let smtp = SmtpStandIn::start().await.unwrap();
        let mut stream = TcpStream::connect(smtp.addr()).await.unwrap();
        let mut input = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1 << 20));
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\nQUIT\r\n");
        stream.write_all(&input).await.unwrap();
        let mut replies = String::new();
        stream.read_to_string(&mut replies).await.unwrap();

        let codes: Vec<&str> = replies
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            ["220", "250", "250", "250", "354", "500", "250", "221"]
        );
        assert_eq!(smtp.message_count(), 0);
        assert_eq!(smtp.connections(), 1);
    }

    #[test]
    fn urls_carry_percent_encoded_credentials() {
        assert_eq!(percent_encode("p@ss word"), "p%40ss%20word");
        assert_eq!(percent_encode("plain-1.2_~"), "plain-1.2_~");
    }
}

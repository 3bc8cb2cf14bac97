//! One replication connection: startup, authentication, TLS, simple queries and the CopyBoth
//! sub-protocol. It knows nothing of slots' meaning or of pgoutput; [`crate::stream`] does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::DbError;
use crate::{tls, ConnectConfig, Error, SslMode};

/// PostgreSQL never sends a message larger than 1 GiB plus headers.
const MAX_MESSAGE_LEN: usize = (1 << 30) + 1024;

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The rows and command tag of one simple query.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

/// What arrives from the server while streaming.
pub(crate) enum CopyMessage {
    Data(Bytes),
    /// The server ended the stream (CopyDone), e.g. because it is shutting down.
    Done,
}

/// A connection opened with `replication=database`.
pub struct Connection {
    io: Transport,
    read: BytesMut,
    write: BytesMut,
    tls: bool,
}

impl Connection {
    /// Connects, negotiates TLS as `sslmode` says, and authenticates (trust, cleartext, md5
    /// or SCRAM-SHA-256).
    pub async fn connect(config: &ConnectConfig) -> Result<Connection, Error> {
        tokio::time::timeout(config.connect_timeout, Self::connect_inner(config))
            .await
            .map_err(|_| {
                Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {}:{} took longer than {:?}",
                        config.host, config.port, config.connect_timeout
                    ),
                ))
            })?
    }

    async fn connect_inner(config: &ConnectConfig) -> Result<Connection, Error> {
        let tcp = TcpStream::connect((config.host.as_str(), config.port)).await?;
        tcp.set_nodelay(true)?;
        let io = match config.ssl_mode {
            SslMode::Disable => Transport::Plain(tcp),
            _ => negotiate_tls(tcp, config).await?,
        };
        let mut conn = Connection {
            tls: matches!(io, Transport::Tls(_)),
            io,
            read: BytesMut::with_capacity(256 * 1024),
            write: BytesMut::with_capacity(1024),
        };
        let params = [
            ("user", config.user.as_str()),
            ("database", config.dbname.as_str()),
            ("replication", "database"),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.write)?;
        conn.flush().await?;
        conn.authenticate(config).await?;
        loop {
            match conn.next_message().await? {
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::BackendKeyData(_)
                | Message::ParameterStatus(_)
                | Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => return Err(db_error(body.fields())),
                _ => return Err(unexpected("startup")),
            }
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    async fn authenticate(&mut self, config: &ConnectConfig) -> Result<(), Error> {
        let password = || {
            config.password.as_deref().ok_or_else(|| {
                Error::Auth(format!(
                    "the server asks a password for user {:?} and none was given",
                    config.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.write)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(config.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                }
                Message::AuthenticationSasl(body) => {
                    let offers_scram = body
                        .mechanisms()
                        .any(|m| Ok(m == SCRAM_SHA_256))
                        .map_err(|e| Error::Protocol(e.to_string()))?;
                    if !offers_scram {
                        return Err(Error::Auth(
                            "the server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                        ));
                    }
                    let binding = if self.tls {
                        ChannelBinding::unsupported()
                    } else {
                        ChannelBinding::unrequested()
                    };
                    let client = ScramSha256::new(password()?.as_bytes(), binding);
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        client.message(),
                        &mut self.write,
                    )?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| unexpected("SASL continue without SASL start"))?;
                    client
                        .update(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(client.message(), &mut self.write)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram
                        .as_mut()
                        .ok_or_else(|| unexpected("SASL final without SASL start"))?;
                    client
                        .finish(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM server signature: {e}")))?;
                    continue;
                }
                Message::ErrorResponse(body) => {
                    let err = db_error(body.fields());
                    return Err(match err {
                        Error::Db(db) if db.code.starts_with("28") => {
                            Error::Auth(format!("{} ({})", db.message, db.code))
                        }
                        other => other,
                    });
                }
                Message::NoticeResponse(_) => continue,
                _ => {
                    return Err(Error::Auth(
                        "the server asks for an authentication method we do not support \
                         (supported: trust, password, md5, scram-sha-256)"
                            .into(),
                    ))
                }
            }
            self.flush().await?;
        }
    }

    /// Runs one command with the simple query protocol and collects its text results.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, Error> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Message::RowDescription(body) => {
                    result.columns = body
                        .fields()
                        .map(|f| Ok(f.name().to_owned()))
                        .collect()
                        .map_err(|e| Error::Protocol(e.to_string()))?;
                }
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let row = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()
                        .map_err(|e| Error::Protocol(e.to_string()))?;
                    result.rows.push(row);
                }
                Message::CommandComplete(body) => {
                    result.tag = body
                        .tag()
                        .map_err(|e| Error::Protocol(e.to_string()))?
                        .into();
                }
                Message::EmptyQueryResponse | Message::NoticeResponse(_) => {}
                Message::ErrorResponse(body) => error = Some(db_error(body.fields())),
                Message::ReadyForQuery(_) => return error.map_or(Ok(result), Err),
                _ => return Err(unexpected("a simple query")),
            }
        }
    }

    /// Sends `START_REPLICATION …` and waits for the server to enter CopyBoth mode.
    pub(crate) async fn start_copy_both(&mut self, command: &str) -> Result<(), Error> {
        frontend::query(command, &mut self.write)?;
        self.flush().await?;
        loop {
            if self.read.len() >= 5 && self.read[0] == b'W' {
                let len = header_len(&self.read)?;
                if self.read.len() > len {
                    let _ = self.read.split_to(len + 1);
                    return Ok(());
                }
                self.fill().await?;
                continue;
            }
            match self.try_parse()? {
                Some(Message::ErrorResponse(body)) => {
                    let err = db_error(body.fields());
                    self.drain_until_ready().await?;
                    return Err(err);
                }
                Some(Message::NoticeResponse(_)) => {}
                Some(_) => return Err(unexpected("START_REPLICATION")),
                None => self.fill().await?,
            }
        }
    }

    /// Reads the next CopyData payload while streaming. Cancel-safe.
    pub(crate) async fn read_copy(&mut self) -> Result<CopyMessage, Error> {
        loop {
            match self.try_parse()? {
                Some(Message::CopyData(body)) => return Ok(CopyMessage::Data(body.into_bytes())),
                Some(Message::CopyDone) => return Ok(CopyMessage::Done),
                Some(Message::ErrorResponse(body)) => return Err(db_error(body.fields())),
                Some(Message::NoticeResponse(_)) => {}
                Some(_) => return Err(unexpected("streaming")),
                None => self.fill().await?,
            }
        }
    }

    /// Queues one CopyData message; [`Connection::flush`] sends it.
    pub(crate) fn queue_copy_data(&mut self, payload: &[u8]) -> Result<(), Error> {
        frontend::CopyData::new(payload)?.write(&mut self.write);
        Ok(())
    }

    /// Ends CopyBoth mode cleanly: sends CopyDone, drains what the server still sends until its
    /// own CopyDone and the command's completion, then terminates the session.
    pub(crate) async fn finish_copy(mut self) -> Result<(), Error> {
        frontend::copy_done(&mut self.write);
        self.flush().await?;
        loop {
            match self.next_message().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => return Err(db_error(body.fields())),
                _ => {}
            }
        }
        self.close().await
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) -> Result<(), Error> {
        frontend::terminate(&mut self.write);
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// Sends what is queued. Cancel-safe: bytes not yet written stay queued.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        while !self.write.is_empty() {
            if self.io.write_buf(&mut self.write).await? == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    async fn drain_until_ready(&mut self) -> Result<(), Error> {
        loop {
            if let Message::ReadyForQuery(_) = self.next_message().await? {
                return Ok(());
            }
        }
    }

    async fn next_message(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(message) = self.try_parse()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    fn try_parse(&mut self) -> Result<Option<Message>, Error> {
        if self.read.len() >= 5 {
            header_len(&self.read)?;
        }
        Message::parse(&mut self.read).map_err(|e| Error::Protocol(e.to_string()))
    }

    async fn fill(&mut self) -> Result<(), Error> {
        if self.read.capacity() - self.read.len() < 64 * 1024 {
            self.read.reserve(256 * 1024);
        }
        if self.io.read_buf(&mut self.read).await? == 0 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }
}

async fn negotiate_tls(mut tcp: TcpStream, config: &ConnectConfig) -> Result<Transport, Error> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if config.ssl_mode == SslMode::Prefer => return Ok(Transport::Plain(tcp)),
        b'N' => {
            return Err(Error::Tls(
                "the server does not support TLS but sslmode requires it".into(),
            ))
        }
        other => {
            return Err(Error::Protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )))
        }
    }
    let connector = TlsConnector::from(tls::client_config(config)?);
    let stream = connector
        .connect(tls::server_name(&config.host)?, tcp)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {}: {e}", config.host)))?;
    Ok(Transport::Tls(Box::new(stream)))
}

fn header_len(buf: &[u8]) -> Result<usize, Error> {
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(Error::Protocol(format!(
            "message {:?} has invalid length {len}",
            char::from(buf[0])
        )));
    }
    Ok(len)
}

fn unexpected(during: &str) -> Error {
    Error::Protocol(format!("unexpected message during {during}"))
}

fn db_error(mut fields: ErrorFields<'_>) -> Error {
    let mut err = DbError::default();
    loop {
        match fields.next() {
            Ok(Some(field)) => {
                let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
                match field.type_() {
                    b'S' => err.severity = value,
                    b'C' => err.code = value,
                    b'M' => err.message = value,
                    b'D' => err.detail = Some(value),
                    b'H' => err.hint = Some(value),
                    _ => {}
                }
            }
            Ok(None) => return Error::Db(err),
            Err(e) => return Error::Protocol(format!("malformed ErrorResponse: {e}")),
        }
    }
}

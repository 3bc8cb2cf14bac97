//! The HTTPS server under the push stand-ins: 127.0.0.1, port 0, the shared self-signed
//! certificate, a task per connection, and request bodies collected (up to 1 MiB) before the
//! handler sees them. Dropping the [`Server`] closes the listener and every open connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::tls;

const MAX_BODY: usize = 1 << 20;

/// Which protocols the server offers by ALPN.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Protocols {
    /// `h2` and `http/1.1`, as Google's front ends and most push services.
    Http1And2,
    /// `h2` only, as APNs: a client that cannot speak HTTP/2 fails the handshake.
    Http2Only,
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// A bound listener, so a stand-in knows its own URL before it starts serving.
pub(crate) struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    pub(crate) async fn new() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// `https://127.0.0.1:port`
    pub(crate) fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub(crate) fn serve<H, F>(self, protocols: Protocols, handler: H) -> io::Result<Server>
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let alpn: &[&[u8]] = match protocols {
            Protocols::Http1And2 => &[b"h2", b"http/1.1"],
            Protocols::Http2Only => &[b"h2"],
        };
        let acceptor = TlsAcceptor::from(tls::server_config(alpn)?);
        let handler = Arc::new(handler);
        let listener = self.listener;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(connection(
                                acceptor.clone(),
                                stream,
                                protocols,
                                Arc::clone(&handler),
                            ));
                        }
                        // Out of file descriptors or similar: let connections finish.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Server {
            addr: self.addr,
            task,
        })
    }
}

impl Server {
    /// `https://127.0.0.1:port`
    pub(crate) fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection<H, F>(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    protocols: Protocols,
    handler: Arc<H>,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    // Small requests and replies: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let Ok(tls) = acceptor.accept(stream).await else {
        return;
    };
    let io = TokioIo::new(tls);
    let service = service_fn(move |request: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(respond(handler.as_ref(), request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let builder = match protocols {
        Protocols::Http1And2 => builder,
        Protocols::Http2Only => builder.http2_only(),
    };
    // A client that hangs up mid-request is not the stand-in's problem.
    let _ = builder.serve_connection(io, service).await;
}

async fn respond<H, F>(handler: &H, request: Request<Incoming>) -> Response<Full<Bytes>>
where
    H: Fn(Request<Bytes>) -> F,
    F: Future<Output = Response<Full<Bytes>>>,
{
    let (parts, body) = request.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => handler(Request::from_parts(parts, collected.to_bytes())).await,
        Err(_) => plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// Scripted failures: the next `n` requests are answered with `status`.
#[derive(Debug, Default)]
pub(crate) struct Faults(Mutex<(usize, u16)>);

impl Faults {
    pub(crate) fn set(&self, n: usize, status: u16) {
        *self.0.lock() = (n, status);
    }

    /// The status to fail this request with, if one is scripted.
    pub(crate) fn take(&self) -> Option<StatusCode> {
        let mut faults = self.0.lock();
        let (left, status) = *faults;
        if left == 0 {
            return None;
        }
        faults.0 = left - 1;
        StatusCode::from_u16(status).ok()
    }
}

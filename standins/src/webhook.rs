//! A webhook receiver that checks Standard Webhooks signatures (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.
//! {body}">`) with its own implementation, and records every POST with whether it verified.
//!
//! It answers 204, or a scripted status (503, 410, 400…) for the next N requests, at once or,
//! when told to [`hold`](WebhookStandIn::hold), after a pause. Requests are recorded as they
//! arrive, whatever the answer, so retries can be counted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How far `webhook-timestamp` may be from the receiver's clock, in seconds.
const TOLERANCE_SECS: u64 = 5 * 60;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub path: String,
    pub id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Whether the signature matched the configured secret within the timestamp tolerance.
    pub verified: bool,
    /// The status the receiver answered.
    pub status: u16,
}

impl ReceivedWebhook {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running webhook receiver on 127.0.0.1; dropping it stops accepting connections.
#[derive(Debug)]
pub struct WebhookStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl WebhookStandIn {
    /// Starts a receiver that verifies with `secret` (`whsec_<base64>` for the decoded key,
    /// other text for its UTF-8 bytes).
    pub async fn start(secret: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            None => secret.as_bytes().to_vec(),
        };
        let shared = Arc::new(Shared {
            key,
            recorded: Mutex::new(Recorded::default()),
        });
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::debug!(error = %e, "webhook stand-in stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// A URL the receiver answers on (any path is taken).
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedWebhook> {
        self.shared.recorded.lock().requests.clone()
    }

    /// The requests so far, which the receiver then forgets.
    pub fn take_requests(&self) -> Vec<ReceivedWebhook> {
        std::mem::take(&mut self.shared.recorded.lock().requests)
    }

    pub fn request_count(&self) -> usize {
        self.shared.recorded.lock().requests.len()
    }

    /// Answers the next `n` requests with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.recorded.lock().failures = (n, status);
    }

    /// Waits this long before answering each request from now on (recorded on arrival all the
    /// same); `Duration::ZERO` answers at once again.
    pub fn hold(&self, pause: Duration) {
        self.shared.recorded.lock().hold = pause;
    }
}

impl Drop for WebhookStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug, Default)]
struct Recorded {
    requests: Vec<ReceivedWebhook>,
    failures: (usize, u16),
    hold: Duration,
}

#[derive(Debug)]
struct Shared {
    key: Vec<u8>,
    recorded: Mutex<Recorded>,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signature = header("webhook-signature");
    let verified = match (&id, &timestamp, &signature) {
        (Some(id), Some(timestamp), Some(signature)) => {
            verify(&shared.key, id, timestamp, signature, &body)
        }
        _ => false,
    };
    let (pause, status) = {
        let mut recorded = shared.recorded.lock();
        let status = match recorded.failures {
            (0, _) => StatusCode::NO_CONTENT,
            (left, status) => {
                recorded.failures.0 = left - 1;
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        };
        recorded.requests.push(ReceivedWebhook {
            path: uri.path().to_owned(),
            id,
            timestamp,
            signature,
            content_type: header("content-type"),
            body,
            verified,
            status: status.as_u16(),
        });
        (recorded.hold, status)
    };
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    status
}

fn verify(key: &[u8], id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let Ok(seconds) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if seconds.abs_diff(now) > TOLERANCE_SECS {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's example: the same HMAC, and refused today only
    /// because its timestamp (2021) is far outside the tolerance.
    #[test]
    fn the_specification_example_signs_alike_and_is_now_too_old() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(br#"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}"#);
        let tag = STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(tag, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(!verify(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &format!("v1,{tag}"),
            br#"{"test": 2432232314}"#,
        ));
    }
}

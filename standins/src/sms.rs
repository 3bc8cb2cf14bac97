//! Twilio's Messages endpoint: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with a
//! form body and HTTP basic authentication (account SID and auth token), answering 201 and a
//! Twilio-shaped message resource, or a Twilio error document (`code`, `message`, `more_info`,
//! `status`).
//!
//! Scripted failures: error 21211 (invalid `To`) for marked numbers, and any status (503, 429…)
//! for the next N requests, answered before anything else is checked.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The longest body Twilio takes, in characters.
const MAX_BODY_CHARS: usize = 1600;

/// The account the stand-in serves.
#[derive(Debug, Clone)]
pub struct SmsConfig {
    pub account_sid: String,
    pub auth_token: String,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            account_sid: "AC0123456789abcdef0123456789abcdef".to_owned(),
            auth_token: "standin-auth-token".to_owned(),
        }
    }
}

/// One text the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSms {
    /// The `SM…` SID it answered with.
    pub sid: String,
    pub account_sid: String,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
}

/// A running SMS stand-in on 127.0.0.1; dropping it stops accepting connections.
#[derive(Debug)]
pub struct SmsStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl SmsStandIn {
    /// Starts a stand-in for the [`SmsConfig::default`] account.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(SmsConfig::default()).await
    }

    pub async fn start_with(config: SmsConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            recorded: Mutex::new(Recorded::default()),
            next_sid: AtomicU64::new(1),
            requests: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages.json",
                post(create),
            )
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::debug!(error = %e, "sms stand-in stopped");
            }
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// The API's base URL, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn account_sid(&self) -> &str {
        &self.shared.config.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.shared.config.auth_token
    }

    /// Every text accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedSms> {
        self.shared.recorded.lock().messages.clone()
    }

    /// The accepted texts, which the stand-in then forgets.
    pub fn take_messages(&self) -> Vec<ReceivedSms> {
        std::mem::take(&mut self.shared.recorded.lock().messages)
    }

    pub fn message_count(&self) -> usize {
        self.shared.recorded.lock().messages.len()
    }

    /// Requests received so far, whatever the answer.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests refused for their credentials so far.
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures.load(Ordering::SeqCst)
    }

    /// Answers 400 with error 21211 (invalid `To` number) for texts to `phone`.
    pub fn reject_number(&self, phone: &str) {
        self.shared
            .recorded
            .lock()
            .rejected
            .insert(phone.to_owned());
    }

    /// Answers the next `n` requests with `status` (for example 503 or 429) and a Twilio error
    /// document, before checking anything else.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.recorded.lock().failures = (n, status);
    }
}

impl Drop for SmsStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug, Default)]
struct Recorded {
    messages: Vec<ReceivedSms>,
    rejected: HashSet<String>,
    /// How many requests still fail, and with which status.
    failures: (usize, u16),
}

#[derive(Debug)]
struct Shared {
    config: SmsConfig,
    recorded: Mutex<Recorded>,
    next_sid: AtomicU64,
    requests: AtomicUsize,
    auth_failures: AtomicUsize,
}

impl Shared {
    fn scripted_failure(&self) -> Option<u16> {
        let mut recorded = self.recorded.lock();
        let (left, status) = recorded.failures;
        if left == 0 {
            return None;
        }
        recorded.failures.0 = left - 1;
        Some(status)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let expected = format!("{}:{}", self.config.account_sid, self.config.auth_token);
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| STANDARD.decode(v.trim()).ok());
        let ok = presented.as_deref() == Some(expected.as_bytes());
        if !ok {
            self.auth_failures.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = shared.scripted_failure() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let code = if status == StatusCode::TOO_MANY_REQUESTS {
            20429
        } else {
            20500
        };
        return twilio_error(status, code, "Scripted failure of the stand-in");
    }
    if !shared.authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if account_sid != shared.config.account_sid {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    let Ok(Form(fields)) = form else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let Some(to) = field("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let Some(body) = field("Body") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let from = field("From");
    let messaging_service_sid = field("MessagingServiceSid");
    if from.is_none() && messaging_service_sid.is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    if body.chars().count() > MAX_BODY_CHARS {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    let to_valid = to
        .strip_prefix('+')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    if !to_valid || shared.recorded.lock().rejected.contains(&to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("Invalid 'To' Phone Number: {to}"),
        );
    }

    let sid = format!("SM{:032x}", shared.next_sid.fetch_add(1, Ordering::SeqCst));
    let resource = json!({
        "sid": sid,
        "account_sid": account_sid,
        "to": to,
        "from": from,
        "messaging_service_sid": messaging_service_sid,
        "body": body,
        "status": "queued",
        "num_segments": segments(&body).to_string(),
        "num_media": "0",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "price": null,
        "price_unit": "USD",
        "error_code": null,
        "error_message": null,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    shared.recorded.lock().messages.push(ReceivedSms {
        sid,
        account_sid,
        to,
        from,
        messaging_service_sid,
        body,
    });
    (StatusCode::CREATED, Json(resource)).into_response()
}

/// Segments a text takes: 160 characters alone or 153 per part in GSM-7 (approximated by
/// ASCII), 70 or 67 in UCS-2.
fn segments(body: &str) -> usize {
    let chars = body.chars().count();
    let (single, part) = if body.is_ascii() {
        (160, 153)
    } else {
        (70, 67)
    };
    if chars <= single {
        1
    } else {
        chars.div_ceil(part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_follow_the_encoding() {
        assert_eq!(segments("hi"), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"予".repeat(70)), 1);
        assert_eq!(segments(&"予".repeat(71)), 2);
    }
}

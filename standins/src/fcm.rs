//! FCM HTTP v1 over HTTPS, with Google's OAuth 2.0 token endpoint beside it.
//!
//! `POST /token` takes the JWT-bearer grant: the RS256 assertion must verify against the public
//! half of the service-account key the stand-in made ([`FcmStandIn::credentials_json`]), with
//! `iss` the account, `aud` the token URI and the FCM scope; it answers a bearer token valid
//! for an hour. `POST /v1/projects/{id}/messages:send` checks that bearer token, checks the
//! message the way FCM does (one token, string-only `data`, `android.ttl` as `"<n>s"`), and
//! records it.
//!
//! Scripted failures: 404 `UNREGISTERED` for marked tokens, and any status (503, 429…) for the
//! next N sends, answered before anything else is checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::{self, Bound, Faults, Protocols, Server};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// One message FCM accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmMessage {
    /// The name it answered with, `projects/{id}/messages/{n}`.
    pub name: String,
    pub token: String,
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: BTreeMap<String, String>,
    /// `android.priority` (`HIGH` or `NORMAL`).
    pub android_priority: Option<String>,
    /// `android.ttl`, for example `"3600s"`.
    pub android_ttl: Option<String>,
    /// The whole `message` object as sent.
    pub message: Value,
}

/// A running FCM stand-in on 127.0.0.1; dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct FcmStandIn {
    server: Server,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    project_id: String,
    client_email: String,
    token_uri: String,
    private_key_pem: String,
    rogue_private_key_pem: String,
    public_key: DecodingKey,
    /// Issued access tokens and when they expire.
    access_tokens: Mutex<HashMap<String, Instant>>,
    recorded: Mutex<Recorded>,
    faults: Faults,
    token_requests: AtomicUsize,
    send_requests: AtomicUsize,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct Recorded {
    messages: Vec<FcmMessage>,
    unregistered: HashSet<String>,
}

impl FcmStandIn {
    /// Makes a service-account key pair and starts serving.
    pub async fn start() -> io::Result<Self> {
        let (key, public_key) = rsa_key()?;
        let (rogue_key, _) = rsa_key()?;
        let bound = Bound::new().await?;
        let project_id = "standin-project".to_owned();
        let shared = Arc::new(Shared {
            client_email: format!("push@{project_id}.iam.gserviceaccount.com"),
            project_id,
            token_uri: format!("{}/token", bound.origin()),
            private_key_pem: key,
            rogue_private_key_pem: rogue_key,
            public_key,
            access_tokens: Mutex::new(HashMap::new()),
            recorded: Mutex::new(Recorded::default()),
            faults: Faults::default(),
            token_requests: AtomicUsize::new(0),
            send_requests: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        });
        let handler_state = Arc::clone(&shared);
        let server = bound.serve(Protocols::Http1And2, move |request| {
            let shared = Arc::clone(&handler_state);
            async move { shared.handle(request) }
        })?;
        Ok(Self { server, shared })
    }

    /// The API's base URL, `https://127.0.0.1:port` (the value for `TRIPTRIP_FCM_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }

    pub fn project_id(&self) -> &str {
        &self.shared.project_id
    }

    /// A service-account key file (JSON) the stand-in's token endpoint accepts.
    pub fn credentials_json(&self) -> String {
        self.shared.credentials(&self.shared.private_key_pem)
    }

    /// The same service account with a private key the stand-in does not know: its assertions
    /// are refused with `invalid_grant`.
    pub fn rogue_credentials_json(&self) -> String {
        self.shared.credentials(&self.shared.rogue_private_key_pem)
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<FcmMessage> {
        self.shared.recorded.lock().messages.clone()
    }

    /// The accepted messages, which the stand-in then forgets.
    pub fn take_messages(&self) -> Vec<FcmMessage> {
        std::mem::take(&mut self.shared.recorded.lock().messages)
    }

    pub fn message_count(&self) -> usize {
        self.shared.recorded.lock().messages.len()
    }

    /// Requests to the token endpoint so far, granted or not.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Requests to `messages:send` so far, whatever the answer.
    pub fn send_requests(&self) -> usize {
        self.shared.send_requests.load(Ordering::SeqCst)
    }

    /// Answers 404 `UNREGISTERED` for messages to `token`.
    pub fn mark_unregistered(&self, token: &str) {
        self.shared
            .recorded
            .lock()
            .unregistered
            .insert(token.to_owned());
    }

    /// Answers the next `n` sends with `status` (503 `UNAVAILABLE`, 429 `QUOTA_EXCEEDED`…)
    /// before checking anything else.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.faults.set(n, status);
    }

    /// Forgets every access token issued so far, as if Google had revoked them: the next send
    /// with one is answered 401.
    pub fn revoke_access_tokens(&self) {
        self.shared.access_tokens.lock().clear();
    }
}

fn rsa_key() -> io::Result<(String, DecodingKey)> {
    let key = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).map_err(io::Error::other)?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(io::Error::other)?
        .to_string();
    let public =
        DecodingKey::from_rsa_raw_components(&key.n().to_bytes_be(), &key.e().to_bytes_be());
    Ok((pem, public))
}

#[derive(Deserialize)]
struct AssertionClaims {
    scope: String,
    iat: u64,
    exp: u64,
}

impl Shared {
    fn credentials(&self, private_key: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "standin-key",
            "private_key": private_key,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri,
        })
        .to_string()
    }

    fn handle(&self, request: Request<Bytes>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if request.method() != Method::POST {
            return google_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
        }
        if path == "/token" {
            return self.grant(request.body());
        }
        let project = path
            .strip_prefix("/v1/projects/")
            .and_then(|rest| rest.strip_suffix("/messages:send"));
        match project {
            Some(project) => self.send(project, &request),
            None => google_error(StatusCode::NOT_FOUND, "no such method", None),
        }
    }

    fn grant(&self, body: &[u8]) -> Response<Full<Bytes>> {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let body = String::from_utf8_lossy(body);
        if form_field(&body, "grant_type").as_deref() != Some(GRANT_TYPE) {
            return oauth_error("unsupported_grant_type", "Invalid grant_type");
        }
        let Some(assertion) = form_field(&body, "assertion") else {
            return oauth_error("invalid_request", "Missing required parameter: assertion");
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.token_uri]);
        validation.set_issuer(&[&self.client_email]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        let claims = match jsonwebtoken::decode::<AssertionClaims>(
            &assertion,
            &self.public_key,
            &validation,
        ) {
            Ok(data) => data.claims,
            Err(_) => return oauth_error("invalid_grant", "Invalid JWT Signature."),
        };
        if claims.exp.saturating_sub(claims.iat) > TOKEN_LIFETIME.as_secs() {
            return oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes)",
            );
        }
        if !claims.scope.split(' ').any(|s| s == SCOPE) {
            return oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience");
        }
        let token = format!("ya29.standin.{:032x}", rand::random::<u128>());
        self.access_tokens
            .lock()
            .insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
        server::json(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "expires_in": TOKEN_LIFETIME.as_secs() - 1,
                "token_type": "Bearer",
            }),
        )
    }

    fn send(&self, project: &str, request: &Request<Bytes>) -> Response<Full<Bytes>> {
        self.send_requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = self.faults.take() {
            let code = if status == StatusCode::TOO_MANY_REQUESTS {
                "QUOTA_EXCEEDED"
            } else {
                "UNAVAILABLE"
            };
            return google_error(status, "scripted failure", Some(code));
        }
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let authorized = bearer.is_some_and(|token| {
            self.access_tokens
                .lock()
                .get(token)
                .is_some_and(|expires| Instant::now() < *expires)
        });
        if !authorized {
            return google_error(
                StatusCode::UNAUTHORIZED,
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                None,
            );
        }
        if project != self.project_id {
            return google_error(
                StatusCode::FORBIDDEN,
                "Permission 'cloudmessaging.messages.create' denied on resource",
                None,
            );
        }
        let message = match serde_json::from_slice::<Value>(request.body()) {
            Ok(mut body) => body["message"].take(),
            Err(_) => return invalid_argument("Invalid JSON payload received.", "message"),
        };
        let mut recorded = match check_message(&message) {
            Ok(recorded) => recorded,
            Err((text, field)) => return invalid_argument(text, field),
        };
        let mut state = self.recorded.lock();
        if state.unregistered.contains(&recorded.token) {
            return google_error(
                StatusCode::NOT_FOUND,
                "Requested entity was not found.",
                Some("UNREGISTERED"),
            );
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        recorded.name = format!("projects/{}/messages/{id}", self.project_id);
        let reply = json!({ "name": recorded.name });
        state.messages.push(recorded);
        drop(state);
        server::json(StatusCode::OK, &reply)
    }
}

/// Checks a `message` the way FCM's validation does, for the parts the server sends.
fn check_message(message: &Value) -> Result<FcmMessage, (&'static str, &'static str)> {
    let token = message["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or(("Recipient of the message is not set.", "message.token"))?;
    if message.get("topic").is_some() || message.get("condition").is_some() {
        return Err(("Exactly one of token, topic or condition", "message"));
    }
    let text = |v: &Value, field| match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(("Invalid value", field)),
    };
    let notification = &message["notification"];
    let title = text(&notification["title"], "message.notification.title")?;
    let body = text(&notification["body"], "message.notification.body")?;
    let mut data = BTreeMap::new();
    match &message["data"] {
        Value::Null => {}
        Value::Object(fields) => {
            for (key, value) in fields {
                let value = value.as_str().ok_or((
                    "Invalid value at 'message.data': not a string",
                    "message.data",
                ))?;
                data.insert(key.clone(), value.to_owned());
            }
        }
        _ => return Err(("Invalid value at 'message.data'", "message.data")),
    }
    let android = &message["android"];
    let android_priority = text(&android["priority"], "message.android.priority")?;
    if android_priority
        .as_deref()
        .is_some_and(|p| p != "HIGH" && p != "NORMAL")
    {
        return Err(("Invalid value", "message.android.priority"));
    }
    let android_ttl = text(&android["ttl"], "message.android.ttl")?;
    let ttl_ok = |ttl: &str| {
        ttl.strip_suffix('s').is_some_and(|secs| {
            !secs.is_empty() && secs.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
    };
    if android_ttl.as_deref().is_some_and(|t| !ttl_ok(t)) {
        return Err(("Invalid value: not a duration", "message.android.ttl"));
    }
    Ok(FcmMessage {
        name: String::new(),
        token: token.to_owned(),
        title,
        body,
        data,
        android_priority,
        android_ttl,
        message: message.clone(),
    })
}

/// A field of an `application/x-www-form-urlencoded` body, decoded.
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (percent_decode(key)? == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn oauth_error(error: &str, description: &str) -> Response<Full<Bytes>> {
    server::json(
        StatusCode::BAD_REQUEST,
        &json!({ "error": error, "error_description": description }),
    )
}

/// A Google API error document, with an FCM error code in `details` if given.
fn google_error(
    status: StatusCode,
    message: &str,
    fcm_code: Option<&str>,
) -> Response<Full<Bytes>> {
    let canonical = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let details = match fcm_code {
        Some(code) => json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]),
        None => json!([]),
    };
    server::json(
        status,
        &json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": canonical,
            "details": details,
        }}),
    )
}

fn invalid_argument(message: &str, field: &str) -> Response<Full<Bytes>> {
    server::json(
        StatusCode::BAD_REQUEST,
        &json!({"error": {
            "code": 400,
            "message": message,
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                 "errorCode": "INVALID_ARGUMENT"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": field, "description": message}]},
            ],
        }}),
    )
}

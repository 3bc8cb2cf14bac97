//! The APNs provider API: HTTP/2 only over TLS (ALPN offers `h2` alone), `POST
//! /3/device/{token}` with an ES256 provider token.
//!
//! The provider token must carry the stand-in's key id, verify against the `.p8` key it made
//! ([`ApnsStandIn::key_p8`]), name its team as `iss`, and be less than an hour old; the request
//! must name its topic, a priority of 5 or 10 and a numeric expiration. Errors are Apple's:
//! status and `{"reason": …}`.
//!
//! Scripted failures: 410 `Unregistered` for marked tokens, 403 `ExpiredProviderToken` for the
//! next N requests, and any status (503, 429…) for the next N requests, answered before
//! anything else is checked.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use p256::SecretKey;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::{self, Bound, Faults, Protocols, Server};

/// Apple refuses provider tokens older than an hour.
const TOKEN_MAX_AGE_SECS: u64 = 3600;
/// The largest alert payload APNs takes.
const MAX_PAYLOAD: usize = 4096;

/// One notification APNs accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsNotification {
    /// The `apns-id` it answered with.
    pub apns_id: String,
    pub device_token: String,
    /// Always HTTP/2: the stand-in speaks nothing else.
    pub version: Version,
    pub topic: String,
    pub push_type: Option<String>,
    pub priority: Option<u8>,
    /// `apns-expiration`, Unix seconds.
    pub expiration: Option<u64>,
    pub payload: Value,
}

/// A running APNs stand-in on 127.0.0.1; dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct ApnsStandIn {
    server: Server,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    key_id: String,
    team_id: String,
    topic: String,
    key_p8: String,
    rogue_key_p8: String,
    public_key: DecodingKey,
    recorded: Mutex<Recorded>,
    faults: Faults,
    requests: AtomicUsize,
}

#[derive(Debug, Default)]
struct Recorded {
    notifications: Vec<ApnsNotification>,
    unregistered: HashSet<String>,
    /// Provider tokens that verified, and their `iat`: each is checked once, as APNs does.
    provider_tokens: HashMap<String, u64>,
    expire_next: usize,
}

impl ApnsStandIn {
    /// Makes a `.p8` signing key and starts serving.
    pub async fn start() -> io::Result<Self> {
        let (key_p8, public_key) = ec_key()?;
        let (rogue_key_p8, _) = ec_key()?;
        let bound = Bound::new().await?;
        let shared = Arc::new(Shared {
            key_id: "STANDIN001".to_owned(),
            team_id: "TEAMSTAND1".to_owned(),
            topic: "com.triptrip.app".to_owned(),
            key_p8,
            rogue_key_p8,
            public_key,
            recorded: Mutex::new(Recorded::default()),
            faults: Faults::default(),
            requests: AtomicUsize::new(0),
        });
        let handler_state = Arc::clone(&shared);
        let server = bound.serve(Protocols::Http2Only, move |request| {
            let shared = Arc::clone(&handler_state);
            async move { shared.handle(request) }
        })?;
        Ok(Self { server, shared })
    }

    /// The API's base URL, `https://127.0.0.1:port` (the value for `TRIPTRIP_APNS_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        self.server.origin()
    }

    /// The signing key, as the `AuthKey_<key id>.p8` file Apple hands out (PKCS#8 PEM).
    pub fn key_p8(&self) -> &str {
        &self.shared.key_p8
    }

    /// Another P-256 key: provider tokens it signs are refused with `InvalidProviderToken`.
    pub fn rogue_key_p8(&self) -> &str {
        &self.shared.rogue_key_p8
    }

    pub fn key_id(&self) -> &str {
        &self.shared.key_id
    }

    pub fn team_id(&self) -> &str {
        &self.shared.team_id
    }

    /// The bundle id the stand-in expects as `apns-topic`.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Every notification accepted so far, oldest first.
    pub fn notifications(&self) -> Vec<ApnsNotification> {
        self.shared.recorded.lock().notifications.clone()
    }

    /// The accepted notifications, which the stand-in then forgets.
    pub fn take_notifications(&self) -> Vec<ApnsNotification> {
        std::mem::take(&mut self.shared.recorded.lock().notifications)
    }

    pub fn notification_count(&self) -> usize {
        self.shared.recorded.lock().notifications.len()
    }

    /// Requests received so far, whatever the answer.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many different provider tokens were presented (and verified) so far.
    pub fn provider_tokens_seen(&self) -> usize {
        self.shared.recorded.lock().provider_tokens.len()
    }

    /// Answers 410 `Unregistered` for notifications to `device_token`.
    pub fn mark_unregistered(&self, device_token: &str) {
        self.shared
            .recorded
            .lock()
            .unregistered
            .insert(device_token.to_owned());
    }

    /// Answers the next `n` requests with 403 `ExpiredProviderToken`.
    pub fn expire_provider_token(&self, n: usize) {
        self.shared.recorded.lock().expire_next = n;
    }

    /// Answers the next `n` requests with `status` (503 `ServiceUnavailable`, 429
    /// `TooManyRequests`…) before checking anything else.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.faults.set(n, status);
    }
}

fn ec_key() -> io::Result<(String, DecodingKey)> {
    let secret = SecretKey::random(&mut rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(io::Error::other)?
        .to_string();
    let point = secret.public_key().to_encoded_point(false);
    Ok((pem, DecodingKey::from_ec_der(point.as_bytes())))
}

#[derive(Deserialize)]
struct TokenClaims {
    iat: u64,
}

impl Shared {
    fn handle(&self, request: Request<Bytes>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = self.faults.take() {
            let reason = match status.as_u16() {
                429 => "TooManyRequests",
                500 => "InternalServerError",
                503 => "ServiceUnavailable",
                _ => "Scripted",
            };
            return apns_error(status, reason);
        }
        if request.version() != Version::HTTP_2 {
            return apns_error(StatusCode::BAD_REQUEST, "BadHTTPVersion");
        }
        if request.method() != Method::POST {
            return apns_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
        }
        let Some(device_token) = request.uri().path().strip_prefix("/3/device/") else {
            return apns_error(StatusCode::NOT_FOUND, "BadPath");
        };
        let headers = request.headers();
        if let Err(reason) = self.check_provider_token(headers) {
            return apns_error(StatusCode::FORBIDDEN, reason);
        }
        match self.check_and_record(device_token, headers, request.body()) {
            Ok(apns_id) => {
                let mut response = server::plain(StatusCode::OK, "");
                if let Ok(value) = HeaderValue::from_str(&apns_id) {
                    response.headers_mut().insert("apns-id", value);
                }
                response
            }
            Err((status, reason)) => apns_error(status, reason),
        }
    }

    fn check_provider_token(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bearer "))
            .ok_or("MissingProviderToken")?;
        let known = self.recorded.lock().provider_tokens.get(token).copied();
        let iat = match known {
            Some(iat) => iat,
            None => self.verify_provider_token(token)?,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.saturating_sub(iat) > TOKEN_MAX_AGE_SECS {
            return Err("ExpiredProviderToken");
        }
        let mut recorded = self.recorded.lock();
        if recorded.expire_next > 0 {
            recorded.expire_next -= 1;
            return Err("ExpiredProviderToken");
        }
        if known.is_none() {
            recorded.provider_tokens.insert(token.to_owned(), iat);
        }
        Ok(())
    }

    /// The token's `iat`, if its key id, signature and issuer are right.
    fn verify_provider_token(&self, token: &str) -> Result<u64, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "InvalidProviderToken")?;
        if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(&self.key_id) {
            return Err("InvalidProviderToken");
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["iss"]);
        validation.validate_exp = false;
        validation.set_issuer(&[&self.team_id]);
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &self.public_key, &validation)
            .map_err(|_| "InvalidProviderToken")?
            .claims;
        Ok(claims.iat)
    }

    fn check_and_record(
        &self,
        device_token: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<String, (StatusCode, &'static str)> {
        let bad = |reason| (StatusCode::BAD_REQUEST, reason);
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let topic = header("apns-topic").ok_or_else(|| bad("MissingTopic"))?;
        if topic != self.topic {
            return Err(bad("TopicDisallowed"));
        }
        let push_type = header("apns-push-type").map(str::to_owned);
        if push_type.as_deref().is_some_and(|t| {
            ![
                "alert",
                "background",
                "voip",
                "complication",
                "fileprovider",
                "mdm",
                "location",
                "liveactivity",
                "pushtotalk",
            ]
            .contains(&t)
        }) {
            return Err(bad("InvalidPushType"));
        }
        let priority = match header("apns-priority") {
            None => None,
            Some(p) => Some(
                p.parse::<u8>()
                    .ok()
                    .filter(|p| matches!(p, 1 | 5 | 10))
                    .ok_or_else(|| bad("BadPriority"))?,
            ),
        };
        let expiration = match header("apns-expiration") {
            None => None,
            Some(e) => Some(e.parse::<u64>().map_err(|_| bad("BadExpirationDate"))?),
        };
        let apns_id = match header("apns-id") {
            None => new_apns_id(),
            Some(id) if is_uuid(id) => id.to_owned(),
            Some(_) => return Err(bad("BadMessageId")),
        };
        if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("BadDeviceToken"));
        }
        if body.is_empty() {
            return Err(bad("PayloadEmpty"));
        }
        if body.len() > MAX_PAYLOAD {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"));
        }
        let payload: Value = serde_json::from_slice(body).map_err(|_| bad("BadPayload"))?;
        if !payload["aps"].is_object() {
            return Err(bad("BadPayload"));
        }

        let mut recorded = self.recorded.lock();
        if recorded.unregistered.contains(device_token) {
            return Err((StatusCode::GONE, "Unregistered"));
        }
        recorded.notifications.push(ApnsNotification {
            apns_id: apns_id.clone(),
            device_token: device_token.to_owned(),
            version: Version::HTTP_2,
            topic: topic.to_owned(),
            push_type,
            priority,
            expiration,
            payload,
        });
        Ok(apns_id)
    }
}

/// Apple's error document; 410 also says since when the token is invalid.
fn apns_error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    if status == StatusCode::GONE {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        return server::json(status, &json!({ "reason": reason, "timestamp": millis }));
    }
    server::json(status, &json!({ "reason": reason }))
}

/// A random UUID in the upper-case form APNs uses.
fn new_apns_id() -> String {
    let hex = format!("{:032X}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

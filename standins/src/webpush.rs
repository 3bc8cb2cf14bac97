//! A Web Push service (RFC 8030) over HTTPS, and the browsers subscribed to it.
//!
//! [`WebPushStandIn::subscribe`] plays the browser: it makes a P-256 key pair and a 16-byte auth
//! secret and returns the subscription a server stores. `POST /push/{id}` then checks the VAPID
//! header (RFC 8292: ES256 signature against `k`, `aud` this origin, `exp` in the future and at
//! most 24 hours away, a `mailto:`/`https:` subject, and `k` equal to the key the subscription
//! was made for, if any), checks `TTL` and `Content-Encoding: aes128gcm`, decrypts the body with
//! the browser's private key (RFC 8291/8188) and records the plaintext. It answers 201 with a
//! `Location`.
//!
//! Scripted failures: 410 for marked subscriptions, and any status (503, 429…) for the next N
//! requests, answered before anything else is checked.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hkdf::Hkdf;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use p256::{PublicKey, SecretKey};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::Sha256;

use crate::server::{self, Bound, Faults, Protocols, Server};

/// How many verified VAPID authorizations to remember.
const VAPID_CACHE: usize = 10_000;
/// RFC 8292 §2: a VAPID token may be valid for at most 24 hours.
const MAX_VAPID_LIFETIME_SECS: u64 = 24 * 3600;
/// RFC 8030 §7.2: push services must accept 4096-byte messages and may refuse larger ones.
const MAX_MESSAGE: usize = 4096;

/// What a server stores for a browser: `PushSubscription.toJSON()`'s fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's P-256 public key, uncompressed, base64url.
    pub p256dh: String,
    /// The browser's 16-byte auth secret, base64url.
    pub auth: String,
}

/// One push message the service accepted, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// The subscription endpoint it was posted to.
    pub endpoint: String,
    pub ttl: u64,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The VAPID `sub` claim.
    pub vapid_subject: String,
    /// The VAPID `k` parameter (the application server's public key, base64url).
    pub vapid_key: String,
    pub plaintext: Vec<u8>,
}

/// A running push service on 127.0.0.1; dropping it stops it and closes its connections.
#[derive(Debug)]
pub struct WebPushStandIn {
    server: Server,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    origin: String,
    browsers: RwLock<HashMap<String, Browser>>,
    messages: Mutex<Vec<PushMessage>>,
    /// `Authorization` values that verified: each is checked once, its expiry every time.
    vapid_seen: Mutex<HashMap<String, Vapid>>,
    faults: Faults,
    requests: AtomicUsize,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Browser {
    endpoint: String,
    secret: SecretKey,
    public: Vec<u8>,
    auth: [u8; 16],
    /// The application server key the subscription was made for (raw point), if any.
    server_key: Option<Vec<u8>>,
    gone: bool,
}

/// A new VAPID key pair for an application server, as a PKCS#8 PEM private key (the file for
/// `TRIPTRIP_VAPID_PRIVATE_KEY_FILE`).
pub fn new_vapid_key_pem() -> io::Result<String> {
    Ok(SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(io::Error::other)?
        .to_string())
}

impl WebPushStandIn {
    pub async fn start() -> io::Result<Self> {
        let bound = Bound::new().await?;
        let shared = Arc::new(Shared {
            origin: bound.origin(),
            browsers: RwLock::new(HashMap::new()),
            messages: Mutex::new(Vec::new()),
            vapid_seen: Mutex::new(HashMap::new()),
            faults: Faults::default(),
            requests: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        });
        let handler_state = Arc::clone(&shared);
        let server = bound.serve(Protocols::Http1And2, move |request| {
            let shared = Arc::clone(&handler_state);
            async move { shared.handle(request) }
        })?;
        Ok(Self { server, shared })
    }

    /// The push service's origin, `https://127.0.0.1:port` (the VAPID audience).
    pub fn origin(&self) -> String {
        self.server.origin()
    }

    /// A new browser subscription that takes messages signed by any VAPID key.
    pub fn subscribe(&self) -> Subscription {
        self.shared.subscribe(None)
    }

    /// A new browser subscription made for `application_server_key` (base64url, as passed to
    /// `PushManager.subscribe`): messages signed with another VAPID key are refused with 403.
    /// `None` if the key is not base64url.
    pub fn subscribe_for(&self, application_server_key: &str) -> Option<Subscription> {
        let key = URL_SAFE_NO_PAD.decode(application_server_key).ok()?;
        Some(self.shared.subscribe(Some(key)))
    }

    /// Answers 410 Gone for messages to this subscription from now on.
    pub fn mark_gone(&self, subscription: &Subscription) {
        let mut browsers = self.shared.browsers.write();
        if let Some(browser) = browsers
            .values_mut()
            .find(|b| b.endpoint == subscription.endpoint)
        {
            browser.gone = true;
        }
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<PushMessage> {
        self.shared.messages.lock().clone()
    }

    /// The accepted messages, which the stand-in then forgets.
    pub fn take_messages(&self) -> Vec<PushMessage> {
        std::mem::take(&mut self.shared.messages.lock())
    }

    pub fn message_count(&self) -> usize {
        self.shared.messages.lock().len()
    }

    /// Requests received so far, whatever the answer.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answers the next `n` requests with `status` (503, 429…) before checking anything else.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.shared.faults.set(n, status);
    }
}

/// A verified VAPID authorization.
#[derive(Debug, Clone)]
struct Vapid {
    subject: String,
    /// `k` as sent (base64url) and decoded.
    key: String,
    point: Vec<u8>,
    exp: u64,
}

#[derive(Deserialize)]
struct VapidClaims {
    exp: u64,
    sub: String,
}

impl Shared {
    fn subscribe(&self, server_key: Option<Vec<u8>>) -> Subscription {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let auth: [u8; 16] = rand::random();
        let id = format!("{:032x}", rand::random::<u128>());
        let endpoint = format!("{}/push/{id}", self.origin);
        let subscription = Subscription {
            endpoint: endpoint.clone(),
            p256dh: URL_SAFE_NO_PAD.encode(&public),
            auth: URL_SAFE_NO_PAD.encode(auth),
        };
        self.browsers.write().insert(
            id,
            Browser {
                endpoint,
                secret,
                public,
                auth,
                server_key,
                gone: false,
            },
        );
        subscription
    }

    fn handle(&self, request: Request<Bytes>) -> Response<Full<Bytes>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = self.faults.take() {
            return server::plain(status, "scripted failure");
        }
        if request.method() != Method::POST {
            return server::plain(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        }
        let Some(id) = request.uri().path().strip_prefix("/push/") else {
            return server::plain(StatusCode::NOT_FOUND, "no such subscription");
        };
        let browsers = self.browsers.read();
        let Some(browser) = browsers.get(id) else {
            return server::plain(StatusCode::NOT_FOUND, "no such subscription");
        };
        if browser.gone {
            return server::plain(StatusCode::GONE, "subscription expired");
        }
        let headers = request.headers();
        let (vapid_subject, vapid_key) = match self.check_vapid(headers, browser) {
            Ok(vapid) => vapid,
            Err((status, text)) => return server::plain(status, text),
        };
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(ttl) = header("ttl").and_then(|t| t.parse::<u64>().ok()) else {
            return server::plain(StatusCode::BAD_REQUEST, "missing or malformed TTL");
        };
        if header("content-encoding") != Some("aes128gcm") {
            return server::plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "aes128gcm only");
        }
        if request.body().len() > MAX_MESSAGE {
            return server::plain(StatusCode::PAYLOAD_TOO_LARGE, "message over 4096 bytes");
        }
        let plaintext = match decrypt(request.body(), browser) {
            Ok(plaintext) => plaintext,
            Err(_) => return server::plain(StatusCode::BAD_REQUEST, "cannot decrypt"),
        };
        let message = PushMessage {
            endpoint: browser.endpoint.clone(),
            ttl,
            urgency: header("urgency").map(str::to_owned),
            topic: header("topic").map(str::to_owned),
            vapid_subject,
            vapid_key,
            plaintext,
        };
        drop(browsers);
        self.messages.lock().push(message);
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut response = server::plain(StatusCode::CREATED, "");
        if let Ok(location) = HeaderValue::from_str(&format!("{}/message/{n}", self.origin)) {
            response
                .headers_mut()
                .insert(http::header::LOCATION, location);
        }
        response
    }

    /// The VAPID subject and key, or the refusal.
    fn check_vapid(
        &self,
        headers: &HeaderMap,
        browser: &Browser,
    ) -> Result<(String, String), (StatusCode, &'static str)> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("vapid "))
            .ok_or((StatusCode::UNAUTHORIZED, "missing vapid authorization"))?;
        let seen = self.vapid_seen.lock().get(value).cloned();
        let vapid = match seen {
            Some(vapid) => vapid,
            None => {
                let vapid = self.verify_vapid(value)?;
                let mut seen = self.vapid_seen.lock();
                if seen.len() >= VAPID_CACHE {
                    seen.clear();
                }
                seen.insert(value.to_owned(), vapid.clone());
                vapid
            }
        };
        if vapid.exp <= unix_now() {
            return Err((StatusCode::UNAUTHORIZED, "vapid token expired"));
        }
        if browser
            .server_key
            .as_ref()
            .is_some_and(|k| *k != vapid.point)
        {
            return Err((
                StatusCode::FORBIDDEN,
                "vapid key differs from the subscription's applicationServerKey",
            ));
        }
        Ok((vapid.subject, vapid.key))
    }

    /// Checks `t=…, k=…`: the signature against `k`, the audience, the lifetime and the subject.
    fn verify_vapid(&self, value: &str) -> Result<Vapid, (StatusCode, &'static str)> {
        let unauthorized = |text| (StatusCode::UNAUTHORIZED, text);
        let mut token = None;
        let mut key = None;
        for param in value.split(',') {
            match param.trim().split_once('=') {
                Some(("t", t)) => token = Some(t),
                Some(("k", k)) => key = Some(k),
                _ => {}
            }
        }
        let (Some(token), Some(key)) = (token, key) else {
            return Err(unauthorized("vapid needs t and k"));
        };
        let point = URL_SAFE_NO_PAD
            .decode(key)
            .ok()
            .filter(|p| PublicKey::from_sec1_bytes(p).is_ok())
            .ok_or_else(|| unauthorized("k is not a P-256 public key"))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.origin]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<VapidClaims>(
            token,
            &DecodingKey::from_ec_der(&point),
            &validation,
        )
        .map_err(|_| unauthorized("vapid token does not verify"))?
        .claims;
        if claims.exp > unix_now() + MAX_VAPID_LIFETIME_SECS {
            return Err(unauthorized("vapid token valid for more than 24 hours"));
        }
        if !(claims.sub.starts_with("mailto:") || claims.sub.starts_with("https:")) {
            return Err(unauthorized("vapid sub is neither mailto: nor https:"));
        }
        Ok(Vapid {
            subject: claims.sub,
            key: key.to_owned(),
            point,
            exp: claims.exp,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 8291 decryption of a one-record `aes128gcm` body, as a browser does it.
fn decrypt(body: &[u8], browser: &Browser) -> Result<Vec<u8>, &'static str> {
    let header = body.get(..21).ok_or("short header")?;
    let salt = &header[..16];
    let record_size = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    let id_len = usize::from(header[20]);
    let key_id = body.get(21..21 + id_len).ok_or("short key id")?;
    let ciphertext = &body[21 + id_len..];
    let fits = usize::try_from(record_size).is_ok_and(|rs| ciphertext.len() <= rs);
    if id_len != 65 || record_size < 18 || !fits || ciphertext.len() < 17 {
        return Err("not one aes128gcm record with a P-256 key id");
    }
    let sender = PublicKey::from_sec1_bytes(key_id).map_err(|_| "key id is not a P-256 key")?;
    let shared = p256::ecdh::diffie_hellman(browser.secret.to_nonzero_scalar(), sender.as_affine());

    let mut key_info = Vec::with_capacity(14 + 130);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(&browser.public);
    key_info.extend_from_slice(key_id);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&browser.auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| "hkdf")?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| "hkdf")?;
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| "hkdf")?;

    let mut record = ciphertext.to_vec();
    Aes128Gcm::new(&cek.into())
        .decrypt_in_place(&Nonce::from(nonce), b"", &mut record)
        .map_err(|_| "authentication failed")?;
    let end = record
        .iter()
        .rposition(|&b| b != 0)
        .ok_or("no padding delimiter")?;
    if record[end] != 0x02 {
        return Err("the only record must end with delimiter 2");
    }
    record.truncate(end);
    Ok(record)
}

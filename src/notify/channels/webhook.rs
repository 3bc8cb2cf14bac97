//! Signed webhooks after the Standard Webhooks specification: a JSON body POSTed with the
//! headers `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`).
//!
//! Delivery is at least once: the caller retries a [`SendError::Transient`] with the same id, so
//! `webhook-id` stays the same across attempts and a receiver drops duplicates by it; timestamp
//! and signature are made afresh for each attempt. Signing and verifying are pure functions.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::http::{read_body, transport_error, wrong_target};
use super::{Message, SendError, Sent, Target, WEBHOOK_TIMEOUT};

/// How far a receiver lets `webhook-timestamp` stray from its clock (the specification's
/// recommendation), in seconds.
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 5 * 60;

/// The provider's name in error messages.
const PROVIDER: &str = "webhook";

/// The longest id accepted for `webhook-id`.
const MAX_ID_LEN: usize = 255;

/// The HMAC key of a webhook, from its secret: `whsec_<base64>` stands for the decoded bytes (the
/// Standard Webhooks form); any other text stands for its own UTF-8 bytes.
#[derive(Clone)]
pub struct WebhookKey(Hmac<Sha256>);

/// A webhook secret that stands for no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    #[error("the webhook secret is empty")]
    Empty,
    #[error("the webhook secret starts with whsec_ but the rest is not base64")]
    NotBase64,
}

impl WebhookKey {
    pub fn from_secret(secret: &str) -> Result<Self, InvalidSecret> {
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD
                .decode(encoded)
                .map_err(|_| InvalidSecret::NotBase64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(InvalidSecret::Empty);
        }
        // HMAC takes keys of any length: this cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| InvalidSecret::Empty)?;
        Ok(Self(mac))
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl FromStr for WebhookKey {
    type Err = InvalidSecret;

    fn from_str(secret: &str) -> Result<Self, InvalidSecret> {
        Self::from_secret(secret)
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(..)")
    }
}

/// The `webhook-signature` header value for one attempt: `v1,<base64 signature>`.
pub fn sign(key: &WebhookKey, id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = key.mac(id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Why a received webhook is not to be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than {TIMESTAMP_TOLERANCE_SECS} s away from now")]
    OutsideTolerance,
    #[error("no v1 signature in webhook-signature matches")]
    NoMatchingSignature,
}

/// Checks a received webhook: `signatures` is the `webhook-signature` header (space-separated
/// `v1,<base64>` entries, of which one must match; other versions are ignored) and `now` the
/// receiver's clock in unix seconds. Comparison is constant-time.
pub fn verify(
    key: &WebhookKey,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: u64,
) -> Result<(), VerifyError> {
    let timestamp: u64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if timestamp.abs_diff(now) > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::OutsideTolerance);
    }
    let mac = key.mac(id, timestamp, body);
    let matches = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

/// The `webhook-id` of a notification delivery: the same for every attempt of that delivery.
pub fn delivery_webhook_id(delivery_id: i64) -> String {
    format!("delivery_{delivery_id}")
}

#[derive(serde::Serialize)]
struct NotificationBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    notification_id: i64,
    delivery_id: i64,
    user_id: &'a str,
    notification_type: &'a str,
    title: &'a str,
    body: &'a str,
    payload: &'a serde_json::Value,
}

/// The JSON body a notification delivery posts: `{"type":"notification","notification_id":…,
/// "delivery_id":…,"user_id":…,"notification_type":…,"title":…,"body":…,"payload":…}`.
pub fn notification_body(msg: &Message) -> Result<Vec<u8>, SendError> {
    serde_json::to_vec(&NotificationBody {
        kind: "notification",
        notification_id: msg.notification_id,
        delivery_id: msg.delivery_id,
        user_id: &msg.user_id,
        notification_type: &msg.kind,
        title: &msg.title,
        body: &msg.body,
        payload: &msg.payload,
    })
    .map_err(|e| SendError::Permanent(format!("cannot encode the webhook body: {e}")))
}

/// Posts signed webhooks; cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
}

impl WebhookSender {
    /// Webhooks need no settings of their own, only an HTTP client. A 3xx answer that reaches
    /// the sender (the client does not follow it) counts as a permanent failure.
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// Delivers a notification to a [`Target::Webhook`], with the delivery's stable id.
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::Webhook { url, secret } = target else {
            return Err(wrong_target(PROVIDER, target));
        };
        let body = notification_body(msg)?;
        self.send_event(url, secret, &delivery_webhook_id(msg.delivery_id), &body)
            .await
    }

    /// Posts `body` (JSON) to `url`, signed with `secret`, as event `event_id`: the lower level
    /// that the outbox relay uses with its own ids. `event_id` must be the same on every retry.
    pub async fn send_event(
        &self,
        url: &str,
        secret: &str,
        event_id: &str,
        body: &[u8],
    ) -> Result<Sent, SendError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| SendError::InvalidTarget(format!("webhook URL {url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::InvalidTarget(format!(
                "webhook URL scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let key =
            WebhookKey::from_secret(secret).map_err(|e| SendError::InvalidTarget(e.to_string()))?;
        if event_id.is_empty()
            || event_id.len() > MAX_ID_LEN
            || !event_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SendError::Permanent(format!(
                "webhook id {event_id:?} is not 1 to {MAX_ID_LEN} visible ASCII characters"
            )));
        }
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign(&key, event_id, timestamp, body);

        let response = self
            .http
            .post(url)
            .timeout(WEBHOOK_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        let status = response.status();
        let answer = read_body(PROVIDER, response).await?;
        classify(status, &answer)
    }
}

fn classify(status: reqwest::StatusCode, answer: &[u8]) -> Result<Sent, SendError> {
    if status.is_success() {
        return Ok(Sent { provider_id: None });
    }
    let text = String::from_utf8_lossy(&answer[..answer.len().min(512)]);
    let detail = format!("webhook receiver answered {status}: {text}");
    Err(match status.as_u16() {
        410 => SendError::InvalidTarget(detail),
        408 | 429 | 500..=599 => SendError::Transient(detail),
        _ => SendError::Permanent(detail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification; the signature also comes out of
    /// Python: `base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    /// b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}', hashlib.sha256)
    /// .digest())`.
    #[test]
    fn signs_the_specification_example() {
        let key = WebhookKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// A secret without the `whsec_` prefix is used as text; Python:
    /// `hmac.new(b"plain-secret", b'delivery_42.1700000000.{"a":1}', hashlib.sha256)`.
    #[test]
    fn a_plain_secret_is_its_own_bytes() {
        let key = WebhookKey::from_secret("plain-secret").unwrap();
        let signature = sign(&key, "delivery_42", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(signature, "v1,99drOZvY6RF3raV/FMbaev40hFEiv7cPmsyO+5vyYSo=");
    }

    #[test]
    fn verify_accepts_any_matching_entry_and_rejects_tampering() {
        let key = WebhookKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let good = sign(&key, id, 1614265330, body);
        let header = format!("v2,abc v1,bm90IGl0 {good}");
        assert_eq!(
            verify(&key, id, "1614265330", &header, body, 1614265331),
            Ok(())
        );

        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&key, id, "1614265330", &good, tampered, 1614265330),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(&key, "msg_other", "1614265330", &good, body, 1614265330),
            Err(VerifyError::NoMatchingSignature)
        );
        let other = WebhookKey::from_secret("another secret").unwrap();
        assert_eq!(
            verify(&other, id, "1614265330", &good, body, 1614265330),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(&key, id, "1614265330", "v1,!!!", body, 1614265330),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn verify_bounds_the_timestamp() {
        let key = WebhookKey::from_secret("s").unwrap();
        let signature = sign(&key, "id", 1000, b"{}");
        assert_eq!(
            verify(
                &key,
                "id",
                "1000",
                &signature,
                b"{}",
                1000 + TIMESTAMP_TOLERANCE_SECS
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &key,
                "id",
                "1000",
                &signature,
                b"{}",
                1001 + TIMESTAMP_TOLERANCE_SECS
            ),
            Err(VerifyError::OutsideTolerance)
        );
        assert_eq!(
            verify(&key, "id", "-5", &signature, b"{}", 1000),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify(&key, "id", "1e3", &signature, b"{}", 1000),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn secrets_that_stand_for_no_key_are_refused() {
        assert_eq!(
            WebhookKey::from_secret("").err(),
            Some(InvalidSecret::Empty)
        );
        assert_eq!(
            WebhookKey::from_secret("whsec_").err(),
            Some(InvalidSecret::Empty)
        );
        assert_eq!(
            WebhookKey::from_secret("whsec_not base64!").err(),
            Some(InvalidSecret::NotBase64)
        );
        assert_eq!(
            format!("{:?}", WebhookKey::from_secret("hidden").unwrap()),
            "WebhookKey(..)"
        );
    }

    #[test]
    fn statuses_map_to_retry_or_stop() {
        let status = |code| reqwest::StatusCode::from_u16(code).unwrap();
        assert!(classify(status(204), b"").is_ok());
        assert!(matches!(
            classify(status(410), b""),
            Err(SendError::InvalidTarget(_))
        ));
        for code in [408, 429, 500, 502, 503] {
            assert!(matches!(
                classify(status(code), b""),
                Err(SendError::Transient(_))
            ));
        }
        for code in [301, 400, 401, 404, 413] {
            assert!(matches!(
                classify(status(code), b""),
                Err(SendError::Permanent(_))
            ));
        }
    }
}

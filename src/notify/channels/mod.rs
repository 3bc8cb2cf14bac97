//! Outside channels a notification can be delivered on: push (FCM HTTP v1, APNs HTTP/2, Web Push
//! with VAPID), email over SMTP, SMS through a Twilio-compatible HTTP API, and signed webhooks.
//!
//! A provider only speaks its protocol: it sends one [`Message`] to one [`Target`] and tells a
//! transient failure (retry later) from a permanent one (stop), and a permanent failure that
//! proves the target dead ([`SendError::InvalidTarget`]: the dispatcher deletes the push token or
//! disables the address). Retries, claiming and state live in the dispatcher and in SQL.

pub mod apns;
mod configured;
pub mod egress;
pub mod email;
pub mod fcm;
pub mod http;
pub mod sms;
pub mod webhook;
pub mod webpush;

use std::time::{Duration, SystemTime};

pub use configured::{ChannelSettings, Channels};

/// How urgent a notification is (seed §5.2); providers map it to their own priority fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Low,
    Medium,
    High,
    Critical,
}

/// One rendered notification, ready for a provider.
#[derive(Debug, Clone)]
pub struct Message {
    /// `realtime.notification_deliveries.id`: unique per (notification, channel, target); use it
    /// as the provider's idempotency or collapse key where the protocol has one.
    pub delivery_id: i64,
    pub notification_id: i64,
    pub user_id: String,
    /// The notification type, for example `booking_confirmed`.
    pub kind: String,
    pub priority: Priority,
    /// Rendered from the type's templates and the payload.
    pub title: String,
    pub body: String,
    /// The notification's payload as the service wrote it (a JSON object).
    pub payload: serde_json::Value,
    /// After this the notification is worthless (the type's TTL); push providers pass it on.
    pub expires_at: SystemTime,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An FCM registration token.
    Fcm {
        token: String,
    },
    /// An APNs device token (hex).
    Apns {
        token: String,
    },
    /// A W3C Push API subscription: endpoint URL and the browser's keys (base64url).
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    Email {
        address: String,
    },
    /// E.164 phone number.
    Sms {
        phone: String,
    },
    /// A webhook URL and its HMAC secret.
    Webhook {
        url: String,
        secret: String,
    },
}

/// What the provider accepted, for the delivery's history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// The provider's id for the message (FCM message name, apns-id, SMTP queue id, Twilio SID).
    pub provider_id: Option<String>,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Timeouts, connection failures, 429 and 5xx, SMTP 4xx: retry with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider refused this message for good (bad request, auth misconfigured, SMTP 5xx):
    /// no retry.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The provider says the target no longer exists (FCM UNREGISTERED, APNs 410 or
    /// BadDeviceToken, Web Push 404/410, SMTP 550 unknown mailbox, invalid phone number): no
    /// retry, and the target is removed.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
}

/// A provider is configured, but its settings cannot be used (a malformed URL, an unreadable
/// key file, a missing companion setting). Reported at startup, never while sending.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault, for example `TRIPTRIP_SMTP_URL`.
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// Timeouts per channel (seed §5.3).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(30);
pub const EMAIL_TIMEOUT: Duration = Duration::from_secs(60);
pub const SMS_TIMEOUT: Duration = Duration::from_secs(30);
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

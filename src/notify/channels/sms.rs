//! SMS through a Twilio-compatible HTTP API: `POST {endpoint}/2010-04-01/Accounts/{sid}/
//! Messages.json` with a form body (`To`, `From` or `MessagingServiceSid`, `Body`) and HTTP basic
//! authentication.
//!
//! The API has no idempotency key: a crash between the provider's 201 and the delivery's record
//! sends the text again on retry (at least once). Numbers must be E.164; anything else is an
//! invalid target before a request is made.

use std::fmt;

use clap::Args;

use super::http::{read_body, transport_error, wrong_target};
use super::{ConfigError, Message, SendError, Sent, Target, SMS_TIMEOUT};

/// Twilio's limit for one message body, in characters.
pub const MAX_BODY_CHARS: usize = 1600;

/// The provider's name in error messages.
const PROVIDER: &str = "SMS";

/// Twilio error codes that say the `To` number cannot get texts: not a number (21211, 21217),
/// unreachable (21214, 21612), not mobile (21614), a region the account may not text (21408),
/// and a recipient who replied STOP (21610).
const INVALID_TO_CODES: [u64; 7] = [21211, 21214, 21217, 21408, 21610, 21612, 21614];

/// Settings of the SMS provider; it is off while `TRIPTRIP_SMS_ACCOUNT_SID` is unset.
#[derive(Clone, Args)]
pub struct SmsSettings {
    /// Base URL of the Twilio-compatible API.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_SMS_ENDPOINT",
        default_value = "https://api.twilio.com"
    )]
    pub sms_endpoint: String,

    /// Account SID (`AC…`); the user name of the API's basic authentication.
    #[arg(long, global = true, env = "TRIPTRIP_SMS_ACCOUNT_SID")]
    pub sms_account_sid: Option<String>,

    /// Auth token of the account (prefer the environment variable over the flag, which other
    /// local users can see in the process list).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_SMS_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub sms_auth_token: Option<String>,

    /// Sender: an E.164 number or alphanumeric sender id, or a Messaging Service SID (`MG`
    /// followed by 32 hex digits), which is then sent as `MessagingServiceSid`.
    #[arg(long, global = true, env = "TRIPTRIP_SMS_FROM")]
    pub sms_from: Option<String>,
}

impl fmt::Debug for SmsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsSettings")
            .field("sms_endpoint", &self.sms_endpoint)
            .field("sms_account_sid", &self.sms_account_sid)
            .field(
                "sms_auth_token",
                &self.sms_auth_token.as_ref().map(|_| ".."),
            )
            .field("sms_from", &self.sms_from)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sender {
    Number(String),
    MessagingService(String),
}

/// Sends texts; cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct SmsProvider {
    http: reqwest::Client,
    messages_url: reqwest::Url,
    account_sid: String,
    auth_token: String,
    sender: Sender,
}

impl fmt::Debug for SmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsProvider")
            .field("messages_url", &self.messages_url.as_str())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl SmsProvider {
    /// `None` when no account is configured; an error when the account is configured without a
    /// token or sender, or the endpoint is not an http(s) URL.
    pub fn from_settings(
        settings: &SmsSettings,
        http: reqwest::Client,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(account_sid) = non_empty(&settings.sms_account_sid) else {
            return Ok(None);
        };
        if !account_sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                "TRIPTRIP_SMS_ACCOUNT_SID",
                "an account SID has only letters and digits",
            ));
        }
        let auth_token = non_empty(&settings.sms_auth_token).ok_or_else(|| {
            ConfigError::new("TRIPTRIP_SMS_AUTH_TOKEN", "required with an account SID")
        })?;
        let from = non_empty(&settings.sms_from)
            .ok_or_else(|| ConfigError::new("TRIPTRIP_SMS_FROM", "required with an account SID"))?;
        let endpoint = reqwest::Url::parse(&settings.sms_endpoint)
            .map_err(|e| ConfigError::new("TRIPTRIP_SMS_ENDPOINT", e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "TRIPTRIP_SMS_ENDPOINT",
                "must be an http or https URL",
            ));
        }
        let base = endpoint.as_str().trim_end_matches('/');
        let messages_url = reqwest::Url::parse(&format!(
            "{base}/2010-04-01/Accounts/{account_sid}/Messages.json"
        ))
        .map_err(|e| ConfigError::new("TRIPTRIP_SMS_ENDPOINT", e.to_string()))?;
        let sender = if is_messaging_service_sid(from) {
            Sender::MessagingService(from.to_owned())
        } else {
            Sender::Number(from.to_owned())
        };
        Ok(Some(Self {
            http,
            messages_url,
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            sender,
        }))
    }

    /// Texts `title: body` to a [`Target::Sms`]; the Twilio message SID becomes the provider id.
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::Sms { phone } = target else {
            return Err(wrong_target(PROVIDER, target));
        };
        if !is_e164(phone) {
            return Err(SendError::InvalidTarget(format!(
                "{phone:?} is not an E.164 phone number"
            )));
        }
        let text = sms_text(&msg.title, &msg.body);
        let sender = match &self.sender {
            Sender::Number(number) => ("From", number.as_str()),
            Sender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let form = [("To", phone.as_str()), sender, ("Body", text.as_str())];
        let response = self
            .http
            .post(self.messages_url.clone())
            .timeout(SMS_TIMEOUT)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        let status = response.status();
        let answer = read_body(PROVIDER, response).await?;
        classify(status, &answer)
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn is_messaging_service_sid(from: &str) -> bool {
    from.len() == 34 && from.starts_with("MG") && from[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `+` and 2 to 15 digits, the first not 0.
pub fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// The text of a message: `title: body` (or the body alone when the title is empty), cut to
/// [`MAX_BODY_CHARS`] characters.
pub fn sms_text(title: &str, body: &str) -> String {
    let full = if title.is_empty() {
        body.to_owned()
    } else {
        format!("{title}: {body}")
    };
    match full.char_indices().nth(MAX_BODY_CHARS) {
        Some((cut, _)) => full[..cut].to_owned(),
        None => full,
    }
}

#[derive(serde::Deserialize)]
struct Created {
    sid: Option<String>,
}

#[derive(serde::Deserialize)]
struct Refused {
    code: Option<u64>,
    message: Option<String>,
}

fn classify(status: reqwest::StatusCode, answer: &[u8]) -> Result<Sent, SendError> {
    if status.is_success() {
        let provider_id = serde_json::from_slice::<Created>(answer)
            .ok()
            .and_then(|created| created.sid);
        return Ok(Sent { provider_id });
    }
    let refused = serde_json::from_slice::<Refused>(answer).ok();
    let code = refused.as_ref().and_then(|r| r.code);
    let detail = match &refused {
        Some(Refused {
            code: Some(code),
            message,
        }) => format!(
            "SMS provider answered {status}, error {code}: {}",
            message.as_deref().unwrap_or("")
        ),
        _ => format!(
            "SMS provider answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(512)])
        ),
    };
    Err(match status.as_u16() {
        400 | 404 if code.is_some_and(|c| INVALID_TO_CODES.contains(&c)) => {
            SendError::InvalidTarget(detail)
        }
        408 | 429 | 500..=599 => SendError::Transient(detail),
        _ => SendError::Permanent(detail),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_title_and_body_cut_at_a_char_boundary() {
        assert_eq!(sms_text("Booked", "Room 4"), "Booked: Room 4");
        assert_eq!(sms_text("", "Room 4"), "Room 4");
        let long = "é".repeat(2000);
        let text = sms_text("T", &long);
        assert_eq!(text.chars().count(), MAX_BODY_CHARS);
        assert!(text.starts_with("T: é"));
    }

    #[test]
    fn only_e164_numbers_pass() {
        for good in ["+14155550100", "+819012345678", "+12"] {
            assert!(is_e164(good), "{good}");
        }
        for bad in [
            "",
            "+",
            "14155550100",
            "+0123",
            "+1 415 555",
            "+1234567890123456",
            "+1a",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn messaging_service_sids_are_told_from_numbers() {
        assert!(is_messaging_service_sid(
            "MG0123456789abcdef0123456789abcdef"
        ));
        assert!(!is_messaging_service_sid("+14155550100"));
        assert!(!is_messaging_service_sid("MGshort"));
    }

    #[test]
    fn answers_map_to_retry_or_stop() {
        let status = |code| reqwest::StatusCode::from_u16(code).unwrap();
        assert_eq!(
            classify(status(201), br#"{"sid":"SM1","status":"queued"}"#),
            Ok(Sent {
                provider_id: Some("SM1".into())
            })
        );
        let invalid = br#"{"code":21211,"message":"Invalid 'To' Phone Number","status":400}"#;
        assert!(matches!(
            classify(status(400), invalid),
            Err(SendError::InvalidTarget(_))
        ));
        let other = br#"{"code":21602,"message":"Message body is required","status":400}"#;
        assert!(matches!(
            classify(status(400), other),
            Err(SendError::Permanent(_))
        ));
        for code in [429, 500, 503] {
            assert!(matches!(
                classify(status(code), b""),
                Err(SendError::Transient(_))
            ));
        }
        for code in [401, 403, 404] {
            assert!(matches!(
                classify(status(code), b"<html>"),
                Err(SendError::Permanent(_))
            ));
        }
    }

    #[test]
    fn settings_are_checked_when_an_account_is_set() {
        let mut settings = SmsSettings {
            sms_endpoint: "https://api.twilio.com".into(),
            sms_account_sid: None,
            sms_auth_token: None,
            sms_from: None,
        };
        let http = reqwest::Client::new();
        assert!(matches!(
            SmsProvider::from_settings(&settings, http.clone()),
            Ok(None)
        ));
        settings.sms_account_sid = Some("AC123".into());
        let err = SmsProvider::from_settings(&settings, http.clone()).unwrap_err();
        assert_eq!(err.setting, "TRIPTRIP_SMS_AUTH_TOKEN");
        settings.sms_auth_token = Some("s3cr3t".into());
        settings.sms_from = Some("+14155550100".into());
        settings.sms_endpoint = "ftp://example.com".into();
        let err = SmsProvider::from_settings(&settings, http.clone()).unwrap_err();
        assert_eq!(err.setting, "TRIPTRIP_SMS_ENDPOINT");
        settings.sms_endpoint = "http://127.0.0.1:9/".into();
        let provider = SmsProvider::from_settings(&settings, http)
            .unwrap()
            .unwrap();
        assert_eq!(
            provider.messages_url.as_str(),
            "http://127.0.0.1:9/2010-04-01/Accounts/AC123/Messages.json"
        );
        assert!(!format!("{provider:?}").contains("s3cr3t"));
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }
}

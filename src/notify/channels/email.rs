//! Email over SMTP (lettre, pooled, TLS by rustls): a text part with the body and an HTML
//! alternative, the subject being the title.
//!
//! The `Message-ID` is made from the delivery id, so a message sent again after a crash (between
//! the server's 250 and the delivery's record) is the same message to the receiver, which may
//! drop it. A reply names the failure: 4xx retries, 5xx stops, and an unknown mailbox (550, 551,
//! 553, or an enhanced status 5.1.x about the recipient) disables the address.

use std::fmt;
use std::sync::Arc;

use clap::Args;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::Semaphore;

use super::http::wrong_target;
use super::{ConfigError, Message, SendError, Sent, Target, EMAIL_TIMEOUT};

/// Connections kept open to the SMTP server at most.
const POOL_SIZE: u32 = 8;

/// Settings of the email provider; it is off while `TRIPTRIP_SMTP_URL` is unset.
#[derive(Clone, Args)]
pub struct EmailSettings {
    /// SMTP server as a URL: `smtps://user:pass@host:465` (TLS), `smtp://user:pass@host:587?
    /// tls=required` (STARTTLS), or `smtp://host:25` (plain text, for a local relay only). The
    /// user name and password are percent-encoded.
    #[arg(long, global = true, env = "TRIPTRIP_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender mailbox, for example `TripTrip <notify@example.com>`; its domain also names the
    /// messages' `Message-ID`s.
    #[arg(long, global = true, env = "TRIPTRIP_SMTP_FROM")]
    pub smtp_from: Option<String>,
}

impl fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp_url", &self.smtp_url.as_deref().map(without_password))
            .field("smtp_from", &self.smtp_from)
            .finish()
    }
}

/// The URL as it may be logged: with its password, if any, replaced.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // A URL with a password has a host, so setting the password cannot fail.
            let _ = parsed.set_password(Some("hidden"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Sends mail through one pooled SMTP transport; cheap to clone.
#[derive(Clone)]
pub struct EmailProvider {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// One permit per pooled connection: a send beyond the pool would open (and then drop) a
    /// connection of its own, one per mail under load.
    connections: Arc<Semaphore>,
}

impl fmt::Debug for EmailProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailProvider")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl EmailProvider {
    /// `None` when no SMTP URL is configured; an error when the URL or the sender does not
    /// parse. Must run inside a Tokio runtime (the pool starts its cleanup task).
    pub fn from_settings(settings: &EmailSettings) -> Result<Option<Self>, ConfigError> {
        let Some(url) = settings
            .smtp_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        let from = settings
            .smtp_from
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| ConfigError::new("TRIPTRIP_SMTP_FROM", "required with an SMTP URL"))?;
        let from: Mailbox = from
            .parse()
            .map_err(|e| ConfigError::new("TRIPTRIP_SMTP_FROM", format!("{e}")))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| ConfigError::new("TRIPTRIP_SMTP_URL", e.to_string()))?
            .timeout(Some(EMAIL_TIMEOUT))
            .pool_config(PoolConfig::new().max_size(POOL_SIZE))
            .build();
        Ok(Some(Self {
            transport,
            from,
            connections: Arc::new(Semaphore::new(POOL_SIZE as usize)),
        }))
    }

    /// Mails a [`Target::Email`]; the provider id is the server's queue id (or its reply).
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::Email { address } = target else {
            return Err(wrong_target("email", target));
        };
        let to: Address = address.trim().parse().map_err(|e| {
            SendError::InvalidTarget(format!("{address:?} is not an email address: {e}"))
        })?;
        let mail = compose(&self.from, Mailbox::new(None, to), msg)?;
        let send = async {
            let _connection = self.connections.acquire().await;
            self.transport.send(mail).await
        };
        let response = tokio::time::timeout(EMAIL_TIMEOUT, send)
            .await
            .map_err(|_| SendError::Transient(format!("no answer within {EMAIL_TIMEOUT:?}")))?
            .map_err(|e| smtp_error(&e))?;
        let reply = response.message().collect::<Vec<_>>().join(" ");
        Ok(Sent {
            provider_id: Some(queue_id(&reply).unwrap_or(&reply).to_owned()),
        })
    }
}

/// The `Message-ID` of a delivery's mail: the same for every attempt.
pub fn message_id(delivery_id: i64, domain: &str) -> String {
    format!("<delivery.{delivery_id}@{domain}>")
}

fn compose(from: &Mailbox, to: Mailbox, msg: &Message) -> Result<lettre::Message, SendError> {
    let header = |name: &'static str, value: String| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
    };
    lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(msg.title.clone())
        .message_id(Some(message_id(msg.delivery_id, from.email.domain())))
        .raw_header(header(
            "X-Triptrip-Notification",
            msg.notification_id.to_string(),
        ))
        .raw_header(header("X-Triptrip-Delivery", msg.delivery_id.to_string()))
        .raw_header(header("X-Triptrip-Type", msg.kind.clone()))
        .multipart(MultiPart::alternative_plain_html(
            msg.body.clone(),
            html_body(&msg.title, &msg.body),
        ))
        .map_err(|e| SendError::Permanent(format!("cannot build the mail: {e}")))
}

/// The HTML alternative: title and body escaped, the body's line breaks kept.
pub fn html_body(title: &str, body: &str) -> String {
    let title = escape_html(title);
    let body = escape_html(body).replace('\n', "<br>\n");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{body}</p></body></html>\n"
    )
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// `queued as ABC123` in a 250 reply (Postfix, Exim and most relays say it so).
fn queue_id(reply: &str) -> Option<&str> {
    let (_, rest) = reply.split_once("queued as ")?;
    rest.split_whitespace().next()
}

fn smtp_error(e: &lettre::transport::smtp::Error) -> SendError {
    // lettre's message already ends with the server's reply (its source).
    let text = e.to_string();
    if e.is_transient() {
        return SendError::Transient(text);
    }
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        let reply = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default();
        return if names_a_dead_mailbox(&code, &reply) {
            SendError::InvalidTarget(text)
        } else {
            SendError::Permanent(text)
        };
    }
    // lettre refusing the message itself (no common AUTH mechanism, 8-bit data to a 7-bit
    // server) will refuse it again; everything else is the connection's fault.
    if e.is_client() {
        SendError::Permanent(text)
    } else {
        SendError::Transient(text)
    }
}

/// Whether a permanent reply says the recipient's mailbox does not exist: an enhanced status
/// code decides when the server sends one (5.1.x addressing, but not 5.1.7/5.1.8 which are about
/// the sender, and 5.2.1 disabled mailbox); otherwise the basic code 550, 551 or 553.
fn names_a_dead_mailbox(code: &str, reply: &str) -> bool {
    match enhanced_status(reply) {
        Some((5, 1, detail)) => !matches!(detail, 7 | 8),
        Some((5, 2, 1)) => true,
        Some(_) => false,
        None => matches!(code, "550" | "551" | "553"),
    }
}

/// The RFC 3463 status code that opens a reply's text, for example `5.1.1`.
fn enhanced_status(reply: &str) -> Option<(u8, u16, u16)> {
    let mut parts = reply.split_whitespace().next()?.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    match parts.next() {
        None => Some((class, subject, detail)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_keeps_lines() {
        let html = html_body("<b>Tom & Jerry's</b>", "line \"one\"\r\nline two");
        assert!(html.contains("<h1>&lt;b&gt;Tom &amp; Jerry&#39;s&lt;/b&gt;</h1>"));
        assert!(html.contains("<p>line &quot;one&quot;<br>\nline two</p>"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn unknown_mailboxes_are_told_from_other_refusals() {
        assert!(names_a_dead_mailbox("550", "5.1.1 <a@b.c>: User unknown"));
        assert!(names_a_dead_mailbox("550", "User unknown"));
        assert!(names_a_dead_mailbox("553", "mailbox name not allowed"));
        assert!(names_a_dead_mailbox("552", "5.2.1 mailbox disabled"));
        assert!(!names_a_dead_mailbox(
            "550",
            "5.7.1 message rejected as spam"
        ));
        assert!(!names_a_dead_mailbox(
            "553",
            "5.1.8 sender domain does not exist"
        ));
        assert!(!names_a_dead_mailbox("554", "transaction failed"));
        assert!(!names_a_dead_mailbox("535", "5.7.8 authentication failed"));
    }

    #[test]
    fn enhanced_status_codes_parse() {
        assert_eq!(enhanced_status("5.1.1 unknown"), Some((5, 1, 1)));
        assert_eq!(enhanced_status("4.3.0"), Some((4, 3, 0)));
        assert_eq!(enhanced_status("5.1 unknown"), None);
        assert_eq!(enhanced_status("5.1.1.1 x"), None);
        assert_eq!(enhanced_status(""), None);
        assert_eq!(enhanced_status("Ok: queued"), None);
    }

    #[test]
    fn queue_ids_are_taken_from_the_reply() {
        assert_eq!(queue_id("2.0.0 Ok: queued as 4F2A9C"), Some("4F2A9C"));
        assert_eq!(queue_id("2.0.0 OK"), None);
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let settings = EmailSettings {
            smtp_url: Some("smtps://user:s3cr3t@mail.example.com:465".into()),
            smtp_from: Some("a@example.com".into()),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("mail.example.com"), "{shown}");
    }
}

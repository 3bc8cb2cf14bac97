//! The email, SMS and webhook providers against their loopback stand-ins: what the provider
//! sends is checked on the stand-in's side (decoded, authenticated, signature verified by the
//! stand-in's own code), and every failure the stand-in scripts maps to the send error the
//! dispatcher acts on: retry (transient), stop (permanent), or drop the target (invalid).

use std::time::{Duration, SystemTime};

use serde_json::json;
use standins::sms::SmsStandIn;
use standins::smtp::{SmtpConfig, SmtpStandIn};
use standins::webhook::WebhookStandIn;
use triptrip_realtime::notify::channels::email::{message_id, EmailProvider, EmailSettings};
use triptrip_realtime::notify::channels::http::ProviderHttpSettings;
use triptrip_realtime::notify::channels::sms::{SmsProvider, SmsSettings};
use triptrip_realtime::notify::channels::webhook::{sign, verify, WebhookKey, WebhookSender};
use triptrip_realtime::notify::channels::{Message, Priority, SendError, Target};

const FROM: &str = "TripTrip <notify@triptrip.example>";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn message(delivery_id: i64) -> Message {
    Message {
        delivery_id,
        notification_id: 9000 + delivery_id,
        user_id: "user-17".into(),
        kind: "booking_confirmed".into(),
        priority: Priority::High,
        title: "Booking confirmed".into(),
        body: "Your room at Hotel Sakura is booked.\nCheck-in from 15:00.".into(),
        payload: json!({"booking_id": 7, "hotel": "Sakura"}),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
    }
}

fn http() -> reqwest::Client {
    ProviderHttpSettings {
        provider_ca_file: None,
    }
    .client()
    .unwrap()
}

/// A port on 127.0.0.1 where nothing listens.
async fn refused_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn email_provider(url: String) -> EmailProvider {
    EmailProvider::from_settings(&EmailSettings {
        smtp_url: Some(url),
        smtp_from: Some(FROM.into()),
    })
    .unwrap()
    .unwrap()
}

fn email_to(address: &str) -> Target {
    Target::Email {
        address: address.into(),
    }
}

fn assert_transient(result: Result<impl std::fmt::Debug, SendError>) {
    assert!(
        matches!(result, Err(SendError::Transient(_))),
        "expected a transient error, got {result:?}"
    );
}

fn assert_permanent(result: Result<impl std::fmt::Debug, SendError>) {
    assert!(
        matches!(result, Err(SendError::Permanent(_))),
        "expected a permanent error, got {result:?}"
    );
}

fn assert_invalid_target(result: Result<impl std::fmt::Debug, SendError>) {
    assert!(
        matches!(result, Err(SendError::InvalidTarget(_))),
        "expected an invalid target, got {result:?}"
    );
}

// ----- email -----

#[tokio::test]
async fn mail_arrives_with_subject_text_html_and_a_message_id_stable_across_resends() {
    let smtp = SmtpStandIn::start_with(SmtpConfig {
        credentials: Some(("mailer".into(), "p@ss word".into())),
        ..SmtpConfig::default()
    })
    .await
    .unwrap();
    let provider = email_provider(smtp.url());
    let msg = message(41);

    let first = provider
        .send(&email_to("guest@example.com"), &msg)
        .await
        .unwrap();
    let again = provider
        .send(&email_to("guest@example.com"), &msg)
        .await
        .unwrap();

    let mails = smtp.messages();
    assert_eq!(mails.len(), 2);
    let mail = &mails[0];
    assert_eq!(first.provider_id.as_deref(), Some(mail.queue_id.as_str()));
    assert_eq!(
        again.provider_id.as_deref(),
        Some(mails[1].queue_id.as_str())
    );
    assert_eq!(mail.auth_user.as_deref(), Some("mailer"));
    assert_eq!(mail.mail_from, "notify@triptrip.example");
    assert_eq!(mail.rcpt_to, ["guest@example.com"]);
    assert_eq!(mail.subject.as_deref(), Some("Booking confirmed"));
    assert_eq!(mail.header("From"), Some(FROM));
    assert_eq!(mail.header("To"), Some("guest@example.com"));
    assert_eq!(mail.header("X-Triptrip-Notification"), Some("9041"));
    assert_eq!(mail.header("X-Triptrip-Type"), Some("booking_confirmed"));
    let expected_id = message_id(41, "triptrip.example");
    assert_eq!(mail.header("Message-ID"), Some(expected_id.as_str()));
    assert_eq!(mails[1].header("Message-ID"), Some(expected_id.as_str()));

    let text = mail.text_part("text/plain").unwrap();
    assert_eq!(text.replace("\r\n", "\n"), msg.body);
    let html = mail.text_part("text/html").unwrap();
    assert!(html.contains("<h1>Booking confirmed</h1>"), "{html}");
    assert!(html.contains("Hotel Sakura is booked.<br>"), "{html}");
    assert!(smtp.connections() <= 2, "the pool reuses its connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mail_shares_the_pooled_connections() {
    let smtp = SmtpStandIn::start().await.unwrap();
    let provider = email_provider(smtp.url());
    let sends = (0..100).map(|n| {
        let provider = provider.clone();
        async move {
            provider
                .send(&email_to(&format!("guest{n}@example.com")), &message(n))
                .await
        }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
    assert_eq!(smtp.message_count(), 100);
    // A connection goes back to the pool a moment after its send returns, so a burst may open
    // a few more than the pool's 8; without the limit it opened one per mail.
    assert!(
        smtp.connections() <= 25,
        "connections are reused, not one per mail: {}",
        smtp.connections()
    );
}

#[tokio::test]
async fn non_ascii_and_markup_survive_encoding() {
    let smtp = SmtpStandIn::start().await.unwrap();
    let provider = email_provider(smtp.url());
    let mut msg = message(42);
    msg.title = "予約確認 <Sakura> & more".into();
    msg.body = "チェックイン 15:00 — <b>not bold</b>".into();

    provider
        .send(&email_to("guest@example.com"), &msg)
        .await
        .unwrap();

    let mail = &smtp.messages()[0];
    assert_eq!(mail.subject.as_deref(), Some(msg.title.as_str()));
    let text = mail.text_part("text/plain").unwrap();
    assert_eq!(text.trim_end(), msg.body);
    let html = mail.text_part("text/html").unwrap();
    assert!(
        html.contains("予約確認 &lt;Sakura&gt; &amp; more"),
        "{html}"
    );
    assert!(html.contains("&lt;b&gt;not bold&lt;/b&gt;"), "{html}");
}

#[tokio::test]
async fn an_unknown_mailbox_is_an_invalid_target() {
    let smtp = SmtpStandIn::start().await.unwrap();
    smtp.reject_recipient("gone@example.com");
    let provider = email_provider(smtp.url());

    let result = provider
        .send(&email_to("gone@example.com"), &message(43))
        .await;
    assert_invalid_target(result);
    assert_eq!(smtp.message_count(), 0);

    provider
        .send(&email_to("here@example.com"), &message(44))
        .await
        .unwrap();
    assert_eq!(smtp.message_count(), 1);
}

#[tokio::test]
async fn a_451_is_transient_and_the_retry_is_delivered_once_but_a_554_is_permanent() {
    let smtp = SmtpStandIn::start().await.unwrap();
    smtp.fail_next(1, 451);
    let provider = email_provider(smtp.url());
    let msg = message(45);

    assert_transient(provider.send(&email_to("guest@example.com"), &msg).await);
    assert_eq!(smtp.message_count(), 0);
    provider
        .send(&email_to("guest@example.com"), &msg)
        .await
        .unwrap();
    assert_eq!(smtp.message_count(), 1);

    smtp.fail_next(1, 554);
    assert_permanent(provider.send(&email_to("guest@example.com"), &msg).await);
    assert_eq!(smtp.message_count(), 1);
}

#[tokio::test]
async fn an_smtp_server_that_is_down_is_transient() {
    let port = refused_port().await;
    let provider = email_provider(format!("smtp://127.0.0.1:{port}"));
    assert_transient(
        provider
            .send(&email_to("guest@example.com"), &message(46))
            .await,
    );
}

#[tokio::test]
async fn wrong_smtp_credentials_are_permanent() {
    let smtp = SmtpStandIn::start_with(SmtpConfig {
        credentials: Some(("mailer".into(), "right".into())),
        ..SmtpConfig::default()
    })
    .await
    .unwrap();
    let url = format!("smtp://mailer:wrong@{}", smtp.addr());
    let provider = email_provider(url);

    assert_permanent(
        provider
            .send(&email_to("guest@example.com"), &message(47))
            .await,
    );
    assert_eq!(smtp.auth_failures(), 1);
    assert_eq!(smtp.message_count(), 0);
}

#[tokio::test]
async fn malformed_addresses_are_invalid_targets_and_reach_no_server() {
    let smtp = SmtpStandIn::start().await.unwrap();
    let provider = email_provider(smtp.url());
    for address in [
        "",
        "not an address",
        "guest@",
        "@example.com",
        "a@b@c",
        "guest@example.com\r\nRCPT TO:<victim@example.com>",
    ] {
        let result = provider.send(&email_to(address), &message(48)).await;
        assert_invalid_target(result);
    }
    assert_eq!(smtp.connections(), 0);
}

#[tokio::test]
async fn email_settings_and_targets_are_checked() {
    let unset = EmailSettings {
        smtp_url: None,
        smtp_from: Some(FROM.into()),
    };
    assert!(EmailProvider::from_settings(&unset).unwrap().is_none());
    let no_from = EmailSettings {
        smtp_url: Some("smtp://127.0.0.1:25".into()),
        smtp_from: None,
    };
    let err = EmailProvider::from_settings(&no_from).unwrap_err();
    assert_eq!(err.setting, "TRIPTRIP_SMTP_FROM");
    let bad_url = EmailSettings {
        smtp_url: Some("gopher://127.0.0.1".into()),
        smtp_from: Some(FROM.into()),
    };
    let err = EmailProvider::from_settings(&bad_url).unwrap_err();
    assert_eq!(err.setting, "TRIPTRIP_SMTP_URL");

    let provider = email_provider("smtp://127.0.0.1:25".into());
    let sms = Target::Sms {
        phone: "+14155550100".into(),
    };
    assert_permanent(provider.send(&sms, &message(49)).await);
}

// ----- SMS -----

fn sms_provider(standin: &SmsStandIn, token: &str, from: &str) -> SmsProvider {
    let settings = SmsSettings {
        sms_endpoint: standin.endpoint(),
        sms_account_sid: Some(standin.account_sid().into()),
        sms_auth_token: Some(token.into()),
        sms_from: Some(from.into()),
    };
    SmsProvider::from_settings(&settings, http())
        .unwrap()
        .unwrap()
}

fn sms_to(phone: &str) -> Target {
    Target::Sms {
        phone: phone.into(),
    }
}

#[tokio::test]
async fn a_text_is_sent_with_basic_auth_and_the_sid_comes_back() {
    let twilio = SmsStandIn::start().await.unwrap();
    let provider = sms_provider(&twilio, twilio.auth_token(), "+15005550006");

    let sent = provider
        .send(&sms_to("+14155550100"), &message(50))
        .await
        .unwrap();

    let texts = twilio.messages();
    assert_eq!(texts.len(), 1);
    let text = &texts[0];
    assert_eq!(sent.provider_id.as_deref(), Some(text.sid.as_str()));
    assert!(text.sid.starts_with("SM"));
    assert_eq!(text.account_sid, twilio.account_sid());
    assert_eq!(text.to, "+14155550100");
    assert_eq!(text.from.as_deref(), Some("+15005550006"));
    assert_eq!(text.messaging_service_sid, None);
    assert_eq!(
        text.body,
        "Booking confirmed: Your room at Hotel Sakura is booked.\nCheck-in from 15:00."
    );
    assert_eq!(twilio.auth_failures(), 0);
}

#[tokio::test]
async fn a_messaging_service_sender_and_a_long_body_cut_to_1600_chars() {
    let twilio = SmsStandIn::start().await.unwrap();
    let service = "MG0123456789abcdef0123456789abcdef";
    let provider = sms_provider(&twilio, twilio.auth_token(), service);
    let mut msg = message(51);
    msg.body = "予".repeat(3000);

    provider.send(&sms_to("+819012345678"), &msg).await.unwrap();

    let text = &twilio.messages()[0];
    assert_eq!(text.from, None);
    assert_eq!(text.messaging_service_sid.as_deref(), Some(service));
    assert_eq!(text.body.chars().count(), 1600);
    assert!(text.body.starts_with("Booking confirmed: 予"));
}

#[tokio::test]
async fn an_invalid_number_at_the_provider_is_an_invalid_target() {
    let twilio = SmsStandIn::start().await.unwrap();
    twilio.reject_number("+14155550199");
    let provider = sms_provider(&twilio, twilio.auth_token(), "+15005550006");

    assert_invalid_target(provider.send(&sms_to("+14155550199"), &message(52)).await);
    assert_eq!(twilio.message_count(), 0);
}

#[tokio::test]
async fn sms_503_and_429_are_transient_and_the_retry_goes_through() {
    let twilio = SmsStandIn::start().await.unwrap();
    let provider = sms_provider(&twilio, twilio.auth_token(), "+15005550006");
    let msg = message(53);

    twilio.fail_next(1, 503);
    assert_transient(provider.send(&sms_to("+14155550100"), &msg).await);
    twilio.fail_next(1, 429);
    assert_transient(provider.send(&sms_to("+14155550100"), &msg).await);
    provider.send(&sms_to("+14155550100"), &msg).await.unwrap();

    assert_eq!(twilio.requests(), 3);
    assert_eq!(twilio.message_count(), 1);
}

#[tokio::test]
async fn an_sms_api_that_is_down_is_transient() {
    let port = refused_port().await;
    let settings = SmsSettings {
        sms_endpoint: format!("http://127.0.0.1:{port}"),
        sms_account_sid: Some("AC0123456789abcdef0123456789abcdef".into()),
        sms_auth_token: Some("token".into()),
        sms_from: Some("+15005550006".into()),
    };
    let provider = SmsProvider::from_settings(&settings, http())
        .unwrap()
        .unwrap();
    assert_transient(provider.send(&sms_to("+14155550100"), &message(54)).await);
}

#[tokio::test]
async fn a_wrong_auth_token_is_permanent() {
    let twilio = SmsStandIn::start().await.unwrap();
    let provider = sms_provider(&twilio, "not-the-token", "+15005550006");

    assert_permanent(provider.send(&sms_to("+14155550100"), &message(55)).await);
    assert_eq!(twilio.auth_failures(), 1);
    assert_eq!(twilio.message_count(), 0);
}

#[tokio::test]
async fn malformed_numbers_are_invalid_targets_and_reach_no_api() {
    let twilio = SmsStandIn::start().await.unwrap();
    let provider = sms_provider(&twilio, twilio.auth_token(), "+15005550006");
    for phone in [
        "",
        "4155550100",
        "+1 415 555 0100",
        "+1-415-555-0100",
        "+",
        "+0155",
        "+1٣",
    ] {
        assert_invalid_target(provider.send(&sms_to(phone), &message(56)).await);
    }
    let email = email_to("guest@example.com");
    assert_permanent(provider.send(&email, &message(56)).await);
    assert_eq!(twilio.requests(), 0);
}

// ----- webhooks -----

fn webhook_to(url: &str, secret: &str) -> Target {
    Target::Webhook {
        url: url.into(),
        secret: secret.into(),
    }
}

#[tokio::test]
async fn a_notification_webhook_is_signed_and_carries_the_notification() {
    let receiver = WebhookStandIn::start(WEBHOOK_SECRET).await.unwrap();
    let sender = WebhookSender::new(http());
    let msg = message(60);

    let sent = sender
        .send(&webhook_to(&receiver.url(), WEBHOOK_SECRET), &msg)
        .await
        .unwrap();
    assert_eq!(sent.provider_id, None);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(request.verified, "{request:?}");
    assert_eq!(request.path, "/hooks");
    assert_eq!(request.id.as_deref(), Some("delivery_60"));
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.json(),
        Some(json!({
            "type": "notification",
            "notification_id": 9060,
            "delivery_id": 60,
            "user_id": "user-17",
            "notification_type": "booking_confirmed",
            "title": "Booking confirmed",
            "body": "Your room at Hotel Sakura is booked.\nCheck-in from 15:00.",
            "payload": {"booking_id": 7, "hotel": "Sakura"},
        }))
    );
}

#[tokio::test]
async fn a_webhook_503_is_transient_and_the_retry_keeps_its_id() {
    let receiver = WebhookStandIn::start(WEBHOOK_SECRET).await.unwrap();
    receiver.fail_next(1, 503);
    let sender = WebhookSender::new(http());
    let target = webhook_to(&receiver.url(), WEBHOOK_SECRET);

    assert_transient(sender.send(&target, &message(61)).await);
    sender.send(&target, &message(61)).await.unwrap();

    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 204]);
    assert!(requests.iter().all(|r| r.verified));
    assert_eq!(requests[0].id, requests[1].id);
    assert_eq!(requests[0].body, requests[1].body);
}

#[tokio::test]
async fn a_410_drops_the_target_and_a_400_stops() {
    let receiver = WebhookStandIn::start(WEBHOOK_SECRET).await.unwrap();
    let sender = WebhookSender::new(http());
    let target = webhook_to(&receiver.url(), WEBHOOK_SECRET);

    receiver.fail_next(1, 410);
    assert_invalid_target(sender.send(&target, &message(62)).await);
    receiver.fail_next(1, 400);
    assert_permanent(sender.send(&target, &message(62)).await);
    receiver.fail_next(1, 429);
    assert_transient(sender.send(&target, &message(62)).await);
}

#[tokio::test]
async fn an_outbox_event_is_posted_byte_for_byte_under_its_own_id() {
    let receiver = WebhookStandIn::start("a plain shared secret")
        .await
        .unwrap();
    let sender = WebhookSender::new(http());
    let body = br#"{"event":"booking.created","id":"evt_123","data":{"n":1}}"#;

    sender
        .send_event(&receiver.url(), "a plain shared secret", "evt_123", body)
        .await
        .unwrap();

    let request = &receiver.requests()[0];
    assert!(request.verified);
    assert_eq!(request.id.as_deref(), Some("evt_123"));
    assert_eq!(&request.body[..], body);
}

#[tokio::test]
async fn a_receiver_with_another_secret_does_not_verify() {
    let receiver = WebhookStandIn::start("the receiver's secret")
        .await
        .unwrap();
    let sender = WebhookSender::new(http());
    sender
        .send(&webhook_to(&receiver.url(), "a stale secret"), &message(63))
        .await
        .unwrap();
    assert!(!receiver.requests()[0].verified);
}

#[tokio::test]
async fn a_webhook_receiver_that_is_down_is_transient() {
    let port = refused_port().await;
    let sender = WebhookSender::new(http());
    let url = format!("http://127.0.0.1:{port}/hooks");
    assert_transient(
        sender
            .send(&webhook_to(&url, WEBHOOK_SECRET), &message(64))
            .await,
    );
}

#[tokio::test]
async fn malformed_webhook_targets_are_invalid_without_a_request() {
    let sender = WebhookSender::new(http());
    for (url, secret) in [
        ("not a url", WEBHOOK_SECRET),
        ("ftp://127.0.0.1/hooks", WEBHOOK_SECRET),
        ("http://127.0.0.1:1/hooks", ""),
        ("http://127.0.0.1:1/hooks", "whsec_***"),
    ] {
        assert_invalid_target(sender.send(&webhook_to(url, secret), &message(65)).await);
    }
    let result = sender
        .send_event("http://127.0.0.1:1/hooks", WEBHOOK_SECRET, "bad id", b"{}")
        .await;
    assert_permanent(result);
    assert_permanent(sender.send(&email_to("a@example.com"), &message(65)).await);
}

/// The Standard Webhooks specification's example (the signature is also what Python's `hmac`
/// gives for this key and content), through the public signing functions.
#[test]
fn signing_matches_the_standard_webhooks_example() {
    let key = WebhookKey::from_secret(WEBHOOK_SECRET).unwrap();
    let body = br#"{"test": 2432232314}"#;
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let signature = sign(&key, id, 1614265330, body);
    assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert_eq!(
        verify(&key, id, "1614265330", &signature, body, 1614265400),
        Ok(())
    );
    assert!(verify(&key, id, "1614265330", &signature, b"{}", 1614265400).is_err());
}

//! The push providers against their loopback stand-ins, over real TLS with the stand-ins'
//! self-signed certificate trusted through `TRIPTRIP_PROVIDER_CA_FILE`: FCM (OAuth JWT-bearer
//! grant, then HTTP v1), APNs (HTTP/2 only, ES256 provider tokens) and Web Push (RFC 8291
//! encryption, RFC 8292 VAPID). The stand-ins verify signatures and decrypt what they get, so
//! every assertion on content is an assertion on what the provider really sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, Parser};
use serde_json::{json, Value};
use standins::apns::ApnsStandIn;
use standins::fcm::FcmStandIn;
use standins::webpush::{Subscription, WebPushStandIn};
use tempfile::TempDir;
use triptrip_realtime::notify::channels::apns::{ApnsProvider, ApnsSettings};
use triptrip_realtime::notify::channels::fcm::{FcmProvider, FcmSettings};
use triptrip_realtime::notify::channels::http::ProviderHttpSettings;
use triptrip_realtime::notify::channels::webpush::{WebPushProvider, WebPushSettings};
use triptrip_realtime::notify::channels::{Message, Priority, SendError, Sent, Target};

const TTL: Duration = Duration::from_secs(3600);

/// A directory for key files, with the stand-ins' certificate already in it.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        let files = Files {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        files.write("standins-ca.pem", standins::tls::certificate_pem());
        files
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write key file");
        path
    }

    fn http(&self) -> ProviderHttpSettings {
        ProviderHttpSettings {
            provider_ca_file: Some(self.dir.path().join("standins-ca.pem")),
        }
    }
}

fn message(priority: Priority) -> Message {
    Message {
        delivery_id: 4242,
        notification_id: 77,
        user_id: "user-1".into(),
        kind: "booking_confirmed".into(),
        priority,
        title: "Booking confirmed".into(),
        body: "Lisbon, 3 nights from 12 May".into(),
        payload: json!({"booking_id": "b-19", "nights": 3, "refundable": true}),
        expires_at: SystemTime::now() + TTL,
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn is_transient(result: &Result<Sent, SendError>) -> bool {
    matches!(result, Err(SendError::Transient(_)))
}

fn is_permanent(result: &Result<Sent, SendError>) -> bool {
    matches!(result, Err(SendError::Permanent(_)))
}

fn is_invalid_target(result: &Result<Sent, SendError>) -> bool {
    matches!(result, Err(SendError::InvalidTarget(_)))
}

// ---------------------------------------------------------------------------------------------
// FCM

fn fcm(stand_in: &FcmStandIn, files: &Files, credentials: &str) -> FcmProvider {
    let settings = FcmSettings {
        fcm_credentials_file: Some(files.write("service-account.json", credentials)),
        fcm_project_id: None,
        fcm_endpoint: stand_in.endpoint(),
    };
    FcmProvider::from_settings(&settings, &files.http())
        .expect("valid FCM settings")
        .expect("FCM configured")
}

fn fcm_target(token: &str) -> Target {
    Target::Fcm {
        token: token.into(),
    }
}

#[tokio::test]
async fn fcm_sends_the_data_map_and_many_sends_share_one_access_token() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = Arc::new(fcm(&stand_in, &files, &stand_in.credentials_json()));

    let mut sends = tokio::task::JoinSet::new();
    for i in 0..20 {
        let provider = Arc::clone(&provider);
        sends.spawn(async move {
            provider
                .send(
                    &fcm_target(&format!("device-{i}")),
                    &message(Priority::High),
                )
                .await
        });
    }
    while let Some(result) = sends.join_next().await {
        let sent = result.expect("send task").expect("FCM accepts");
        let name = sent.provider_id.expect("message name");
        assert!(
            name.starts_with("projects/standin-project/messages/"),
            "{name}"
        );
    }
    let low = provider
        .send(&fcm_target("device-low"), &message(Priority::Low))
        .await;
    assert!(low.is_ok(), "{low:?}");

    assert_eq!(stand_in.token_requests(), 1, "one OAuth token for 21 sends");
    let messages = stand_in.messages();
    assert_eq!(messages.len(), 21);
    let first = messages
        .iter()
        .find(|m| m.token == "device-3")
        .expect("device-3 got its message");
    assert_eq!(first.title.as_deref(), Some("Booking confirmed"));
    assert_eq!(first.body.as_deref(), Some("Lisbon, 3 nights from 12 May"));
    let data: Vec<(&str, &str)> = first
        .data
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        data,
        [
            ("booking_id", "b-19"),
            ("delivery_id", "4242"),
            ("nights", "3"),
            ("notification_id", "77"),
            ("refundable", "true"),
            ("type", "booking_confirmed"),
        ]
    );
    assert_eq!(first.android_priority.as_deref(), Some("HIGH"));
    let ttl: u64 = first
        .android_ttl
        .as_deref()
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .expect("ttl as <n>s");
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    let low = messages
        .iter()
        .find(|m| m.token == "device-low")
        .expect("low");
    assert_eq!(low.android_priority.as_deref(), Some("NORMAL"));
}

#[tokio::test]
async fn fcm_unregistered_token_is_an_invalid_target() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = fcm(&stand_in, &files, &stand_in.credentials_json());
    stand_in.mark_unregistered("dead-token");

    let result = provider
        .send(&fcm_target("dead-token"), &message(Priority::Medium))
        .await;
    assert!(is_invalid_target(&result), "{result:?}");
    let malformed = provider
        .send(&fcm_target("has a space"), &message(Priority::Medium))
        .await;
    assert!(is_invalid_target(&malformed), "{malformed:?}");
    assert_eq!(stand_in.message_count(), 0);
    assert_eq!(
        stand_in.send_requests(),
        1,
        "the malformed token was never sent"
    );
}

#[tokio::test]
async fn fcm_overload_is_transient_and_the_next_send_goes_through() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = fcm(&stand_in, &files, &stand_in.credentials_json());

    stand_in.fail_next(1, 503);
    let unavailable = provider
        .send(&fcm_target("t1"), &message(Priority::High))
        .await;
    assert!(is_transient(&unavailable), "{unavailable:?}");
    stand_in.fail_next(1, 429);
    let quota = provider
        .send(&fcm_target("t1"), &message(Priority::High))
        .await;
    assert!(is_transient(&quota), "{quota:?}");
    let retried = provider
        .send(&fcm_target("t1"), &message(Priority::High))
        .await;
    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(stand_in.message_count(), 1);
}

#[tokio::test]
async fn fcm_refused_access_token_is_replaced_once() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = fcm(&stand_in, &files, &stand_in.credentials_json());

    let first = provider
        .send(&fcm_target("t1"), &message(Priority::Low))
        .await;
    assert!(first.is_ok(), "{first:?}");
    stand_in.revoke_access_tokens();
    let second = provider
        .send(&fcm_target("t2"), &message(Priority::Low))
        .await;
    assert!(second.is_ok(), "{second:?}");
    assert_eq!(stand_in.token_requests(), 2);
    assert_eq!(stand_in.message_count(), 2);
}

#[tokio::test]
async fn fcm_key_the_token_endpoint_rejects_is_permanent() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = fcm(&stand_in, &files, &stand_in.rogue_credentials_json());

    let result = provider
        .send(&fcm_target("t1"), &message(Priority::High))
        .await;
    match &result {
        Err(SendError::Permanent(reason)) => assert!(reason.contains("invalid_grant"), "{reason}"),
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert_eq!(stand_in.send_requests(), 0);
}

#[tokio::test]
async fn fcm_down_is_transient() {
    let stand_in = FcmStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = fcm(&stand_in, &files, &stand_in.credentials_json());
    drop(stand_in);

    let result = provider
        .send(&fcm_target("t1"), &message(Priority::High))
        .await;
    assert!(is_transient(&result), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// APNs

fn apns(stand_in: &ApnsStandIn, files: &Files, key_p8: &str) -> ApnsProvider {
    let settings = ApnsSettings {
        apns_key_file: Some(files.write("AuthKey.p8", key_p8)),
        apns_key_id: Some(stand_in.key_id().into()),
        apns_team_id: Some(stand_in.team_id().into()),
        apns_topic: Some(stand_in.topic().into()),
        apns_endpoint: stand_in.endpoint(),
    };
    ApnsProvider::from_settings(&settings, &files.http())
        .expect("valid APNs settings")
        .expect("APNs configured")
}

fn apns_target(token: &str) -> Target {
    Target::Apns {
        token: token.into(),
    }
}

fn device(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[tokio::test]
async fn apns_sends_over_http2_with_headers_from_the_message() {
    let stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = apns(&stand_in, &files, stand_in.key_p8());

    let urgent = message(Priority::Critical);
    let sent = provider
        .send(&apns_target(&device(1)), &urgent)
        .await
        .expect("APNs accepts");
    let quiet = provider
        .send(&apns_target(&device(2)), &message(Priority::Low))
        .await
        .expect("APNs accepts");

    let notifications = stand_in.notifications();
    assert_eq!(notifications.len(), 2);
    let first = &notifications[0];
    assert_eq!(sent.provider_id.as_deref(), Some(first.apns_id.as_str()));
    assert_eq!(first.device_token, device(1));
    assert_eq!(first.version, reqwest::Version::HTTP_2);
    assert_eq!(first.topic, "com.triptrip.app");
    assert_eq!(first.push_type.as_deref(), Some("alert"));
    assert_eq!(first.priority, Some(10));
    assert_eq!(first.expiration, Some(unix_secs(urgent.expires_at)));
    assert_eq!(
        first.payload,
        json!({
            "aps": {
                "alert": {"title": "Booking confirmed", "body": "Lisbon, 3 nights from 12 May"},
                "sound": "default",
            },
            "data": {
                "booking_id": "b-19", "nights": 3, "refundable": true,
                "notification_id": 77, "delivery_id": 4242, "type": "booking_confirmed",
            },
        })
    );
    assert_eq!(notifications[1].priority, Some(5));
    assert_eq!(
        quiet.provider_id.as_deref(),
        Some(notifications[1].apns_id.as_str())
    );
    assert_eq!(
        stand_in.provider_tokens_seen(),
        1,
        "one provider token for both"
    );
}

#[tokio::test]
async fn apns_unregistered_and_malformed_tokens_are_invalid_targets() {
    let stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = apns(&stand_in, &files, stand_in.key_p8());
    stand_in.mark_unregistered(&device(9));

    let gone = provider
        .send(&apns_target(&device(9)), &message(Priority::High))
        .await;
    assert!(is_invalid_target(&gone), "{gone:?}");
    for malformed in ["", "not-hex", "../../3/device/ab"] {
        let result = provider
            .send(&apns_target(malformed), &message(Priority::High))
            .await;
        assert!(is_invalid_target(&result), "{malformed:?}: {result:?}");
    }
    assert_eq!(stand_in.requests(), 1, "malformed tokens are never sent");
}

#[tokio::test]
async fn apns_overload_and_expired_provider_tokens_are_transient() {
    let stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = apns(&stand_in, &files, stand_in.key_p8());

    for status in [503, 429, 500] {
        stand_in.fail_next(1, status);
        let result = provider
            .send(&apns_target(&device(1)), &message(Priority::High))
            .await;
        assert!(is_transient(&result), "{status}: {result:?}");
    }
    stand_in.expire_provider_token(1);
    let expired = provider
        .send(&apns_target(&device(1)), &message(Priority::High))
        .await;
    assert!(is_transient(&expired), "{expired:?}");
    let after = provider
        .send(&apns_target(&device(1)), &message(Priority::High))
        .await;
    assert!(after.is_ok(), "{after:?}");
    assert_eq!(stand_in.notification_count(), 1);
}

#[tokio::test]
async fn apns_key_apple_does_not_know_is_permanent() {
    let stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = apns(&stand_in, &files, stand_in.rogue_key_p8());

    let result = provider
        .send(&apns_target(&device(1)), &message(Priority::High))
        .await;
    match &result {
        Err(SendError::Permanent(reason)) => {
            assert!(reason.contains("InvalidProviderToken"), "{reason}")
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert_eq!(stand_in.notification_count(), 0);
}

#[tokio::test]
async fn apns_down_is_transient() {
    let stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = apns(&stand_in, &files, stand_in.key_p8());
    drop(stand_in);

    let result = provider
        .send(&apns_target(&device(1)), &message(Priority::High))
        .await;
    assert!(is_transient(&result), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// Web Push

/// A Web Push provider; the stand-in listens on loopback, so non-public endpoints are allowed
/// unless `public_only`.
fn webpush_with(files: &Files, public_only: bool) -> WebPushProvider {
    let pem = standins::webpush::new_vapid_key_pem().expect("VAPID key");
    let settings = WebPushSettings {
        vapid_private_key_file: Some(files.write("vapid.pem", &pem)),
        vapid_subject: Some("mailto:push@triptrip.example".into()),
        webpush_allow_private: !public_only,
    };
    WebPushProvider::from_settings(&settings, &files.http())
        .expect("valid Web Push settings")
        .expect("Web Push configured")
}

fn webpush(files: &Files) -> WebPushProvider {
    webpush_with(files, false)
}

fn push_target(subscription: &Subscription) -> Target {
    Target::WebPush {
        endpoint: subscription.endpoint.clone(),
        p256dh: subscription.p256dh.clone(),
        auth: subscription.auth.clone(),
    }
}

#[tokio::test]
async fn webpush_browser_decrypts_exactly_what_was_sent() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let subscription = stand_in
        .subscribe_for(provider.application_server_key())
        .expect("base64url key");

    let sent = provider
        .send(&push_target(&subscription), &message(Priority::High))
        .await
        .expect("push service accepts");
    let low = provider
        .send(&push_target(&subscription), &message(Priority::Low))
        .await;
    assert!(low.is_ok(), "{low:?}");

    let messages = stand_in.messages();
    assert_eq!(messages.len(), 2);
    let first = &messages[0];
    let plaintext: Value = serde_json::from_slice(&first.plaintext).expect("JSON plaintext");
    assert_eq!(
        plaintext,
        json!({
            "title": "Booking confirmed",
            "body": "Lisbon, 3 nights from 12 May",
            "type": "booking_confirmed",
            "notification_id": 77,
            "data": {"booking_id": "b-19", "nights": 3, "refundable": true},
        })
    );
    assert_eq!(first.endpoint, subscription.endpoint);
    assert_eq!(first.urgency.as_deref(), Some("high"));
    assert!((3590..=3600).contains(&first.ttl), "ttl {}", first.ttl);
    assert_eq!(first.vapid_subject, "mailto:push@triptrip.example");
    assert_eq!(first.vapid_key, provider.application_server_key());
    assert_eq!(messages[1].urgency.as_deref(), Some("low"));
    let location = sent.provider_id.expect("Location");
    assert!(location.starts_with(&stand_in.origin()), "{location}");
}

#[tokio::test]
async fn webpush_endpoints_that_reach_this_network_are_refused_and_never_contacted() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush_with(&files, true);
    let subscription = stand_in.subscribe();
    // The stand-in by its address, and by a name that resolves to loopback only.
    let port = subscription
        .endpoint
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("endpoint with a port")
        .to_owned();
    let by_name = subscription.endpoint.replacen("127.0.0.1", "localhost", 1);
    assert!(by_name.contains(&format!("localhost:{port}")), "{by_name}");
    for (endpoint, why) in [
        (
            subscription.endpoint.clone(),
            "non-public address 127.0.0.1",
        ),
        (by_name, "localhost resolves to no public address"),
        (
            "https://169.254.169.254/latest/meta-data".to_owned(),
            "non-public address 169.254.169.254",
        ),
        ("https://[::1]:9/x".to_owned(), "non-public address ::1"),
    ] {
        let target = Target::WebPush {
            endpoint: endpoint.clone(),
            p256dh: subscription.p256dh.clone(),
            auth: subscription.auth.clone(),
        };
        let result = provider.send(&target, &message(Priority::High)).await;
        match &result {
            Err(SendError::InvalidTarget(reason)) => {
                assert!(reason.contains(why), "{endpoint}: {reason}")
            }
            other => panic!("{endpoint}: {other:?}"),
        }
    }
    assert!(
        stand_in.messages().is_empty(),
        "nothing reached the stand-in"
    );
}

#[tokio::test]
async fn webpush_expired_subscription_is_an_invalid_target() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let subscription = stand_in.subscribe();
    stand_in.mark_gone(&subscription);

    let result = provider
        .send(&push_target(&subscription), &message(Priority::Medium))
        .await;
    assert!(is_invalid_target(&result), "{result:?}");
}

#[tokio::test]
async fn webpush_malformed_subscriptions_are_invalid_targets_and_never_sent() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let good = stand_in.subscribe();

    let broken = [
        Subscription {
            p256dh: "not base64!".into(),
            ..good.clone()
        },
        Subscription {
            p256dh: "BAAA".into(),
            ..good.clone()
        },
        Subscription {
            p256dh: off_curve(&good.p256dh),
            ..good.clone()
        },
        Subscription {
            auth: "c2hvcnQ".into(),
            ..good.clone()
        },
        Subscription {
            endpoint: good.endpoint.replace("https://", "http://"),
            ..good.clone()
        },
        Subscription {
            endpoint: "not a url".into(),
            ..good.clone()
        },
    ];
    for subscription in &broken {
        let result = provider
            .send(&push_target(subscription), &message(Priority::Medium))
            .await;
        assert!(is_invalid_target(&result), "{subscription:?}: {result:?}");
    }
    assert_eq!(stand_in.requests(), 0);
}

#[tokio::test]
async fn webpush_overload_is_transient() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let subscription = stand_in.subscribe();

    for status in [503, 429] {
        stand_in.fail_next(1, status);
        let result = provider
            .send(&push_target(&subscription), &message(Priority::Medium))
            .await;
        assert!(is_transient(&result), "{status}: {result:?}");
    }
    let after = provider
        .send(&push_target(&subscription), &message(Priority::Medium))
        .await;
    assert!(after.is_ok(), "{after:?}");
}

#[tokio::test]
async fn webpush_vapid_key_the_subscription_was_not_made_for_is_permanent() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let other_server = webpush(&Files::new());
    let subscription = stand_in
        .subscribe_for(other_server.application_server_key())
        .expect("base64url key");

    let result = provider
        .send(&push_target(&subscription), &message(Priority::Medium))
        .await;
    assert!(is_permanent(&result), "{result:?}");
    assert_eq!(stand_in.message_count(), 0);
}

#[tokio::test]
async fn webpush_message_too_large_for_one_record_is_permanent() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let subscription = stand_in.subscribe();
    let mut big = message(Priority::Medium);
    big.body = "x".repeat(5000);

    let result = provider.send(&push_target(&subscription), &big).await;
    assert!(is_permanent(&result), "{result:?}");
    assert_eq!(stand_in.requests(), 0);
}

#[tokio::test]
async fn webpush_down_is_transient() {
    let stand_in = WebPushStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let provider = webpush(&files);
    let subscription = stand_in.subscribe();
    drop(stand_in);

    let result = provider
        .send(&push_target(&subscription), &message(Priority::Medium))
        .await;
    assert!(is_transient(&result), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// Configuration and misuse

#[tokio::test]
async fn each_provider_refuses_targets_of_another_channel() {
    let fcm_stand_in = FcmStandIn::start().await.expect("stand-in");
    let apns_stand_in = ApnsStandIn::start().await.expect("stand-in");
    let files = Files::new();
    let email = Target::Email {
        address: "a@example.com".into(),
    };
    let msg = message(Priority::Low);

    let fcm = fcm(&fcm_stand_in, &files, &fcm_stand_in.credentials_json());
    assert!(is_permanent(
        &fcm.send(&apns_target(&device(1)), &msg).await
    ));
    let apns = apns(&apns_stand_in, &files, apns_stand_in.key_p8());
    assert!(is_permanent(&apns.send(&email, &msg).await));
    let webpush = webpush(&files);
    assert!(is_permanent(&webpush.send(&fcm_target("t"), &msg).await));
    assert_eq!(fcm_stand_in.token_requests(), 0);
    assert_eq!(apns_stand_in.requests(), 0);
}

#[test]
fn unconfigured_providers_are_off_and_unusable_settings_are_reported() {
    let files = Files::new();
    let http = files.http();
    let no_fcm = FcmSettings {
        fcm_credentials_file: None,
        fcm_project_id: None,
        fcm_endpoint: "https://fcm.googleapis.com".into(),
    };
    assert!(FcmProvider::from_settings(&no_fcm, &http)
        .expect("ok")
        .is_none());
    let no_apns = ApnsSettings {
        apns_key_file: None,
        apns_key_id: None,
        apns_team_id: None,
        apns_topic: None,
        apns_endpoint: "https://api.push.apple.com".into(),
    };
    assert!(ApnsProvider::from_settings(&no_apns, &http)
        .expect("ok")
        .is_none());
    let no_webpush = WebPushSettings {
        vapid_private_key_file: None,
        vapid_subject: None,
        webpush_allow_private: false,
    };
    assert!(WebPushProvider::from_settings(&no_webpush, &http)
        .expect("ok")
        .is_none());

    let garbage = files.write("garbage", "not a key");
    let fcm_error = FcmProvider::from_settings(
        &FcmSettings {
            fcm_credentials_file: Some(garbage.clone()),
            ..no_fcm
        },
        &http,
    )
    .expect_err("not a service account");
    assert_eq!(fcm_error.setting, "TRIPTRIP_FCM_CREDENTIALS_FILE");
    let apns_error = ApnsProvider::from_settings(
        &ApnsSettings {
            apns_key_file: Some(garbage.clone()),
            ..no_apns.clone()
        },
        &http,
    )
    .expect_err("not a key");
    assert_eq!(apns_error.setting, "TRIPTRIP_APNS_KEY_FILE");
    let vapid_pem = standins::webpush::new_vapid_key_pem().expect("key");
    let no_subject = WebPushProvider::from_settings(
        &WebPushSettings {
            vapid_private_key_file: Some(files.write("vapid.pem", &vapid_pem)),
            vapid_subject: None,
            webpush_allow_private: false,
        },
        &http,
    )
    .expect_err("subject required");
    assert_eq!(no_subject.setting, "TRIPTRIP_VAPID_SUBJECT");
    let missing_ca = ProviderHttpSettings {
        provider_ca_file: Some(missing(files.dir.path())),
    };
    let ca_error = WebPushProvider::from_settings(
        &WebPushSettings {
            vapid_private_key_file: Some(files.write("vapid.pem", &vapid_pem)),
            vapid_subject: Some("https://triptrip.example".into()),
            webpush_allow_private: false,
        },
        &missing_ca,
    )
    .expect_err("CA file missing");
    assert_eq!(ca_error.setting, "TRIPTRIP_PROVIDER_CA_FILE");
}

/// The push settings as the server flattens them into its command line.
#[derive(Debug, Parser)]
struct PushCli {
    #[command(flatten)]
    http: ProviderHttpSettings,
    #[command(flatten)]
    fcm: FcmSettings,
    #[command(flatten)]
    apns: ApnsSettings,
    #[command(flatten)]
    webpush: WebPushSettings,
}

#[test]
fn settings_have_distinct_flags_and_the_public_endpoints_as_defaults() {
    PushCli::command().debug_assert();
    let cli = PushCli::try_parse_from([
        "triptrip",
        "--provider-ca-file=/etc/ca.pem",
        "--fcm-credentials-file=/keys/sa.json",
        "--apns-key-file=/keys/AuthKey.p8",
        "--apns-topic=com.triptrip.app",
        "--vapid-subject=mailto:ops@triptrip.example",
    ])
    .expect("flags parse");
    assert_eq!(
        cli.http.provider_ca_file,
        Some(PathBuf::from("/etc/ca.pem"))
    );
    assert_eq!(
        cli.fcm.fcm_credentials_file,
        Some(PathBuf::from("/keys/sa.json"))
    );
    assert_eq!(cli.fcm.fcm_endpoint, "https://fcm.googleapis.com");
    assert_eq!(cli.apns.apns_topic.as_deref(), Some("com.triptrip.app"));
    assert_eq!(cli.apns.apns_endpoint, "https://api.push.apple.com");
    assert_eq!(
        cli.webpush.vapid_subject.as_deref(),
        Some("mailto:ops@triptrip.example")
    );
}

/// The same point with one coordinate byte changed: 65 bytes, but not on the curve.
fn off_curve(p256dh: &str) -> String {
    p256dh
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (40, 'A') => 'B',
            (40, _) => 'A',
            _ => c,
        })
        .collect()
}

fn missing(dir: &Path) -> PathBuf {
    dir.join("does-not-exist.pem")
}

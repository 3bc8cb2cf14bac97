use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use super::*;

fn message(payload: Value, priority: Priority, ttl: Duration) -> (Message, SystemTime) {
    let now = SystemTime::now();
    let msg = Message {
        delivery_id: 7,
        notification_id: 3,
        user_id: "u1".into(),
        kind: "booking_confirmed".into(),
        priority,
        title: "Booked".into(),
        body: "Your trip is confirmed".into(),
        payload,
        expires_at: now + ttl,
    };
    (msg, now)
}

fn error_body(code: u16, status: &str, fcm_code: Option<&str>, message: &str) -> Vec<u8> {
    let details = match fcm_code {
        Some(c) => json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": c,
        }]),
        None => json!([]),
    };
    json!({"error": {"code": code, "message": message, "status": status, "details": details}})
        .to_string()
        .into_bytes()
}

#[test]
fn data_values_are_strings_and_ids_win_over_payload_fields() {
    let payload = json!({
        "trip": "t-9",
        "seats": 2,
        "nested": {"a": [1, 2]},
        "type": "spoofed",
        "from": "reserved",
        "google.x": "reserved",
    });
    let (msg, now) = message(payload, Priority::High, Duration::from_secs(600));
    let body = message_body("tok", &msg, now);
    let m = &body["message"];
    assert_eq!(m["token"], "tok");
    assert_eq!(
        m["notification"],
        json!({"title": "Booked", "body": "Your trip is confirmed"})
    );
    assert_eq!(
        m["data"],
        json!({
            "trip": "t-9",
            "seats": "2",
            "nested": "{\"a\":[1,2]}",
            "type": "booking_confirmed",
            "notification_id": "3",
            "delivery_id": "7",
        })
    );
    assert_eq!(m["android"], json!({"priority": "HIGH", "ttl": "600s"}));
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
}

#[test]
fn low_priority_is_normal_and_an_expired_message_has_ttl_zero() {
    let (mut msg, now) = message(json!({}), Priority::Low, Duration::ZERO);
    msg.expires_at = now - Duration::from_secs(5);
    let body = message_body("tok", &msg, now);
    assert_eq!(
        body["message"]["android"],
        json!({"priority": "NORMAL", "ttl": "0s"})
    );
    assert_eq!(body["message"]["apns"]["headers"]["apns-priority"], "5");
}

#[test]
fn success_carries_the_message_name() {
    let reply = classify(200, br#"{"name":"projects/p/messages/1"}"#);
    assert_eq!(
        reply,
        Reply::Done(Ok(Sent {
            provider_id: Some("projects/p/messages/1".into())
        }))
    );
}

#[test]
fn dead_tokens_are_invalid_targets() {
    let unregistered = error_body(404, "NOT_FOUND", Some("UNREGISTERED"), "not found");
    assert!(matches!(
        classify(404, &unregistered),
        Reply::Done(Err(SendError::InvalidTarget(_)))
    ));
    let bad_token = error_body(
        400,
        "INVALID_ARGUMENT",
        Some("INVALID_ARGUMENT"),
        "The registration token is not a valid FCM registration token",
    );
    assert!(matches!(
        classify(400, &bad_token),
        Reply::Done(Err(SendError::InvalidTarget(_)))
    ));
    let field = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad",
        "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": "message.token", "description": "x"}]}]}});
    assert!(matches!(
        classify(400, field.to_string().as_bytes()),
        Reply::Done(Err(SendError::InvalidTarget(_)))
    ));
}

#[test]
fn a_bad_payload_is_permanent_not_a_dead_token() {
    let bad = error_body(
        400,
        "INVALID_ARGUMENT",
        Some("INVALID_ARGUMENT"),
        "Invalid value at 'message.data[0].value'",
    );
    assert!(matches!(
        classify(400, &bad),
        Reply::Done(Err(SendError::Permanent(_)))
    ));
}

#[test]
fn overload_is_transient_and_auth_failures_ask_for_a_new_token() {
    for status in [429, 500, 503] {
        let body = error_body(status, "UNAVAILABLE", None, "later");
        assert!(matches!(
            classify(status, &body),
            Reply::Done(Err(SendError::Transient(_)))
        ));
    }
    assert!(matches!(
        classify(503, b"<html>"),
        Reply::Done(Err(SendError::Transient(_)))
    ));
    for status in [401, 403] {
        let body = error_body(status, "UNAUTHENTICATED", None, "no");
        assert!(matches!(classify(status, &body), Reply::Unauthorized(_)));
    }
    assert!(matches!(
        classify(413, b""),
        Reply::Done(Err(SendError::Permanent(_)))
    ));
}

#[test]
fn tokens_are_renewed_a_minute_early() {
    let now = Instant::now();
    let token =
        token_reply(200, br#"{"access_token":"ya29.x","expires_in":3599}"#, now).expect("token");
    assert_eq!(&*token.value, "ya29.x");
    assert_eq!(token.renew_at, now + Duration::from_secs(3539));
    let short = token_reply(200, br#"{"access_token":"y","expires_in":100}"#, now).expect("token");
    assert_eq!(short.renew_at, now + Duration::from_secs(50));
}

#[test]
fn a_refused_assertion_is_permanent_and_an_overloaded_endpoint_transient() {
    let refused = token_reply(
        400,
        br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        Instant::now(),
    );
    assert!(matches!(refused, Err(SendError::Permanent(ref r)) if r.contains("invalid_grant")));
    assert!(matches!(
        token_reply(503, b"", Instant::now()),
        Err(SendError::Transient(_))
    ));
    assert!(matches!(
        token_reply(200, b"not json", Instant::now()),
        Err(SendError::Transient(_))
    ));
}

#[test]
fn implausible_tokens_are_refused_before_sending() {
    assert!(check_token("abc:APA91b-x_y").is_ok());
    for bad in ["", "with space", "line\nbreak"] {
        assert!(matches!(check_token(bad), Err(SendError::InvalidTarget(_))));
    }
}

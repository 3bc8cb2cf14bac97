//! Notifications on the outside channels: from a SQL insert to stand-in providers on loopback
//! that speak the real protocols (FCM HTTP v1 with OAuth, APNs over HTTP/2 and TLS, Web Push
//! with VAPID and aes128gcm, SMTP, a Twilio-compatible API, signed webhooks). Retries, expiry
//! and do-not-disturb run on a settable clock; dispatchers share work; a killed server resends.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::server::{metrics, setup, TestServer};
use parking_lot::Mutex;
use serde_json::{json, Value};
use standins::apns::ApnsStandIn;
use standins::fcm::FcmStandIn;
use standins::sms::SmsStandIn;
use standins::smtp::SmtpStandIn;
use standins::webhook::WebhookStandIn;
use standins::webpush::{Subscription, WebPushStandIn};
use tokio_postgres::Client as Sql;
use triptrip_realtime::notify::channels::{ChannelSettings, Channels};
use triptrip_realtime::notify::dispatch::{Clock, DispatchStats, Dispatcher};

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Every stand-in, and the settings that point the server at them.
struct Providers {
    fcm: FcmStandIn,
    apns: ApnsStandIn,
    webpush: WebPushStandIn,
    smtp: SmtpStandIn,
    sms: SmsStandIn,
    webhook: WebhookStandIn,
    _dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Providers {
    async fn start() -> Providers {
        let fcm = FcmStandIn::start().await.unwrap();
        let apns = ApnsStandIn::start().await.unwrap();
        let webpush = WebPushStandIn::start().await.unwrap();
        let smtp = SmtpStandIn::start().await.unwrap();
        let sms = SmsStandIn::start().await.unwrap();
        let webhook = WebhookStandIn::start(WEBHOOK_SECRET).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| -> String {
            let path: PathBuf = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let envs = vec![
            (
                "TRIPTRIP_PROVIDER_CA_FILE",
                file("ca.pem", standins::tls::certificate_pem()),
            ),
            (
                "TRIPTRIP_FCM_CREDENTIALS_FILE",
                file("fcm.json", &fcm.credentials_json()),
            ),
            ("TRIPTRIP_FCM_ENDPOINT", fcm.endpoint()),
            ("TRIPTRIP_APNS_KEY_FILE", file("apns.p8", apns.key_p8())),
            ("TRIPTRIP_APNS_KEY_ID", apns.key_id().to_owned()),
            ("TRIPTRIP_APNS_TEAM_ID", apns.team_id().to_owned()),
            ("TRIPTRIP_APNS_TOPIC", apns.topic().to_owned()),
            ("TRIPTRIP_APNS_ENDPOINT", apns.endpoint()),
            (
                "TRIPTRIP_VAPID_PRIVATE_KEY_FILE",
                file(
                    "vapid.pem",
                    &standins::webpush::new_vapid_key_pem().unwrap(),
                ),
            ),
            (
                "TRIPTRIP_VAPID_SUBJECT",
                "mailto:ops@triptrip.example".to_owned(),
            ),
            // The Web Push stand-in listens on loopback.
            ("TRIPTRIP_WEBPUSH_ALLOW_PRIVATE", "true".to_owned()),
            ("TRIPTRIP_SMTP_URL", smtp.url()),
            (
                "TRIPTRIP_SMTP_FROM",
                "TripTrip <noreply@triptrip.example>".to_owned(),
            ),
            ("TRIPTRIP_SMS_ENDPOINT", sms.endpoint()),
            ("TRIPTRIP_SMS_ACCOUNT_SID", sms.account_sid().to_owned()),
            ("TRIPTRIP_SMS_AUTH_TOKEN", sms.auth_token().to_owned()),
            ("TRIPTRIP_SMS_FROM", "+15005550006".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Providers {
            fcm,
            apns,
            webpush,
            smtp,
            sms,
            webhook,
            _dir: dir,
            envs,
        }
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The providers as the server would build them from its environment.
    fn channels(&self) -> Channels {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            channels: ChannelSettings,
        }
        let mut args = vec!["test".to_owned()];
        for (k, v) in &self.envs {
            let flag = k
                .trim_start_matches("TRIPTRIP_")
                .to_lowercase()
                .replace('_', "-");
            args.push(format!("--{flag}={v}"));
        }
        Channels::from_settings(&Cli::parse_from(args).channels).unwrap()
    }
}

/// The APNs device token (64 hex digits) [`add_user`] gives `user`.
fn apns_token(user: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(user.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A user with every kind of contact point (and no do-not-disturb window); returns the Web
/// Push subscription.
async fn add_user(sql: &Sql, providers: &Providers, user: &str, tz: &str) -> Subscription {
    let browser = providers.webpush.subscribe();
    sql.execute(
        "INSERT INTO realtime.users (user_id, time_zone, email, phone, dnd_start, dnd_end) \
         VALUES ($1, $2, $3, $4, '00:00', '00:00')",
        &[&user, &tz, &format!("{user}@example.com"), &"+14155550100"],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO realtime.push_tokens (user_id, platform, token, p256dh, auth) VALUES \
             ($1, 'fcm', $1 || '-fcm', NULL, NULL), ($1, 'apns', $5, NULL, NULL), \
             ($1, 'webpush', $2, $3, $4)",
        &[
            &user,
            &browser.endpoint,
            &browser.p256dh,
            &browser.auth,
            &apns_token(user),
        ],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO realtime.notification_webhooks (user_id, url, secret) VALUES ($1, $2, $3)",
        &[&user, &providers.webhook.url(), &WEBHOOK_SECRET],
    )
    .await
    .unwrap();
    browser
}

async fn notify(sql: &Sql, user: &str, kind: &str, payload: Value) -> i64 {
    sql.query_one(
        "SELECT realtime.notify($1, $2, $3::text::jsonb)",
        &[&user, &kind, &payload.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// (channel, state) of a notification's deliveries, sorted.
async fn states(sql: &Sql, id: i64) -> Vec<(String, String)> {
    sql.query(
        "SELECT channel, state FROM realtime.notification_deliveries WHERE notification_id = $1 \
         ORDER BY channel, state",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Waits until no outside delivery of notification `id` is pending.
async fn settled(sql: &Sql, id: i64) -> Vec<(String, String)> {
    for _ in 0..300 {
        let pending: i64 = sql
            .query_one(
                "SELECT count(*) FROM realtime.notification_deliveries \
                 WHERE notification_id = $1 AND state = 'pending' AND channel <> 'in_app'",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return states(sql, id).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "deliveries of {id} still pending: {:?}",
        states(sql, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_delivers_from_a_sql_insert_to_its_provider() {
    let providers = Providers::start().await;
    let (_cluster, server, sql) = setup(&providers.envs()).await;
    let browser = add_user(&sql, &providers, "alice", "UTC").await;
    sql.batch_execute(
        "UPDATE realtime.notification_types SET channels = channels || '{webhook}' WHERE type = 'payment_failed'",
    )
    .await
    .unwrap();

    let id = notify(
        &sql,
        "alice",
        "payment_failed",
        json!({"booking_id": "B-77", "amount": 120}),
    )
    .await;
    let expected: Vec<(String, String)> = [
        ("email", "sent"),
        ("in_app", "pending"),
        ("push", "sent"),
        ("push", "sent"),
        ("push", "sent"),
        ("sms", "sent"),
        ("webhook", "sent"),
    ]
    .iter()
    .map(|(c, s)| ((*c).to_owned(), (*s).to_owned()))
    .collect();
    assert_eq!(settled(&sql, id).await, expected);
    let body = "Your payment for B-77 failed. Please update your payment method.";

    let fcm = providers.fcm.messages();
    assert_eq!(fcm.len(), 1);
    assert_eq!(fcm[0].token, "alice-fcm");
    assert_eq!(fcm[0].title.as_deref(), Some("Payment failed"));
    assert_eq!(fcm[0].body.as_deref(), Some(body));
    assert_eq!(fcm[0].data.get("notification_id"), Some(&id.to_string()));
    assert_eq!(fcm[0].android_priority.as_deref(), Some("HIGH"));

    let apns = providers.apns.notifications();
    assert_eq!(apns.len(), 1);
    assert_eq!(apns[0].device_token, apns_token("alice"));
    assert_eq!(apns[0].priority, Some(10));
    assert_eq!(apns[0].payload["aps"]["alert"]["title"], "Payment failed");

    let pushed = providers.webpush.messages();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].endpoint, browser.endpoint);
    let plaintext: Value = serde_json::from_slice(&pushed[0].plaintext).unwrap();
    assert_eq!(plaintext["title"], "Payment failed");
    assert_eq!(plaintext["body"], body);
    assert_eq!(pushed[0].vapid_subject, "mailto:ops@triptrip.example");
    // Browsers subscribe with the key the server signs with.
    let (status, answer) =
        common::server::http(server.port, "GET", "/api/push/vapid-public-key", None, "")
            .await
            .unwrap();
    assert_eq!(status, 200, "{answer}");
    let key: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(key["public_key"], pushed[0].vapid_key.as_str());

    let mail = providers.smtp.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].rcpt_to, ["alice@example.com"]);
    assert_eq!(mail[0].subject.as_deref(), Some("Payment failed"));
    assert!(mail[0].text_part("text/plain").unwrap().contains(body));

    let texts = providers.sms.messages();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].to, "+14155550100");
    assert!(texts[0].body.contains(body));

    let hooks = providers.webhook.requests();
    assert_eq!(hooks.len(), 1);
    assert!(
        hooks[0].verified,
        "the signature verifies with the shared secret"
    );
    assert_eq!(hooks[0].json().unwrap()["notification_id"], id);

    // Every delivery's history: pending then sent, with the provider's id kept.
    let rows = sql
        .query(
            "SELECT d.channel, array_agg(e.event ORDER BY e.at), d.provider_id IS NOT NULL \
             FROM realtime.notification_deliveries d \
             JOIN realtime.notification_delivery_events e ON e.delivery_id = d.id \
             WHERE d.notification_id = $1 AND d.channel <> 'in_app' GROUP BY d.id, d.channel",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        let events: Vec<String> = row.get(1);
        assert_eq!(events, ["pending", "sent"], "{}", row.get::<_, String>(0));
    }
    let m = metrics(server.port).await;
    assert_eq!(
        m.get("triptrip_notification_sent_total{channel=\"push\"}"),
        Some(&3.0)
    );
    assert_eq!(
        m.get("triptrip_notification_sent_total{channel=\"email\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("triptrip_notification_send_latency_seconds_count{channel=\"sms\"}"),
        Some(&1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_targets_are_removed_and_a_failed_push_falls_back_to_in_app() {
    let providers = Providers::start().await;
    let (_cluster, server, sql) = setup(&providers.envs()).await;
    let browser = add_user(&sql, &providers, "bob", "UTC").await;
    sql.batch_execute(
        "INSERT INTO realtime.notification_types (type, channels, priority, template, title_template, body_template) \
             VALUES ('flash_sale', '{push,email,sms}', 'high', 'flash_sale', 'Flash sale', '{{what}} is on sale');",
    )
    .await
    .unwrap();
    providers.fcm.mark_unregistered("bob-fcm");
    providers.apns.mark_unregistered(&apns_token("bob"));
    providers.webpush.mark_gone(&browser);
    providers.sms.reject_number("+14155550100");
    providers.smtp.reject_recipient("bob@example.com");

    let mut device = server.connect("bob", &[]).await;
    let ack = device.request("notification:subscribe", json!({})).await;
    device.ack(&ack).await;

    let id = notify(&sql, "bob", "flash_sale", json!({"what": "Kyoto"})).await;
    let states = settled(&sql, id).await;
    assert!(
        states.iter().all(|(c, s)| c == "in_app" || s == "failed"),
        "{states:?}"
    );
    // Not in-app by its type, it joins the feed once the push failed for good.
    let frame = device.expect("notification:new").await;
    assert_eq!(frame["data"]["id"], id);
    assert_eq!(frame["data"]["seq"], 1);
    assert_eq!(frame["data"]["body"], "Kyoto is on sale");
    let left: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.push_tokens WHERE user_id = 'bob'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "unregistered devices are deleted");
    let row = sql
        .query_one(
            "SELECT email_invalid_at IS NOT NULL, phone_invalid_at IS NOT NULL FROM realtime.users WHERE user_id = 'bob'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
    // The next notification goes to no dead target.
    let next = notify(&sql, "bob", "flash_sale", json!({"what": "Osaka"})).await;
    let channels: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.notification_deliveries WHERE notification_id = $1",
            &[&next],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(channels, 0);
    let m = metrics(server.port).await;
    assert_eq!(
        m.get("triptrip_notification_failures_total{channel=\"push\"}"),
        Some(&3.0)
    );
}

/// A clock the test sets.
struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn at(t: SystemTime) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(t)))
    }
    fn set(&self, t: SystemTime) {
        *self.0.lock() = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock()
    }
}

/// A migrated private cluster without a server: the test runs dispatchers itself.
async fn database() -> (pgcluster::Cluster, Sql, deadpool_postgres::Pool) {
    let cluster = tokio::task::spawn_blocking(pgcluster::Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let mut sql = common::sql_client(&url).await;
    triptrip_realtime::migrate::run(&mut sql).await.unwrap();
    let pool = triptrip_realtime::db::pool(&url, 4).unwrap();
    (cluster, sql, pool)
}

fn dispatcher(
    pool: &deadpool_postgres::Pool,
    channels: Arc<Channels>,
    clock: Arc<ManualClock>,
) -> Dispatcher {
    Dispatcher::new(
        pool.clone(),
        channels,
        clock,
        100,
        Arc::new(DispatchStats::default()),
    )
}

/// The next 14:00 UTC, 23:00 in Tokyo (inside the default 22:00-07:00 do-not-disturb window),
/// so that notifications created now are due by then; and 07:00 in Tokyo, when it ends.
fn tokyo_night() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let mut night = now.date().with_hms(14, 0, 0).unwrap().assume_utc();
    if night < now {
        night += time::Duration::days(1);
    }
    (night, night + time::Duration::hours(8))
}

async fn delivery(sql: &Sql, id: i64, channel: &str) -> (String, i32, SystemTime) {
    let row = sql
        .query_one(
            "SELECT state, attempts, next_attempt_at FROM realtime.notification_deliveries \
             WHERE notification_id = $1 AND channel = $2",
            &[&id, &channel],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// `deferred` events in the delivery history (pushes held for do-not-disturb).
async fn deferred_events(sql: &Sql) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM realtime.notification_delivery_events WHERE event = 'deferred'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_1_5_30_120_minutes_and_24_hours_then_fail() {
    let providers = Providers::start().await;
    let (_cluster, sql, pool) = database().await;
    sql.batch_execute(
        "INSERT INTO realtime.users (user_id, email, phone) VALUES ('carol', 'carol@example.com', '+14155550100');",
    )
    .await
    .unwrap();
    // Email (5 retries) and SMS (3 retries) both keep failing for a while.
    providers.smtp.fail_next(100, 451);
    providers.sms.fail_next(3, 503);
    let id = notify(&sql, "carol", "payment_failed", json!({"booking_id": "B"})).await;
    // Whole microseconds, as PostgreSQL keeps them.
    let micros = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let start = SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64);
    let clock = ManualClock::at(start);
    let d = dispatcher(&pool, Arc::new(providers.channels()), clock.clone());

    let minute = Duration::from_secs(60);
    let mut at = start;
    for (retry, delay) in [1, 5, 30, 120, 24 * 60].into_iter().enumerate() {
        d.round().await.unwrap();
        let (state, attempts, next) = delivery(&sql, id, "email").await;
        assert_eq!((state.as_str(), attempts), ("pending", retry as i32 + 1));
        assert_eq!(
            next.duration_since(at).unwrap(),
            minute * delay,
            "retry {retry}"
        );
        // Just before it is due, nothing happens.
        clock.set(next - Duration::from_secs(1));
        d.round().await.unwrap();
        assert_eq!(delivery(&sql, id, "email").await.1, retry as i32 + 1);
        at = next;
        clock.set(next);
    }
    d.round().await.unwrap();
    let (state, attempts, _) = delivery(&sql, id, "email").await;
    assert_eq!((state.as_str(), attempts), ("failed", 6));
    // SMS failed three times and then went through on its fourth (last) attempt.
    let (state, attempts, _) = delivery(&sql, id, "sms").await;
    assert_eq!((state.as_str(), attempts), ("sent", 4));
    assert_eq!(providers.sms.message_count(), 1);
    let events: Vec<String> = sql
        .query(
            "SELECT e.event FROM realtime.notification_delivery_events e \
             JOIN realtime.notification_deliveries d ON d.id = e.delivery_id \
             WHERE d.notification_id = $1 AND d.channel = 'email' ORDER BY e.at",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        events,
        ["pending", "retry", "retry", "retry", "retry", "retry", "failed"]
    );

    // A delivery that outlives its type's ttl expires instead of being sent.
    sql.batch_execute(
        "UPDATE realtime.notification_types SET ttl = '10 minutes' WHERE type = 'price_alert'",
    )
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('carol', 'fcm', 'carol-fcm')")
        .await
        .unwrap();
    providers.fcm.fail_next(1, 503);
    clock.set(SystemTime::now());
    let alert = notify(&sql, "carol", "price_alert", json!({})).await;
    d.round().await.unwrap();
    assert_eq!(delivery(&sql, alert, "push").await.0, "pending");
    clock.set(SystemTime::now() + Duration::from_secs(11 * 60));
    d.round().await.unwrap();
    assert_eq!(delivery(&sql, alert, "push").await.0, "expired");
    assert_eq!(delivery(&sql, alert, "in_app").await.0, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_holds_push_in_the_users_own_time_zone() {
    let providers = Providers::start().await;
    let (_cluster, sql, pool) = database().await;
    sql.batch_execute(
        "INSERT INTO realtime.users (user_id, time_zone, email) VALUES ('kenji', 'Asia/Tokyo', 'kenji@example.com');
         INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('kenji', 'fcm', 'kenji-fcm');",
    )
    .await
    .unwrap();
    let (night, morning) = tokyo_night();
    let clock = ManualClock::at(night.into());
    let d = dispatcher(&pool, Arc::new(providers.channels()), clock.clone());
    let booking = notify(
        &sql,
        "kenji",
        "booking_confirmed",
        json!({"booking_id": "K"}),
    )
    .await;
    let payment = notify(&sql, "kenji", "payment_failed", json!({"booking_id": "K"})).await;
    d.round().await.unwrap();
    // Email is not held; the critical push ignores do-not-disturb; the other push waits.
    assert_eq!(delivery(&sql, booking, "email").await.0, "sent");
    assert_eq!(delivery(&sql, payment, "push").await.0, "sent");
    let (state, attempts, next) = delivery(&sql, booking, "push").await;
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    assert_eq!(next, SystemTime::from(morning), "07:00 in Tokyo");
    assert_eq!(providers.fcm.message_count(), 1);
    clock.set(morning.into());
    d.round().await.unwrap();
    assert_eq!(delivery(&sql, booking, "push").await.0, "sent");
    assert_eq!(providers.fcm.message_count(), 2);
    assert_eq!(deferred_events(&sql).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_for_do_not_disturb_does_not_delay_the_deliveries_behind_it() {
    let providers = Providers::start().await;
    let (cluster, sql, pool) = database().await;
    // Kenji's 30 price alerts are the oldest due deliveries: the first three batches of 10 are
    // all pushes inside his do-not-disturb window.
    sql.batch_execute(
        "INSERT INTO realtime.users (user_id, time_zone) VALUES ('kenji', 'Asia/Tokyo');
         INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('kenji', 'fcm', 'kenji-fcm');
         UPDATE realtime.notification_types SET channels = '{webhook}' WHERE type = 'trip_update';
         SELECT realtime.notify('kenji', 'price_alert', jsonb_build_object('n', n))
         FROM generate_series(1, 30) n;",
    )
    .await
    .unwrap();
    add_user(&sql, &providers, "ana", "UTC").await;
    let booking = notify(&sql, "ana", "booking_confirmed", json!({"booking_id": "A"})).await;
    let update = notify(&sql, "ana", "trip_update", json!({"message": "gate 12"})).await;

    let (night, morning) = tokyo_night();
    // Polling once an hour: Ana's deliveries go out only if the rounds do not wait for it.
    let d = Dispatcher::new(
        pool.clone(),
        Arc::new(providers.channels()),
        ManualClock::at(night.into()),
        10,
        Arc::new(DispatchStats::default()),
    )
    .poll_every(Duration::from_secs(3600));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = cluster.url("postgres");
    let running = tokio::spawn(async move { d.run(&url, stopped).await });

    let sent = |channel: &str| (channel.to_owned(), "sent".to_owned());
    assert_eq!(
        settled(&sql, booking).await,
        [
            sent("email"),
            ("in_app".to_owned(), "pending".to_owned()),
            sent("push"),
            sent("push"),
            sent("push"),
        ]
    );
    assert_eq!(settled(&sql, update).await, [sent("webhook")]);
    stop.send(true).unwrap();
    running.await.unwrap();

    // Kenji's pushes wait for 07:00 in Tokyo, each deferred once and never sent.
    let held = sql
        .query(
            "SELECT state, attempts, next_attempt_at, count(*) FROM realtime.notification_deliveries \
             WHERE user_id = 'kenji' AND channel = 'push' GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let row = &held[0];
    assert_eq!(
        (
            row.get::<_, &str>(0),
            row.get::<_, i32>(1),
            row.get::<_, i64>(3)
        ),
        ("pending", 0, 30)
    );
    assert_eq!(row.get::<_, SystemTime>(2), SystemTime::from(morning));
    assert_eq!(deferred_events(&sql).await, 30);
    assert!(providers
        .fcm
        .messages()
        .iter()
        .all(|m| m.token != "kenji-fcm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_checks_do_not_disturb_on_the_rows_it_claims_only() {
    let (_cluster, sql, _pool) = database().await;
    sql.batch_execute(
        "INSERT INTO realtime.users (user_id, time_zone) VALUES ('kenji', 'Asia/Tokyo');
         INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('kenji', 'fcm', 'kenji-fcm');
         SELECT realtime.notify('kenji', 'price_alert', jsonb_build_object('n', n))
         FROM generate_series(1, 1000) n;
         SET track_functions = 'pl';",
    )
    .await
    .unwrap();
    let created: SystemTime = sql
        .query_one(
            "SELECT min(next_attempt_at) FROM realtime.notification_deliveries",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (night, morning) = tokyo_night();
    let night = SystemTime::from(night);
    // dnd_until calls in the current transaction (not yet flushed to the cumulative views).
    let dnd_calls = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions \
                     WHERE schemaname = 'realtime' AND funcname = 'dnd_until'";
    // (next_attempt_at, deliveries) of Kenji's pushes.
    let schedule = || async {
        sql.query(
            "SELECT next_attempt_at, count(*) FROM realtime.notification_deliveries \
             WHERE channel = 'push' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, SystemTime>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>()
    };

    // A claim in a transaction of its own: its rows, and the dnd_until calls it made.
    let claim = |query: &'static str| {
        let sql = &sql;
        async move {
            sql.batch_execute("BEGIN").await.unwrap();
            let before: i64 = sql.query_one(dnd_calls, &[]).await.unwrap().get(0);
            let rows = sql.query(query, &[&night]).await.unwrap();
            let after: i64 = sql.query_one(dnd_calls, &[]).await.unwrap().get(0);
            sql.batch_execute("COMMIT").await.unwrap();
            (rows, after - before)
        }
    };

    // The compatible function returns none of a batch it deferred.
    let (returned, calls) = claim("SELECT * FROM realtime.claim_deliveries($1, 100)").await;
    assert_eq!(returned.len(), 0);
    assert_eq!(calls, 100, "one dnd_until per claimed push");
    assert_eq!(
        schedule().await,
        [(created, 900), (SystemTime::from(morning), 100)],
        "the rows beyond the batch keep their time"
    );

    // realtime.claim_deliveries_v2 returns the deferred rows, marked.
    let (claimed, calls) =
        claim("SELECT deferred_until FROM realtime.claim_deliveries_v2($1, 100)").await;
    assert_eq!(claimed.len(), 100);
    assert!(claimed
        .iter()
        .all(|r| r.get::<_, Option<SystemTime>>(0) == Some(SystemTime::from(morning))));
    assert_eq!(calls, 100);
    assert_eq!(
        schedule().await,
        [(created, 800), (SystemTime::from(morning), 200)]
    );
    assert_eq!(deferred_events(&sql).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_the_load_without_sending_twice() {
    let providers = Providers::start().await;
    let (_cluster, sql, pool) = database().await;
    sql.batch_execute(
        "UPDATE realtime.notification_types SET channels = '{webhook}' WHERE type = 'trip_update';",
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO realtime.users (user_id) SELECT 'u' || n FROM generate_series(1, 30) n",
        &[],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO realtime.notification_webhooks (user_id, url, secret) SELECT 'u' || n, $1, $2 FROM generate_series(1, 30) n",
        &[&providers.webhook.url(), &WEBHOOK_SECRET],
    )
    .await
    .unwrap();
    sql.batch_execute(
        "SELECT realtime.notify('u' || (n % 30 + 1), 'trip_update', jsonb_build_object('n', n)) FROM generate_series(1, 600) n",
    )
    .await
    .unwrap();
    let channels = Arc::new(providers.channels());
    let clock = ManualClock::at(SystemTime::now() + Duration::from_secs(1));
    let pool2 = triptrip_realtime::db::pool(&_cluster.url("postgres"), 4).unwrap();
    let (a, b) = (
        Arc::new(Dispatcher::new(
            pool.clone(),
            channels.clone(),
            clock.clone(),
            50,
            Arc::new(DispatchStats::default()),
        )),
        Arc::new(Dispatcher::new(
            pool2,
            channels,
            clock,
            50,
            Arc::new(DispatchStats::default()),
        )),
    );
    let work = |d: Arc<Dispatcher>| {
        tokio::spawn(async move {
            let mut claimed = 0;
            loop {
                let n = d.round().await.unwrap();
                if n == 0 {
                    return claimed;
                }
                claimed += n;
            }
        })
    };
    let (ta, tb) = (work(a), work(b));
    let (na, nb) = (ta.await.unwrap(), tb.await.unwrap());
    assert_eq!(na + nb, 600);
    assert!(na > 0 && nb > 0, "both dispatchers worked: {na} and {nb}");
    let received = providers.webhook.requests();
    let mut ids: Vec<String> = received.iter().map(|r| r.id.clone().unwrap()).collect();
    assert_eq!(ids.len(), 600);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 600, "no delivery was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_send_sends_again_after_restart() {
    let providers = Providers::start().await;
    let (_cluster, mut server, sql): (_, TestServer, _) = setup(&providers.envs()).await;
    sql.batch_execute(
        "UPDATE realtime.notification_types SET channels = '{webhook}' WHERE type = 'trip_update';
         INSERT INTO realtime.users (user_id) VALUES ('erin');",
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO realtime.notification_webhooks (user_id, url, secret) VALUES ('erin', $1, $2)",
        &[&providers.webhook.url(), &WEBHOOK_SECRET],
    )
    .await
    .unwrap();
    // The receiver takes its time answering: the server dies while it waits.
    providers.webhook.hold(Duration::from_secs(3));
    let id = notify(&sql, "erin", "trip_update", json!({"message": "hold on"})).await;
    for _ in 0..200 {
        if providers.webhook.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(providers.webhook.request_count(), 1, "the send started");
    server.kill9();
    assert_eq!(
        delivery(&sql, id, "webhook").await.0,
        "pending",
        "nothing was recorded"
    );
    providers.webhook.hold(Duration::ZERO);
    server.kill_and_restart().await;
    assert_eq!(
        settled(&sql, id).await,
        [("webhook".to_owned(), "sent".to_owned())]
    );
    let received = providers.webhook.requests();
    assert!(received.len() >= 2, "sent again after the restart");
    assert!(
        received.iter().all(|r| r.id == received[0].id),
        "with the same webhook-id"
    );
}

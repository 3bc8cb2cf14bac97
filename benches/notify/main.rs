//! `./bench.sh notify`: notifications (issue 5) through the whole server: commit-to-client latency
//! of in-app notifications, and the rate at which dispatchers hand external deliveries to
//! stand-in providers with 1 and 2 workers.
//!
//! Processes besides PostgreSQL (a private cluster): this orchestrator, which runs the SQL writers
//! and the stand-in providers (the `standins` crate: FCM with its OAuth endpoint, SMTP, a
//! Twilio-compatible SMS API and a webhook receiver, all on 127.0.0.1); the server
//! (`triptrip-realtime serve`, the release binary, pointed at the stand-ins); and, for the in-app
//! part, the load generator (this binary re-executed with `--loadgen`).
//!
//! Method:
//! 1. In-app, on a server with the default single dispatcher: 1,000 users, each with one
//!    WebSocket connection in the load generator that sends `notification:subscribe`. 50 writer
//!    connections commit 1,000 notifications/s in total for 20 s, one per transaction,
//!    `SELECT realtime.notify(user, 'trip_update', jsonb_build_object('t', <Unix ns just before
//!    the statement is sent>, 'message', <100 bytes>))`; `trip_update` is in-app only, so the
//!    dispatchers have nothing to do. Writer `w` writes users `w`, `w+50`, … in turn, so writers
//!    never queue on one user's counter row. Each writer commits one notification before the
//!    clients subscribe, so that the timed ones do not pay for compiling the functions. For every `notification:new` the load generator
//!    records now − t (commit included, one clock) and checks that each connection's seqs
//!    follow each other. Lost = committed − received after the tail is awaited.
//! 2. Dispatch, once per worker count (`TRIPTRIP_DISPATCHERS` = 1, then 2), each on a fresh
//!    database of the same cluster with a fresh server, so neither inherits the other's rows:
//!    every user gets an email address, a phone number, an FCM token and a webhook endpoint, and
//!    no do-not-disturb window. For each of five bench types, `{webhook}`, `{push}`, `{email}`,
//!    `{sms}` (20,000 notifications each) and `{push,email,sms,webhook}` (5,000), a backlog of
//!    20,000 deliveries is inserted in one transaction, so that it becomes due all at once, at
//!    its commit. Rate = deliveries / (the last one's `updated_at` in state `sent`, which the
//!    dispatcher sets just before it records its round − the backlog's commit).
//!
//! The last line is machine-readable:
//! `RESULT notify p50_ms=… p99_ms=… lost=… dispatch_per_s=… dispatch_1w_per_s=… dispatch_2w_per_s=…`
//! where the dispatch rates are those of the mixed backlog and `dispatch_per_s` the better one.

#[path = "../common/mod.rs"]
mod common;
mod dispatch;
mod in_app;

use std::path::PathBuf;

use common::{knob, postmaster_pid, print_machine, BoxError, ServerProc};
use dispatch::DispatchRun;
use pgcluster::Cluster;
use standins::fcm::FcmStandIn;
use standins::sms::SmsStandIn;
use standins::smtp::SmtpStandIn;
use standins::webhook::WebhookStandIn;
use tokio_postgres::Client;

const USERS: usize = 1_000;
/// Each commit waits for a WAL flush (about 3 ms here, more under load): 50 writers at 20/s
/// leave room in each one's period.
const WRITERS: usize = 50;
const RATE: f64 = 1_000.0;
const WRITE_SECS: f64 = 20.0;
/// Deliveries in each backlog.
const BACKLOG: usize = 20_000;
const GOAL_P99_MS: f64 = 50.0;
/// A part of the run during which the rest of the machine (other processes, steal) took this
/// much of a core counts as disturbed.
const DISTURBED_PCT: f64 = 25.0;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The outside channels, as `realtime.notification_deliveries.channel` names them.
const CHANNELS: [&str; 4] = ["webhook", "push", "email", "sms"];

fn main() {
    common::bench_main("notify", run);
}

struct Plan {
    users: usize,
    writers: usize,
    rate: f64,
    write_secs: f64,
    backlog: usize,
}

async fn run() -> Result<(), BoxError> {
    // `NOTIFY_USERS`, `NOTIFY_RATE`, `NOTIFY_SECS` and `NOTIFY_BACKLOG` override the workload,
    // for exploring (`TRIPTRIP_DISPATCH_BATCH` reaches the server as is); the RESULT line is
    // only comparable with the defaults.
    let users = knob("NOTIFY_USERS", USERS as f64)? as usize;
    let plan = Plan {
        users,
        writers: WRITERS.min(users.max(1)),
        rate: knob("NOTIFY_RATE", RATE)?,
        write_secs: knob("NOTIFY_SECS", WRITE_SECS)?,
        backlog: (knob("NOTIFY_BACKLOG", BACKLOG as f64)? as usize).max(CHANNELS.len()),
    };
    if plan.users == 0 {
        return Err("NOTIFY_USERS must be at least 1".into());
    }
    println!(
        "notify bench: in-app: {} users with one WebSocket connection each; {} SQL writers x {:.0} notifications/s = {:.0}/s for {:.0} s; \
         dispatch: backlogs of {} deliveries, one per channel and one mixed, with 1 and 2 dispatchers",
        plan.users,
        plan.writers,
        plan.rate / plan.writers as f64,
        plan.rate,
        plan.write_secs,
        plan.backlog,
    );
    print_machine();

    let providers = Providers::start().await?;
    let cluster = tokio::task::spawn_blocking(Cluster::temporary).await??;
    let postmaster = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;

    let in_app = in_app::run(&plan, &cluster, postmaster, &providers).await?;

    let mut dispatch = Vec::new();
    for workers in [1, 2] {
        dispatch.push(dispatch::run(&plan, &cluster, postmaster, &providers, workers).await?);
    }

    println!();
    println!("summary (deliveries per second, backlog commit to the last one sent):");
    println!(
        "  {:<8} {}",
        "",
        dispatch
            .iter()
            .map(|d| format!(
                "{:>10}",
                format!("{} worker{}", d.workers, plural(d.workers))
            ))
            .collect::<String>()
    );
    for (i, phase) in dispatch::phases(&plan).iter().enumerate() {
        println!(
            "  {:<8} {}",
            phase.label,
            dispatch
                .iter()
                .map(|d| format!("{:>10.0}", d.phases[i].rate))
                .collect::<String>()
        );
    }
    let mixed = |d: &DispatchRun| d.phases.last().map_or(0.0, |p| p.rate);
    let (one, two) = (mixed(&dispatch[0]), mixed(&dispatch[1]));
    let best = one.max(two);
    let unsent: u64 = dispatch
        .iter()
        .flat_map(|d| d.phases.iter())
        .map(|p| p.expected - p.sent)
        .sum();
    let disturbed = dispatch
        .iter()
        .flat_map(|d| d.phases.iter())
        .filter(|p| p.others >= DISTURBED_PCT)
        .count();
    if in_app.others >= DISTURBED_PCT || disturbed > 0 {
        println!(
            "warning: the rest of the machine took {:.0}% of a core while the in-app writers ran, and {DISTURBED_PCT:.0}% or more in {disturbed} of the backlogs: rerun on a quieter machine",
            in_app.others
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "goals: in-app p99 <= {GOAL_P99_MS} ms {}; nothing lost in-app {}; every external delivery sent {}",
        verdict(in_app.p99 <= GOAL_P99_MS),
        verdict(in_app.lost == 0 && in_app.gaps == 0),
        verdict(unsent == 0),
    );
    println!(
        "RESULT notify p50_ms={:.2} p99_ms={:.2} lost={} dispatch_per_s={best:.0} dispatch_1w_per_s={one:.0} dispatch_2w_per_s={two:.0}",
        in_app.p50, in_app.p99, in_app.lost
    );
    drop(providers);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

// ---------------------------------------------------------------------------------------------
// Stand-in providers
// ---------------------------------------------------------------------------------------------

/// The stand-ins the bench's users have contact points for, and the settings that point the
/// server at them (as tests/notifications_delivery.rs starts them).
struct Providers {
    fcm: FcmStandIn,
    smtp: SmtpStandIn,
    sms: SmsStandIn,
    webhook: WebhookStandIn,
    _dir: tempfile::TempDir,
    envs: Vec<(String, String)>,
}

impl Providers {
    async fn start() -> Result<Providers, BoxError> {
        let fcm = FcmStandIn::start().await?;
        let smtp = SmtpStandIn::start().await?;
        let sms = SmsStandIn::start().await?;
        let webhook = WebhookStandIn::start(WEBHOOK_SECRET).await?;
        let dir = tempfile::tempdir()?;
        let file = |name: &str, text: &str| -> Result<String, BoxError> {
            let path: PathBuf = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path.display().to_string())
        };
        let envs = vec![
            (
                "TRIPTRIP_PROVIDER_CA_FILE",
                file("ca.pem", standins::tls::certificate_pem())?,
            ),
            (
                "TRIPTRIP_FCM_CREDENTIALS_FILE",
                file("fcm.json", &fcm.credentials_json())?,
            ),
            ("TRIPTRIP_FCM_ENDPOINT", fcm.endpoint()),
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
        Ok(Providers {
            fcm,
            smtp,
            sms,
            webhook,
            _dir: dir,
            envs,
        })
    }

    /// What each stand-in accepted so far, in [`CHANNELS`] order.
    fn counts(&self) -> [u64; 4] {
        [
            self.webhook.request_count() as u64,
            self.fcm.message_count() as u64,
            self.smtp.message_count() as u64,
            self.sms.message_count() as u64,
        ]
    }

    /// Forgets what the stand-ins recorded (between backlogs, so they do not hold it all).
    fn clear(&self) {
        self.webhook.take_requests();
        self.fcm.take_messages();
        self.smtp.take_messages();
        self.sms.take_messages();
    }
}

/// The server with the stand-ins' settings and `workers` dispatchers, on `url`, streaming from
/// its own slot.
async fn server(
    providers: &Providers,
    url: &str,
    slot: &str,
    workers: usize,
) -> Result<ServerProc, BoxError> {
    let mut envs = providers.envs.clone();
    envs.push(("TRIPTRIP_DISPATCHERS".into(), workers.to_string()));
    envs.push(("TRIPTRIP_SLOT".into(), slot.to_owned()));
    ServerProc::start_with(url, &envs).await
}

/// The bench's users (the load generator's names), with every contact point and no
/// do-not-disturb window, and the bench's notification types. Runs after the server migrated
/// the database. Only the tables filled here are analyzed: statistics that call the empty
/// notification tables empty would make a session cache sequential-scan plans for its
/// foreign-key checks, and a backlog's insert quadratic.
async fn prepare(client: &Client, plan: &Plan, webhook_url: &str) -> Result<(), BoxError> {
    let users = plan.users as i32;
    client
        .execute(
            "INSERT INTO realtime.users (user_id, email, phone, dnd_start, dnd_end) \
             SELECT 'bench-user-' || n, 'bench-user-' || n || '@example.com', \
                    '+1415' || lpad(n::text, 7, '0'), '00:00', '00:00' \
             FROM generate_series(0, $1::int - 1) n",
            &[&users],
        )
        .await?;
    client
        .execute(
            "INSERT INTO realtime.push_tokens (user_id, platform, token) \
             SELECT 'bench-user-' || n, 'fcm', 'bench-user-' || n || '-fcm' \
             FROM generate_series(0, $1::int - 1) n",
            &[&users],
        )
        .await?;
    client
        .execute(
            "INSERT INTO realtime.notification_webhooks (user_id, url, secret) \
             SELECT 'bench-user-' || n, $2, $3 FROM generate_series(0, $1::int - 1) n",
            &[&users, &webhook_url, &WEBHOOK_SECRET],
        )
        .await?;
    client
        .batch_execute(
            "INSERT INTO realtime.notification_types \
                 (type, channels, priority, template, title_template, body_template) VALUES \
             ('bench_webhook', '{webhook}', 'high', 'bench', 'Bench', '{{message}}'), \
             ('bench_push', '{push}', 'high', 'bench', 'Bench', '{{message}}'), \
             ('bench_email', '{email}', 'high', 'bench', 'Bench', '{{message}}'), \
             ('bench_sms', '{sms}', 'high', 'bench', 'Bench', '{{message}}'), \
             ('bench_all', '{push,email,sms,webhook}', 'high', 'bench', 'Bench', '{{message}}'); \
             ANALYZE realtime.users, realtime.push_tokens, realtime.notification_webhooks;",
        )
        .await?;
    Ok(())
}

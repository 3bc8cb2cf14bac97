use super::apns::{ApnsProvider, ApnsSettings};
use super::email::{EmailProvider, EmailSettings};
use super::fcm::{FcmProvider, FcmSettings};
use super::http::ProviderHttpSettings;
use super::sms::{SmsProvider, SmsSettings};
use super::webhook::WebhookSender;
use super::webpush::{WebPushProvider, WebPushSettings};
use super::{ConfigError, Message, SendError, Sent, Target};

/// Every provider's settings, flattened into the server's.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelSettings {
    #[command(flatten)]
    pub http: ProviderHttpSettings,
    #[command(flatten)]
    pub fcm: FcmSettings,
    #[command(flatten)]
    pub apns: ApnsSettings,
    #[command(flatten)]
    pub webpush: WebPushSettings,
    #[command(flatten)]
    pub email: EmailSettings,
    #[command(flatten)]
    pub sms: SmsSettings,
}

/// The providers this server is configured for. A delivery for a provider that is not
/// configured fails permanently, with the setting to set in its error.
pub struct Channels {
    fcm: Option<FcmProvider>,
    apns: Option<ApnsProvider>,
    webpush: Option<WebPushProvider>,
    email: Option<EmailProvider>,
    sms: Option<SmsProvider>,
    webhook: WebhookSender,
}

impl Channels {
    pub fn from_settings(settings: &ChannelSettings) -> Result<Channels, ConfigError> {
        let client = settings.http.client()?;
        Ok(Channels {
            fcm: FcmProvider::from_settings(&settings.fcm, &settings.http)?,
            apns: ApnsProvider::from_settings(&settings.apns, &settings.http)?,
            webpush: WebPushProvider::from_settings(&settings.webpush, &settings.http)?,
            email: EmailProvider::from_settings(&settings.email)?,
            sms: SmsProvider::from_settings(&settings.sms, client.clone())?,
            webhook: WebhookSender::new(client),
        })
    }

    /// The VAPID public key browsers subscribe with (`applicationServerKey`), when Web Push is
    /// configured.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.webpush
            .as_ref()
            .map(WebPushProvider::application_server_key)
    }

    /// Which providers are configured, for the startup log.
    pub fn configured(&self) -> Vec<&'static str> {
        [
            ("fcm", self.fcm.is_some()),
            ("apns", self.apns.is_some()),
            ("webpush", self.webpush.is_some()),
            ("email", self.email.is_some()),
            ("sms", self.sms.is_some()),
            ("webhook", true),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// Sends `msg` to `target` with the provider the target needs.
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let missing = |setting: &str| {
            Err(SendError::Permanent(format!(
                "this server has no provider for this channel (set {setting})"
            )))
        };
        match target {
            Target::Fcm { .. } => match &self.fcm {
                Some(p) => p.send(target, msg).await,
                None => missing("TRIPTRIP_FCM_CREDENTIALS_FILE"),
            },
            Target::Apns { .. } => match &self.apns {
                Some(p) => p.send(target, msg).await,
                None => missing("TRIPTRIP_APNS_KEY_FILE"),
            },
            Target::WebPush { .. } => match &self.webpush {
                Some(p) => p.send(target, msg).await,
                None => missing("TRIPTRIP_VAPID_PRIVATE_KEY_FILE"),
            },
            Target::Email { .. } => match &self.email {
                Some(p) => p.send(target, msg).await,
                None => missing("TRIPTRIP_SMTP_URL"),
            },
            Target::Sms { .. } => match &self.sms {
                Some(p) => p.send(target, msg).await,
                None => missing("TRIPTRIP_SMS_ACCOUNT_SID"),
            },
            Target::Webhook { .. } => self.webhook.send(target, msg).await,
        }
    }
}

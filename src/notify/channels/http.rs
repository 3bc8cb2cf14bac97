//! The HTTPS client the push providers share: rustls with the public (webpki) roots plus one
//! optional extra root (`TRIPTRIP_PROVIDER_CA_FILE`), no redirects, and [`PUSH_TIMEOUT`] per
//! request. A timeout or a connection failure is a transient send error; the provider decides
//! what every HTTP status means.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{ConfigError, SendError, Target, PUSH_TIMEOUT};

/// How long to wait for a TCP and TLS handshake with a provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ping an idle HTTP/2 connection this often, so a dead one is noticed before a send needs it.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(60);

/// The most of a provider's response body a provider reads; replies are small JSON documents.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings every push provider's HTTPS client shares.
#[derive(Debug, Clone, Args)]
pub struct ProviderHttpSettings {
    /// A PEM file of root certificates trusted for the push providers' HTTPS besides the public
    /// roots: for a private gateway, or a test stand-in with a self-signed certificate.
    #[arg(long, global = true, env = "TRIPTRIP_PROVIDER_CA_FILE")]
    pub provider_ca_file: Option<PathBuf>,
}

impl ProviderHttpSettings {
    /// A client that offers HTTP/2 and HTTP/1.1 by ALPN and takes what the server picks.
    pub fn client(&self) -> Result<reqwest::Client, ConfigError> {
        self.builder()?
            .build()
            .map_err(|e| ConfigError::new(CA_SETTING, describe(&e)))
    }

    /// [`Self::client`] that connects to public addresses only (see [`super::egress`]): for
    /// URLs that clients choose.
    pub fn public_client(&self) -> Result<reqwest::Client, ConfigError> {
        self.builder()?
            .dns_resolver(std::sync::Arc::new(super::egress::PublicOnly))
            .build()
            .map_err(|e| ConfigError::new(CA_SETTING, describe(&e)))
    }

    /// A client that speaks only HTTP/2 (ALPN `h2`), as APNs requires.
    pub fn http2_client(&self) -> Result<reqwest::Client, ConfigError> {
        self.builder()?
            .http2_prior_knowledge()
            .http2_keep_alive_interval(HTTP2_KEEPALIVE)
            .http2_keep_alive_while_idle(true)
            .build()
            .map_err(|e| ConfigError::new(CA_SETTING, describe(&e)))
    }

    fn builder(&self) -> Result<reqwest::ClientBuilder, ConfigError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(PUSH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("triptrip-realtime/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &self.provider_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(CA_SETTING, format!("cannot read {}: {e}", path.display()))
            })?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConfigError::new(CA_SETTING, format!("{}: {}", path.display(), describe(&e)))
            })?;
            if roots.is_empty() {
                return Err(ConfigError::new(
                    CA_SETTING,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        Ok(builder)
    }
}

const CA_SETTING: &str = "TRIPTRIP_PROVIDER_CA_FILE";

/// A request that got no HTTP response: a bad URL is permanent, anything on the wire
/// (refused, reset, TLS, timeout) is transient.
pub(crate) fn transport_error(provider: &str, err: &reqwest::Error) -> SendError {
    let reason = format!("{provider}: {}", describe(err));
    if err.is_builder() || err.is_redirect() {
        SendError::Permanent(reason)
    } else {
        SendError::Transient(reason)
    }
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response body; the rest is dropped unread.
pub(crate) async fn read_body(
    provider: &str,
    mut response: reqwest::Response,
) -> Result<Vec<u8>, SendError> {
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => return Err(transport_error(provider, &e)),
        }
    }
    Ok(body)
}

/// The error for a target another channel must deliver.
pub(crate) fn wrong_target(provider: &str, target: &Target) -> SendError {
    let kind = match target {
        Target::Fcm { .. } => "an FCM",
        Target::Apns { .. } => "an APNs",
        Target::WebPush { .. } => "a Web Push",
        Target::Email { .. } => "an email",
        Target::Sms { .. } => "an SMS",
        Target::Webhook { .. } => "a webhook",
    };
    SendError::Permanent(format!("{provider} cannot deliver to {kind} target"))
}

/// An error with its chain of causes (reqwest hides the interesting part in `source`).
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

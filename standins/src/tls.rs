//! One self-signed certificate for `127.0.0.1` and `localhost`, made once per process and served
//! by every TLS stand-in. A client trusts the stand-ins by trusting [`certificate_pem`] (for the
//! server: write it to a file named by `TRIPTRIP_PROVIDER_CA_FILE`).

use std::io;
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;

struct Identity {
    pem: String,
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

fn identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("rcgen makes a P-256 self-signed certificate");
        Identity {
            pem: certified.cert.pem(),
            der: certified.cert.der().clone(),
            key: certified.signing_key.serialize_der(),
        }
    })
}

/// The stand-ins' certificate in PEM: trust it as a root to talk to them.
pub fn certificate_pem() -> &'static str {
    &identity().pem
}

/// A rustls server configuration with the stand-ins' certificate, offering `alpn`.
pub(crate) fn server_config(alpn: &[&[u8]]) -> io::Result<Arc<ServerConfig>> {
    let identity = identity();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(vec![identity.der.clone()], key)
        })
        .map_err(io::Error::other)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

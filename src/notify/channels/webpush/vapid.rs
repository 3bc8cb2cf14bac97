//! RFC 8292 VAPID: the application server identifies itself to a push service with an ES256 JWT
//! for the service's origin, valid for 12 hours, and its public key. Pure: key and clock in,
//! header value out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use p256::SecretKey;
use serde::Serialize;

/// How long a VAPID token is valid; RFC 8292 allows at most 24 hours.
const LIFETIME_SECS: u64 = 12 * 3600;
/// How long a header may be reused: until an hour before its token expires.
pub(super) const REUSE: Duration = Duration::from_secs(LIFETIME_SECS - 3600);

/// The application server's VAPID key pair.
pub(super) struct VapidKey {
    signing: EncodingKey,
    /// The uncompressed public key, base64url: the `k` parameter and the browser's
    /// `applicationServerKey`.
    public: String,
}

impl VapidKey {
    /// Reads a P-256 private key in PEM, PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1
    /// (`BEGIN EC PRIVATE KEY`, as `openssl ecparam -genkey` writes it).
    pub(super) fn from_pem(pem: &str) -> Result<Self, String> {
        let secret = SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| SecretKey::from_sec1_pem(pem))
            .map_err(|_| "not a P-256 private key in PKCS#8 or SEC1 PEM".to_owned())?;
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| format!("cannot re-encode the key: {e}"))?;
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false));
        Ok(Self {
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            public,
        })
    }

    pub(super) fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header value for a push service at `audience` (an origin such as
    /// `https://fcm.googleapis.com`).
    pub(super) fn authorization(
        &self,
        audience: &str,
        subject: &str,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            aud: audience,
            exp: now + LIFETIME_SECS,
            sub: subject,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)?;
        Ok(format!("vapid t={token}, k={}", self.public))
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::LineEnding;
    use serde_json::Value;

    use super::*;

    fn sec1_pem() -> String {
        let secret = SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        secret
            .to_sec1_pem(LineEnding::LF)
            .expect("encodes")
            .to_string()
    }

    #[test]
    fn the_token_verifies_against_k_and_names_the_origin() {
        let key = VapidKey::from_pem(&sec1_pem()).expect("SEC1 key");
        let now = SystemTime::now();
        let header = key
            .authorization("https://push.example.net", "mailto:ops@example.com", now)
            .expect("signs");
        let rest = header.strip_prefix("vapid t=").expect("scheme");
        let (token, k) = rest.split_once(", k=").expect("k");
        assert_eq!(k, key.public_key());

        let point = URL_SAFE_NO_PAD.decode(k).expect("k is base64url");
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://push.example.net"]);
        let claims =
            jsonwebtoken::decode::<Value>(token, &DecodingKey::from_ec_der(&point), &validation)
                .expect("verifies")
                .claims;
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        let exp = claims["exp"].as_u64().expect("exp");
        let issued = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        assert!(exp > issued && exp <= issued + Duration::from_secs(24 * 3600).as_secs());
    }

    #[test]
    fn pkcs8_and_sec1_forms_of_one_key_agree() {
        let sec1 = VapidKey::from_pem(&sec1_pem()).expect("SEC1");
        let secret = SecretKey::from_sec1_pem(&sec1_pem()).expect("parses");
        let pkcs8 = secret.to_pkcs8_pem(LineEnding::LF).expect("encodes");
        assert_eq!(
            VapidKey::from_pem(&pkcs8).expect("PKCS#8").public_key(),
            sec1.public_key()
        );
        assert!(VapidKey::from_pem("not a key").is_err());
    }
}

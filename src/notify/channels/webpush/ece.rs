//! RFC 8291 message encryption for Web Push: the `aes128gcm` content coding of RFC 8188 with a
//! single record, keyed by ECDH between a one-time sender key and the subscription's P-256 key,
//! mixed with the subscription's auth secret. Pure: keys, salt and plaintext in, body out.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The record size written in the header; the one record must fit in it.
const RECORD_SIZE: u32 = 4096;
/// salt (16) + rs (4) + idlen (1) + the sender's uncompressed public key (65).
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
const TAG_LEN: usize = 16;
/// The delimiter that ends the padding of the last (here: only) record.
const LAST_RECORD: u8 = 0x02;
/// The largest plaintext one 4096-byte push message holds (RFC 8291 §4: 3993 octets).
pub(super) const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - HEADER_LEN - TAG_LEN - 1;

/// Why a subscription's keys or a message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum EceError {
    #[error("p256dh is not base64url of a P-256 public key ({0})")]
    BadP256dh(&'static str),
    #[error("auth is not base64url of a 16-byte secret")]
    BadAuth,
    #[error("the message is {0} bytes, more than the {MAX_PLAINTEXT} a push message holds")]
    TooLarge(usize),
}

/// The browser's side of a subscription.
#[derive(Debug, Clone)]
pub(super) struct Subscriber {
    public: PublicKey,
    auth: [u8; 16],
}

impl Subscriber {
    /// Parses the `p256dh` and `auth` keys of a `PushSubscription` (base64url; padding and the
    /// standard alphabet are tolerated).
    pub(super) fn from_base64url(p256dh: &str, auth: &str) -> Result<Self, EceError> {
        let point = decode(p256dh).ok_or(EceError::BadP256dh("not base64url"))?;
        let public = PublicKey::from_sec1_bytes(&point)
            .map_err(|_| EceError::BadP256dh("not a point on the curve"))?;
        let auth = decode(auth)
            .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok())
            .ok_or(EceError::BadAuth)?;
        Ok(Self { public, auth })
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    let normalized: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(normalized).ok()
}

/// Encrypts `plaintext` for `to` with the one-time key `sender` and a random 16-byte `salt`:
/// the request body of a push message with `Content-Encoding: aes128gcm`.
pub(super) fn encrypt(
    plaintext: &[u8],
    to: &Subscriber,
    sender: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::TooLarge(plaintext.len()));
    }
    let ua_public = to.public.to_encoded_point(false);
    let as_public = sender.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), to.public.as_affine());

    // RFC 8291 §3.4: IKM = HKDF(auth, ecdh_secret, "WebPush: info" 0 ua_public as_public, 32).
    let mut key_info = Vec::with_capacity(14 + 2 * 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&to.auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");

    // RFC 8188 §2.2–2.3: the content-encryption key and nonce from the salt.
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes is a valid HKDF-SHA256 output length");
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes is a valid HKDF-SHA256 output length");

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(LAST_RECORD);
    Aes128Gcm::new(&cek.into())
        .encrypt_in_place(&Nonce::from(nonce), b"", &mut record)
        .expect("one record of at most 4 KiB is within AES-GCM's limits");
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(text)
            .expect("test vector is base64url")
    }

    /// RFC 8291 §5 (and Appendix A): the example message, byte for byte.
    #[test]
    fn rfc8291_example_encrypts_byte_for_byte() {
        let subscriber = Subscriber::from_base64url(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .expect("RFC keys parse");
        let sender = SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
            .expect("RFC sender key");
        assert_eq!(
            sender.public_key().to_encoded_point(false).as_bytes(),
            b64("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8")
        );
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().expect("16 bytes");

        let body = encrypt(
            b"When I grow up, I want to be a watermelon",
            &subscriber,
            &sender,
            &salt,
        )
        .expect("encrypts");

        let expected = b64(concat!(
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
            "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
            "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
        ));
        assert_eq!(body, expected);
    }

    #[test]
    fn the_largest_message_fills_one_4096_byte_record() {
        let subscriber = Subscriber::from_base64url(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .expect("keys");
        let sender = SecretKey::from_slice(&[7u8; 32]).expect("key");
        let body = encrypt(&[b'x'; MAX_PLAINTEXT], &subscriber, &sender, &[0; 16]).expect("fits");
        assert_eq!(body.len(), 4096);
        assert_eq!(
            encrypt(&[b'x'; MAX_PLAINTEXT + 1], &subscriber, &sender, &[0; 16]),
            Err(EceError::TooLarge(MAX_PLAINTEXT + 1))
        );
    }

    #[test]
    fn malformed_subscription_keys_are_errors() {
        let good_auth = "BTBZMqHH6r4Tts7J_aSIgg";
        let good_key =
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        for bad_key in ["", "!!!", "AAAA", &good_key.replace('B', "C")] {
            assert!(matches!(
                Subscriber::from_base64url(bad_key, good_auth),
                Err(EceError::BadP256dh(_))
            ));
        }
        for bad_auth in ["", "short", "BTBZMqHH6r4Tts7J_aSIggAA"] {
            assert!(matches!(
                Subscriber::from_base64url(good_key, bad_auth),
                Err(EceError::BadAuth)
            ));
        }
        let padded = format!("{good_key}=");
        assert!(Subscriber::from_base64url(&padded, "BTBZMqHH6r4Tts7J/aSIgg==").is_ok());
    }
}

//! Client authentication: JWT verification for the gateway (seed §3.1).
//!
//! A client presents a JWT (handshake query/header, first message, or `auth:refresh` on a live
//! connection). [`Verifier::verify`] checks it and returns the [`Claims`] the gateway needs: the
//! user (`sub`), the room patterns it may join (`rooms`, `*` globs) and the expiry.
//!
//! Keys come from configuration only, never from the token:
//! - `--jwt-secret`: HS256 with that secret;
//! - `--jwt-public-key`: RS256 (RSA key) or ES256 (EC P-256 key), detected from the key;
//! - neither: HS256 with a random secret generated once into `<data-dir>/jwt.secret` (mode 0600),
//!   so `triptrip-realtime token` and the server agree without any setup.
//!
//! A token whose header names any other algorithm (`none`, `HS512`, `HS256` when only a public key
//! is configured, ...) is rejected before any signature check.

mod base64url;
mod error;
mod rooms;
mod secret;
mod verifier;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use error::AuthError;
pub use rooms::RoomPatterns;
pub use secret::{JwtSecret, SECRET_FILE_NAME};
pub use verifier::{
    Claims, Verifier, LEEWAY_SECS, MAX_ROOM_PATTERNS, MAX_ROOM_PATTERN_CHARS, MAX_SUBJECT_CHARS,
    MAX_TOKEN_BYTES,
};

use crate::config::Settings;

/// Authentication settings, taken from [`Settings`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HS256 secret (`--jwt-secret`).
    pub secret: Option<JwtSecret>,
    /// PEM public key for RS256/ES256 (`--jwt-public-key`).
    pub public_key: Option<PathBuf>,
    /// PEM (PKCS#8) private key matching `public_key`, for issuing tokens (`--jwt-private-key`).
    pub private_key: Option<PathBuf>,
    /// Required `iss` (`--jwt-issuer`).
    pub issuer: Option<String>,
    /// Required `aud` (`--jwt-audience`).
    pub audience: Option<String>,
    /// Where the generated HS256 secret lives when neither `secret` nor `public_key` is set.
    pub data_dir: PathBuf,
}

impl AuthConfig {
    /// The authentication part of the server settings.
    pub fn from_settings(settings: &Settings) -> AuthConfig {
        AuthConfig {
            secret: settings.jwt_secret.clone(),
            public_key: settings.jwt_public_key.clone(),
            private_key: settings.jwt_private_key.clone(),
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            data_dir: settings.data_dir.clone(),
        }
    }
}

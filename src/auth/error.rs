//! Why a token was refused.

/// Why [`Verifier::verify`](super::Verifier::verify) refused a token.
///
/// The messages are safe to send to the client: they never echo the token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("no token was presented")]
    Missing,
    /// Not a well-formed JWT, or a claim has the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the configured key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    /// The header's `alg` is not one this server is configured for (e.g. `none`).
    #[error("the token's algorithm {0:?} is not accepted by this server")]
    UnsupportedAlgorithm(String),
    /// `sub` is missing or empty.
    #[error("the token has no subject (sub)")]
    MissingSubject,
}

impl AuthError {
    /// The protocol error code for this error: `token_expired` for an expired token (the client
    /// should fetch a new one and retry), `unauthorized` for everything else.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            _ => "unauthorized",
        }
    }
}

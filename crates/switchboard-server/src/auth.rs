//! Who a token belongs to: dev mode (the token is the user id) or a verified JWT.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use switchboard::{LobbyCode, LobbyFilter, UserId};

use crate::config::ServerConfig;

/// Verifies tokens.
pub enum Auth {
    /// The token is the user id. Loopback only, always with a warning.
    Dev,
    /// A JWT signed with HS256 or RS256; `sub` is the user id, `exp` is required.
    Jwt(Box<JwtVerifier>),
    /// No key: the connect proxy (`auth.connect_url`) decides who connects, and a token is
    /// only passed on to it.
    Backend,
}

/// A JWT key with the validation rules that go with it. Its `Debug` never shows the key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            Self::Dev => f.write_str("Auth::Dev"),
            Self::Backend => f.write_str("Auth::Backend"),
            Self::Jwt(jwt) => write!(f, "Auth::{jwt:?}"),
        }
    }
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtVerifier({:?})", self.validation.algorithms)
    }
}

/// The identity a valid token carries.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user.
    pub user_id: UserId,
    /// When the token expires (JWT `exp`).
    pub expires_at: Option<SystemTime>,
    /// The lobbies the token may join, if it restricts them (claim `lobbies`: codes, and
    /// prefixes ending in `*`).
    pub lobbies: Option<LobbyFilter>,
}

impl Identity {
    /// Whether the token allows this lobby (a connect to no lobby yet is allowed: its joins
    /// are checked one by one).
    pub fn may_join(&self, lobby: Option<&LobbyCode>) -> bool {
        match (lobby, &self.lobbies) {
            (Some(lobby), Some(allowed)) => allowed.allows(lobby.as_str()),
            _ => true,
        }
    }
}

/// The latest `exp` accepted: the year 9999. Later values are refused, so that no deadline
/// arithmetic on the expiry (timers, `Instant` conversions) can overflow.
pub const MAX_EXP: u64 = 253_402_300_799;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    lobbies: Option<Vec<String>>,
}

/// Why a token was refused (logged without the token itself).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the query or the `Authorization` header.
    #[error("missing token")]
    Missing,
    /// Bad signature, expired, malformed, or a bad `sub`.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A key that could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
#[error("auth.jwt_public_key_file: {0}")]
pub struct KeyError(String);

impl Auth {
    /// The verifier the configuration asks for.
    pub fn from_config(config: &ServerConfig) -> Result<Self, KeyError> {
        if config.dev_mode {
            return Ok(Self::Dev);
        }
        let (key, algorithm) = match (&config.jwt_secret, &config.jwt_public_key_file) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.0.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| KeyError(format!("not an RSA public key in PEM: {e}")))?;
                (key, Algorithm::RS256)
            }
            (None, None) if config.proxy.connect_url.is_some() => return Ok(Self::Backend),
            (None, None) => return Err(KeyError("no key configured".into())),
        };
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience a token's `aud` is not checked (jsonwebtoken
            // would otherwise refuse every token that has one).
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Ok(Self::Jwt(Box::new(JwtVerifier { key, validation })))
    }

    /// The identity behind a token.
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        match self {
            Self::Backend => Err(AuthError::Invalid(
                "tokens are verified by the backend (auth.connect_url), not here".into(),
            )),
            Self::Dev => Ok(Identity {
                user_id: UserId::parse(token).map_err(|e| AuthError::Invalid(e.to_string()))?,
                expires_at: None,
                lobbies: None,
            }),
            Self::Jwt(jwt) => {
                let claims = decode::<Claims>(token, &jwt.key, &jwt.validation)
                    .map_err(|e| AuthError::Invalid(e.to_string()))?
                    .claims;
                // An `exp` past what the clock can represent is refused, never a panic.
                let expires_at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(claims.exp))
                    .filter(|_| claims.exp <= MAX_EXP)
                    .ok_or_else(|| AuthError::Invalid("exp is out of range".into()))?;
                Ok(Identity {
                    user_id: UserId::parse(&claims.sub)
                        .map_err(|e| AuthError::Invalid(e.to_string()))?,
                    expires_at: Some(expires_at),
                    lobbies: claims.lobbies.map(LobbyFilter::new),
                })
            }
        }
    }
}

//! The standalone server's side of the manager: a `refresh` on a live protocol-v2 connection
//! is verified exactly as a token at connect is (dev mode or JWT, the same claims).

use switchboard::{Client, ClientError, Credential, ErrorCode, Handler, Manager};

use crate::ServerConfig;
use crate::auth::Auth;

/// Verifies refreshed tokens; everything else is the library's default (application messages
/// are refused with `unknown_type`).
struct ServerHandler {
    auth: Auth,
}

impl Handler for ServerHandler {
    fn refresh(&self, _client: &Client, token: &str) -> Result<Credential, ClientError> {
        let identity = self
            .auth
            .verify(Some(token))
            .map_err(|e| ClientError::new(ErrorCode::NotAllowed, format!("token refused: {e}")))?;
        let mut credential = Credential::new(identity.user_id);
        if let Some(at) = identity.expires_at {
            credential = credential.expires_at(at);
        }
        if let Some(allowed) = identity.lobbies {
            credential = credential.allow_lobbies(allowed);
        }
        Ok(credential)
    }
}

/// The server's manager: its limits and settings from `config`, and the token refresh.
pub fn new_manager(config: &ServerConfig) -> anyhow::Result<Manager> {
    let auth = Auth::from_config(config)?;
    Ok(Manager::with_handler(
        config.manager.clone(),
        ServerHandler { auth },
    )?)
}

//! The standalone server's side of the manager: a `refresh` on a live protocol-v2 connection
//! is verified exactly as a token at connect is (dev mode or JWT, the same claims), and, with
//! `[webhook]`, what clients do is posted to the backend (`webhook.rs`), and with
//! `webhook.rpc_url` their `rpc` calls are answered by it (`rpc.rs`).

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard::{
    AppMessage, Client, ClientError, ConnectionInfo, Credential, DisconnectReason, ErrorCode,
    Handler, JoinDecision, LobbyCode, LostConnection, Manager, NoHandler, RpcDecision, UserId,
};

use crate::ServerConfig;
use crate::auth::Auth;
use crate::backend::Backend;
use crate::proxy::{Proxy, ProxyError};
use crate::rpc::Rpc;
use crate::webhook::Webhooks;

/// Verifies refreshed tokens and feeds the webhooks; application messages are refused with
/// `unknown_type` unless the webhooks take them.
struct ServerHandler {
    auth: Auth,
    webhooks: Option<Arc<Webhooks>>,
    /// The join proxy, when the backend decides v2 joins (`auth.join_url`).
    join_proxy: Option<Arc<Proxy>>,
    /// Where `rpc` calls go (`webhook.rpc_url`); without it the library's default refuses them.
    rpc: Option<Arc<Rpc>>,
}

/// The fields every event about a connection has.
fn about(conn: &ConnectionInfo) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("connection_id".into(), json!(conn.id));
    fields.insert("user_id".into(), json!(conn.user_id));
    fields.insert("ip".into(), json!(conn.ip));
    fields
}

impl ServerHandler {
    fn emit(&self, kind: &str, fields: impl FnOnce() -> Map<String, Value>) {
        if let Some(webhooks) = self.webhooks.as_ref().filter(|w| w.wants(kind)) {
            webhooks.emit(kind, fields());
        }
    }
}

impl Handler for ServerHandler {
    fn on_connect(&self, client: &Client) {
        self.emit("connect", || {
            let mut fields = about(client.info());
            fields.insert("protocol".into(), json!(client.info().protocol));
            fields.insert("lobbies".into(), json!(client.lobbies()));
            fields
        });
    }

    fn on_message(&self, client: &Client, message: AppMessage<'_>) -> Result<(), ClientError> {
        match &self.webhooks {
            Some(webhooks) if webhooks.wants_message(message.kind) => {
                let mut fields = about(client.info());
                fields.insert("message_type".into(), json!(message.kind));
                let raw = serde_json::value::RawValue::from_string(message.text.to_owned())
                    .map_err(|_| ClientError::new(ErrorCode::InvalidJson, "not JSON"))?;
                fields.insert(
                    "message".into(),
                    serde_json::to_value(raw).unwrap_or_default(),
                );
                webhooks.emit("message", fields);
                Ok(())
            }
            _ => NoHandler.on_message(client, message),
        }
    }

    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        self.emit("disconnect", || {
            let mut fields = about(conn);
            fields.insert("reason".into(), json!(reason.as_str()));
            fields.insert("code".into(), json!(reason.close_code()));
            fields
        });
    }

    fn authorize_join(&self, client: &Client, lobby: &LobbyCode) -> JoinDecision {
        let Some(proxy) = self.join_proxy.clone() else {
            return JoinDecision::Allow;
        };
        let info = client.info();
        let (id, user, ip) = (info.id.to_string(), info.user_id.clone(), info.ip);
        let lobby = lobby.clone();
        JoinDecision::Later(Box::pin(async move {
            proxy
                .join(&id, user.as_str(), ip, lobby.as_str())
                .await
                .map_err(|error| match error {
                    ProxyError::Refused(_) => ClientError::new(
                        ErrorCode::NotAllowed,
                        format!("the backend refused to let you join `{lobby}`"),
                    ),
                    ProxyError::Unavailable(why) => {
                        tracing::warn!(%why, %lobby, "join undecided: the client may retry");
                        ClientError::new(
                            ErrorCode::Overloaded,
                            "the backend did not decide the join; retry later",
                        )
                    }
                })
        }))
    }

    fn on_connection_lost(&self, lost: &LostConnection) {
        self.emit("disconnect", || {
            let mut fields = Map::new();
            fields.insert("connection_id".into(), json!(lost.id));
            fields.insert("user_id".into(), json!(lost.user_id));
            fields.insert("ip".into(), json!(lost.ip));
            fields.insert("reason".into(), json!("node_lost"));
            fields.insert("code".into(), Value::Null);
            fields.insert("lost_node".into(), json!(lost.node));
            fields
        });
    }

    fn on_join(&self, client: &Client, lobby: &LobbyCode) {
        self.emit("join", || {
            let mut fields = about(client.info());
            fields.insert("lobby".into(), json!(lobby));
            fields
        });
    }

    fn on_leave(&self, client: &Client, lobby: &LobbyCode) {
        self.emit("leave", || {
            let mut fields = about(client.info());
            fields.insert("lobby".into(), json!(lobby));
            fields
        });
    }

    fn wants_presence(&self) -> bool {
        self.webhooks
            .as_ref()
            .is_some_and(|w| w.wants("member_joined") || w.wants("member_left"))
    }

    fn on_presence(&self, lobby: &LobbyCode, user: &UserId, joined: bool) {
        let kind = if joined {
            "member_joined"
        } else {
            "member_left"
        };
        self.emit(kind, || {
            let mut fields = Map::new();
            fields.insert("lobby".into(), json!(lobby));
            fields.insert("user_id".into(), json!(user));
            fields
        });
    }

    fn on_rpc(&self, client: &Client, method: &str, data: &RawValue) -> RpcDecision {
        match &self.rpc {
            Some(rpc) => RpcDecision::Later(rpc.call(client.info(), method, data)),
            None => NoHandler.on_rpc(client, method, data),
        }
    }

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

/// The server's manager: its limits and settings from `config`, the token refresh and the
/// webhooks (started here, on the current runtime).
pub fn new_manager(config: &ServerConfig) -> anyhow::Result<Manager> {
    let auth = Auth::from_config(config)?;
    let backend = Arc::new(Backend::new(config)?);
    let webhooks = Webhooks::start(&config.webhook, &config.manager.node_id, backend.clone());
    let rpc = Rpc::new(&config.webhook, backend.clone());
    let join_proxy = Proxy::new(&config.proxy, backend).filter(|p| p.decides_joins());
    Ok(Manager::with_handler(
        config.manager.clone(),
        ServerHandler {
            auth,
            webhooks,
            join_proxy,
            rpc,
        },
    )?)
}

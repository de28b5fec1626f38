//! How the embedding app hears about connections and receives its own messages.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::client::Client;
use crate::disconnect::DisconnectReason;
use crate::handle::{ConnectionInfo, LostConnection};
use crate::ids::{LobbyCode, UserId};
use crate::protocol::{ClientError, ErrorCode};
use crate::request::LobbyFilter;

/// A client frame whose `type` the protocol does not define: the application's own message.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AppMessage<'a> {
    /// The frame's `type`.
    pub kind: &'a str,
    /// The whole frame as received (a JSON object).
    pub text: &'a str,
    /// The frame's `id`, when it is a string or a number (the ids the protocol echoes): what
    /// an answer sent later passes to [`Client::reply_error`] (own it with
    /// `id.map(ToOwned::to_owned)`).
    pub id: Option<&'a RawValue>,
}

/// The embedding app's side of the manager. Every method has a default, so an app implements
/// only what it needs.
///
/// A handler answers through the [`Client`] it is handed: [`reply`](Client::reply),
/// [`reply_error`](Client::reply_error), [`send_to_user`](Client::send_to_user),
/// [`broadcast`](Client::broadcast), [`close`](Client::close).
///
/// Methods run on the connection's own task, in order for that connection: while one runs,
/// that connection reads nothing else. Keep them quick: slow work (a database query, an HTTP
/// call) goes into [`Client::spawn`], whose task answers through its own clone of the client.
pub trait Handler: Send + Sync + 'static {
    /// A connection was accepted and registered; `welcome` is queued, so whatever the handler
    /// sends through `client` arrives after it.
    fn on_connect(&self, client: &Client) {
        let _ = client;
    }

    /// An application message arrived. An `Err` is sent back to the client as an `error` frame
    /// (with the frame's `id`); the connection stays open. The default refuses every message
    /// with `unknown_type`.
    ///
    /// After [`Client::close`] the connection reads no further frame.
    fn on_message(&self, client: &Client, message: AppMessage<'_>) -> Result<(), ClientError> {
        let _ = client;
        Err(ClientError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{}`", message.kind),
        ))
    }

    /// A connection ended; it is already gone from every index, so there is nobody to answer:
    /// only what is known about it, and why it ended. (Its lobbies are left with it: no
    /// [`on_leave`](Self::on_leave) follows.)
    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let _ = (conn, reason);
    }

    /// Protocol v2: may `client` join `lobby`? Asked for a client's `join`, after the
    /// credential's lobby patterns allowed it and before any limit is checked. The default
    /// allows. [`JoinDecision::Later`] decides asynchronously (a database lookup, say): the
    /// connection goes on reading meanwhile and the `joined` (or `error`) comes when it is
    /// done. Joins by the backend ([`Manager::join`](crate::Manager::join)) are not asked.
    fn authorize_join(&self, client: &Client, lobby: &LobbyCode) -> JoinDecision {
        let _ = (client, lobby);
        JoinDecision::Allow
    }

    /// Protocol v2: `client` joined `lobby` (its `joined` is queued), by its own `join`.
    fn on_join(&self, client: &Client, lobby: &LobbyCode) {
        let _ = (client, lobby);
    }

    /// Protocol v2: `client` left `lobby` by its own `leave`, or because a refreshed
    /// credential no longer allows it.
    fn on_leave(&self, client: &Client, lobby: &LobbyCode) {
        let _ = (client, lobby);
    }

    /// Whether this handler wants [`on_presence`](Self::on_presence) (default: no, and the
    /// manager then keeps no record of presence changes for it).
    fn wants_presence(&self) -> bool {
        false
    }

    /// A user joined (`joined`) or left a lobby: their first connection there arrived, or
    /// their last one left (after the leave grace). Each change is heard once, on one node: in
    /// a cluster, the node whose connection made it true (a dead node's by the node that
    /// cleans up after it). Called in order, from a task of its own, off the registry's lock:
    /// it may call the manager. Only with [`wants_presence`](Self::wants_presence).
    fn on_presence(&self, lobby: &LobbyCode, user: &UserId, joined: bool) {
        let _ = (lobby, user, joined);
    }

    /// In a cluster: a connection of a node that died (it stopped beating for
    /// `redis.node_ttl_ms`). Its node could not call [`on_disconnect`](Self::on_disconnect), so
    /// the node that frees its state hears it instead: once across the cluster, from the same
    /// task as [`on_presence`](Self::on_presence), before its user's `member_left`.
    fn on_connection_lost(&self, lost: &LostConnection) {
        let _ = lost;
    }

    /// Protocol v2: verifies the token of a client's `refresh` and says what it allows. The
    /// credential must name the connection's user (another user is refused with
    /// `not_allowed`); its expiry replaces the connection's, and lobbies it no longer allows
    /// are left (`left` with reason `not_allowed`). The default refuses every refresh: an app
    /// that verifies tokens implements it with the same check as at connect.
    fn refresh(&self, client: &Client, token: &str) -> Result<Credential, ClientError> {
        let _ = (client, token);
        Err(ClientError::new(
            ErrorCode::NotAllowed,
            "this server does not refresh tokens on a live connection",
        ))
    }

    /// Protocol v2: a client's `rpc`, a call the app answers: [`RpcDecision::Reply`] at
    /// once (an `rpc_result` with the call's `id`), [`RpcDecision::Fail`] (an `error` with
    /// it), or [`RpcDecision::Later`], whose future runs on the manager's task tracker while
    /// the connection goes on reading and answers when it is done. A connection has at most
    /// [`Limits::max_rpc_in_flight`](crate::config::Limits::max_rpc_in_flight) calls
    /// waiting: past it a call is refused with `rate_limited` before this is asked. A call
    /// whose connection closes is dropped unanswered (its future too), so an app's call
    /// never outlives its client. The default fails every call with `unknown_type`.
    fn on_rpc(&self, client: &Client, method: &str, data: &RawValue) -> RpcDecision {
        let _ = (client, method, data);
        RpcDecision::Fail(ClientError::new(
            ErrorCode::UnknownType,
            "this server answers no rpc",
        ))
    }
}

/// The answer to [`Handler::on_rpc`].
#[non_exhaustive]
pub enum RpcDecision {
    /// The result: sent as `rpc_result`'s `data`.
    Reply(Box<RawValue>),
    /// Refuse with this `error` (the call's `id` is added).
    Fail(ClientError),
    /// Answer when this future is done; it runs on the manager's task tracker, counted
    /// against the connection's calls waiting until it ends.
    Later(RpcCall),
}

/// An asynchronous answer to an `rpc` ([`RpcDecision::Later`]): the result's `data`, or the
/// `error` to send.
pub type RpcCall =
    Pin<Box<dyn Future<Output = Result<Box<RawValue>, ClientError>> + Send + 'static>>;

impl std::fmt::Debug for RpcDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reply(data) => f.debug_tuple("Reply").field(data).finish(),
            Self::Fail(error) => f.debug_tuple("Fail").field(error).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// The answer to [`Handler::authorize_join`].
#[non_exhaustive]
pub enum JoinDecision {
    /// Join (the limits are checked next).
    Allow,
    /// Refuse with this `error` (the frame's `id` is added).
    Deny(ClientError),
    /// Decide when this future is done; it runs on the manager's task tracker.
    Later(JoinCheck),
}

/// An asynchronous join decision ([`JoinDecision::Later`]).
pub type JoinCheck = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + 'static>>;

impl std::fmt::Debug for JoinDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allow => f.write_str("Allow"),
            Self::Deny(error) => f.debug_tuple("Deny").field(error).finish(),
            Self::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// A fresh credential, as the app verified it (for [`Handler::refresh`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Credential {
    /// The user the token names.
    pub user_id: UserId,
    /// When it expires (the connection is then closed with 4010), if it does.
    pub expires_at: Option<SystemTime>,
    /// The lobbies it allows joining; `None`: any.
    pub allowed: Option<LobbyFilter>,
}

impl Credential {
    /// A credential for `user_id` that never expires and allows every lobby.
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id,
            expires_at: None,
            allowed: None,
        }
    }

    /// Expires at `at`.
    #[must_use]
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Allows only these lobbies.
    #[must_use]
    pub fn allow_lobbies(mut self, allowed: LobbyFilter) -> Self {
        self.allowed = Some(allowed);
        self
    }
}

/// The handler of a manager built without one: refuses application messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Handler for NoHandler {}

/// The app's handler as the manager and its connection tasks hold it.
#[derive(Clone)]
pub(crate) struct AppHandler(Arc<dyn Handler>);

impl AppHandler {
    pub(crate) fn new(handler: impl Handler) -> Self {
        Self(Arc::new(handler))
    }
}

impl std::ops::Deref for AppHandler {
    type Target = dyn Handler;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::fmt::Debug for AppHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppHandler(..)")
    }
}

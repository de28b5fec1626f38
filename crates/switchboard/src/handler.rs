//! How the embedding app hears about connections and receives its own messages.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::client::Client;
use crate::disconnect::DisconnectReason;
use crate::handle::ConnectionInfo;
use crate::protocol::{ClientError, ErrorCode};

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
    /// only what is known about it, and why it ended.
    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let _ = (conn, reason);
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

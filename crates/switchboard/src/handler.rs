//! How the embedding app hears about connections and receives its own messages.

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
}

/// The embedding app's side of the manager. Every method has a default, so an app implements
/// only what it needs.
///
/// Methods run on the connection's own task, in order for that connection: keep them quick
/// and spawn for slow work (then answer with [`Manager::send_to_connection`] and friends).
///
/// [`Manager::send_to_connection`]: crate::Manager::send_to_connection
pub trait Handler: Send + Sync + 'static {
    /// A connection was accepted and registered; `welcome` is on its way.
    fn on_connect(&self, conn: &ConnectionInfo) {
        let _ = conn;
    }

    /// An application message arrived. An `Err` is sent back to the client as an `error` frame
    /// (with the frame's `id`); the connection stays open. The default refuses every message
    /// with `unknown_type`.
    fn on_message(
        &self,
        conn: &ConnectionInfo,
        message: AppMessage<'_>,
    ) -> Result<(), ClientError> {
        let _ = conn;
        Err(ClientError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{}`", message.kind),
        ))
    }

    /// A connection ended; it is already gone from every index.
    fn on_disconnect(&self, conn: &ConnectionInfo, reason: DisconnectReason) {
        let _ = (conn, reason);
    }
}

/// The handler of a manager built without one: refuses application messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

impl Handler for NoHandler {}

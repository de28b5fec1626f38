//! [`Client`]: one connection as the app's [`Handler`](crate::Handler) sees it, and the
//! backend's sends (a `direct` or `message` frame from `null`) that the manager's methods and
//! the client's share.

use std::sync::Arc;

use axum::extract::ws::Message;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use crate::disconnect::DisconnectReason;
use crate::error::Error;
use crate::handle::{ConnHandle, ConnectionInfo, Offer};
use crate::ids::LobbyCode;
use crate::protocol::{ClientError, ServerFrame, is_string_or_number, text};
use crate::shared::Shared;
use crate::skip::Skip;

/// One connection, handed to the app's handler: what is known about it, and the ways to
/// answer it, reach others, close it and work for it in the background.
///
/// Clone it freely (two reference counts): a task started with [`spawn`](Self::spawn) keeps
/// its own clone and answers when its work is done. A clone outliving the connection is
/// harmless: sends to it fail with [`Error::NoSuchConnection`].
///
/// Everything it sends comes from the backend (`from: null`), like the manager's methods.
/// A v1 connection lives in one lobby, the one it connected to; joining and leaving others
/// come with protocol v2.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Arc<ConnHandle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.conn.info)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(shared: Arc<Shared>, conn: Arc<ConnHandle>) -> Self {
        Self { shared, conn }
    }

    /// What is known about the connection: id, user, lobby, IP, when it connected.
    pub fn info(&self) -> &ConnectionInfo {
        &self.conn.info
    }

    /// Sends `data` to this connection only, as a `direct` frame from the backend
    /// (`from: null`), like [`Manager::send_to_connection`](crate::Manager::send_to_connection).
    /// Never waits: the frame is queued. [`Error::QueueFull`] when the connection's queue is
    /// full, [`Error::NoSuchConnection`] once it is gone.
    pub fn reply<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), Error> {
        send_direct(&self.shared, &self.conn, data)
    }

    /// Sends an `error` frame to this connection, echoing `id` (the [`AppMessage::id`] of
    /// the frame it answers; an `id` that is not a string or a number is left out, as the
    /// protocol says). What returning `Err` from `on_message` does, for an answer sent later.
    ///
    /// [`AppMessage::id`]: crate::AppMessage::id
    pub fn reply_error(&self, error: &ClientError, id: Option<&RawValue>) -> Result<(), Error> {
        offered(send_error(&self.shared, &self.conn, error, id))
    }

    /// Sends `data` to every connection of `user` on every node, as a `direct` frame from the
    /// backend, like [`Manager::send_to_user`](crate::Manager::send_to_user). Returns how many
    /// connections on this node it was queued for (0 for a user who is not connected).
    pub fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
    ) -> Result<usize, Error> {
        send_to_user(&self.shared, user, data)
    }

    /// Sends `data` to every connection in this connection's lobby, this one too unless
    /// `exclude_self` (the user's other connections always receive it). Returns how many
    /// connections on this node it was queued for.
    ///
    /// The frame is a `message` from the backend (`from: null`), numbered and kept for
    /// recovery like [`Manager::broadcast`](crate::Manager::broadcast)'s, not one from this
    /// connection's user: clients read `from` as "this user sent it", and the handler composed
    /// the data. When the sender matters, put it in `data` (from [`info`](Self::info)).
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        lobby: &str,
        data: &T,
        exclude_self: bool,
    ) -> Result<usize, Error> {
        let lobby = LobbyCode::parse(lobby)?;
        let info = &self.conn.info;
        let skip = if exclude_self {
            Skip::Connection(info.id.as_str())
        } else {
            Skip::Nobody
        };
        broadcast(&self.shared, &lobby, data, skip)
    }

    /// The lobbies the connection is in now (a v1 connection: its one lobby).
    pub fn lobbies(&self) -> Vec<LobbyCode> {
        self.shared.hub.lobbies_of(self.conn.seq)
    }

    /// Closes the connection with `reason` (e.g. [`DisconnectReason::Kicked`], 4009): what was
    /// queued before goes out first, then the close frame. Returns `false` when it was already
    /// closing (the first reason wins). Called from `on_message`, no further frame of this
    /// connection is read.
    pub fn close(&self, reason: DisconnectReason) -> bool {
        self.conn.close(reason)
    }

    /// Resolves once the connection is closing (whatever closes it: the client, a limit, the
    /// backend, a shutdown): a spawned task can stop working for a client that is gone.
    pub async fn closed(&self) {
        self.conn.closed().await;
    }

    /// Runs `task` in the background, on the manager's task tracker: graceful shutdown
    /// ([`Manager::shutdown`](crate::Manager::shutdown)) waits for it, within its deadline,
    /// like for a connection (a task spawned while shutdown waits is waited for too). It is
    /// not cancelled when the connection closes: select on [`closed`](Self::closed) for that.
    ///
    /// This is where a handler's slow work goes: handler methods run on the connection's
    /// task, which reads nothing else meanwhile. The task answers through a clone of the
    /// client:
    ///
    /// ```
    /// # use switchboard::{AppMessage, Client, ClientError, Handler};
    /// struct Lookup;
    ///
    /// impl Handler for Lookup {
    ///     fn on_message(&self, client: &Client, message: AppMessage<'_>) -> Result<(), ClientError> {
    ///         let (answer, id) = (client.clone(), message.id.map(ToOwned::to_owned));
    ///         client.spawn(async move {
    ///             let found = async { 42 }.await; // a database query, say
    ///             let _ = answer.reply(&serde_json::json!({ "id": id, "found": found }));
    ///         });
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// Call it within the Tokio runtime (handler methods always are).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.tracker.spawn(task)
    }
}

// The backend's sends, shared by `Manager`'s methods and `Client`'s.

/// `data` to one connection as a `direct` frame from the backend.
pub(crate) fn send_direct<T: Serialize + ?Sized>(
    shared: &Shared,
    conn: &ConnHandle,
    data: &T,
) -> Result<(), Error> {
    let data = to_raw(data)?;
    offered(shared.hub.deliver(conn, direct(&data)))
}

/// `data` to one connection, `conn` when this node holds it, else on the node its id names,
/// as a `direct` frame from the backend.
pub(crate) async fn send_to_connection<T: Serialize + ?Sized>(
    shared: &Shared,
    id: &str,
    conn: Option<&ConnHandle>,
    data: &T,
) -> Result<(), Error> {
    let frame = direct(&to_raw(data)?);
    match conn {
        Some(conn) => offered(shared.hub.deliver(conn, frame)),
        None => shared.send_to_connection_elsewhere(id, &frame).await,
    }
}

/// `data` to every connection of `user`, on every node, as a `direct` frame from the
/// backend; the connections reached on this node.
pub(crate) fn send_to_user<T: Serialize + ?Sized>(
    shared: &Shared,
    user: &str,
    data: &T,
) -> Result<usize, Error> {
    let data = to_raw(data)?;
    shared.send_to_user(user, &direct(&data))
}

/// `data` to `lobby` on every node as a `message` frame from the backend (encoded once,
/// numbered as it is published), leaving out whom `skip` names; the connections reached on
/// this node.
pub(crate) fn broadcast<T: Serialize + ?Sized>(
    shared: &Shared,
    lobby: &LobbyCode,
    data: &T,
    skip: Skip<'_>,
) -> Result<usize, Error> {
    let data = to_raw(data)?;
    let frame = ServerFrame::Message {
        lobby,
        from: None,
        data: &data,
    }
    .encode();
    shared
        .publish(lobby, &frame, skip, false)
        .map(|p| p.reached)
}

/// An `error` frame to one connection, echoing `id` if it is a string or a number.
pub(crate) fn send_error(
    shared: &Shared,
    conn: &ConnHandle,
    error: &ClientError,
    id: Option<&RawValue>,
) -> Offer {
    let frame = ServerFrame::Error {
        code: error.code,
        message: &error.message,
        id: id.filter(|id| is_string_or_number(id)),
    };
    shared.hub.deliver(conn, text(frame.encode()))
}

fn offered(offer: Offer) -> Result<(), Error> {
    match offer {
        Offer::Queued => Ok(()),
        Offer::Full => Err(Error::QueueFull),
        Offer::Closed => Err(Error::NoSuchConnection),
    }
}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::value::to_raw_value(data)
}

fn direct(data: &RawValue) -> Message {
    text(ServerFrame::Direct { from: None, data }.encode())
}

//! [`Error`]: what the backend-facing methods of the manager can refuse with.

use std::time::Duration;

use crate::ids::InvalidId;
use crate::protocol::ClientError;

/// Errors of the backend-facing methods.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lobby code or user id is malformed.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The payload could not be serialized as JSON.
    #[error("payload is not serializable as JSON: {0}")]
    Payload(#[from] serde_json::Error),
    /// No connection with that id on this server.
    #[error("no such connection")]
    NoSuchConnection,
    /// The connection's outbound queue is full: under the slow-consumer policy `close` it is
    /// being closed (4008), under `drop` this frame was dropped (and counted).
    #[error("the connection's outbound queue is full")]
    QueueFull,
    /// The connection did not answer a ping in time.
    #[error("no pong within {0:?}")]
    PingTimeout(Duration),
    /// Cluster mode: this node's outbound queue to the cluster is full, so the frame was sent
    /// nowhere; retry later.
    #[error("the cluster's outbound queue is full; retry later")]
    Overloaded,
    /// Members of the lobby are behind (the server cannot deliver as fast as it is
    /// published to): the publish was shed where it entered, sent nowhere; retry later.
    #[error("the lobby's members are behind; publish shed, retry later")]
    LobbyBusy,
    /// A join was refused (`lobby_full`, `too_many_lobbies`, `not_allowed`).
    #[error("join refused: {}", .0.message)]
    Refused(ClientError),
    /// The connection speaks protocol v1, which lives in one lobby.
    #[error("the connection speaks protocol v1 (one lobby)")]
    ProtocolV1,
}

/// Why a post for an SSE connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SsePostError {
    /// No SSE connection with that id on this node.
    #[error("no such SSE connection")]
    NotFound,
    /// The connection belongs to another user or lobby.
    #[error("the connection belongs to another user or lobby")]
    Forbidden,
    /// Too many frames waiting for the connection.
    #[error("too many frames waiting; slow down")]
    Busy,
    /// The connection is on another node and the cluster cannot forward the post now (Redis
    /// unreachable, or this node's queue to it full): nothing was sent; retry.
    #[error("the cluster cannot forward the post now; retry")]
    Unavailable,
    /// The frame is larger than `max_message_bytes`, the bound of a WebSocket message.
    #[error("the frame is larger than max_message_bytes ({0} bytes)")]
    TooLarge(usize),
}

//! Switchboard: a WebSocket connection manager for real-time applications.
//!
//! Clients connect to a lobby (room); the [`Manager`] enforces global, per-lobby, per-user and
//! per-IP limits atomically, applies a [`UserPolicy`] to users with several connections, pings
//! every connection and closes stale ones, broadcasts without waiting for slow clients, and
//! keeps per-user presence. It speaks wire protocol v1 (one lobby per connection) and v2 (one
//! connection in many lobbies, joined and left on the live socket), both in
//! `docs/protocol.md`.
//!
//! # Layout
//!
//! - [`cluster`]: the seam for several nodes ([`cluster::Cluster`]); local by default.
//! - `skip`: [`Skip`], who a broadcast leaves out (one type for every publisher).
//! - [`config`]: [`Config`] with documented defaults.
//! - [`disconnect`]: [`DisconnectReason`], the single source of close codes and retry advice.
//! - [`protocol`]: client and server frames of protocols v1 and v2.
//! - `hub`: the registry (connections, users, lobbies, IPs) behind one short lock, with the
//!   one publish path; `hub::limits` (the admission arithmetic, which limit a connect would
//!   exceed, in order), `hub::lobby` (one lobby's members) and `hub::presence` (everything
//!   presence: per-user counts, join/leave events and their batching, the leave grace, the
//!   presence list).
//! - `handle`: a connection's handle (identity, bounded outbound queue, close signal), what
//!   the registry holds.
//! - `connection`: one connection's task (WebSocket) or tasks (SSE).
//! - [`ws`]: the WebSocket upgrade and frame codec, with no buffer held while idle.
//! - [`handler`]: how the embedding app hears about connections and its own messages.
//! - `client`: [`Client`], a connection as the handler sees it (answer it, reach its lobby or
//!   a user, close it, work for it in the background), and the backend's sends it shares
//!   with the manager.
//! - [`history`]: per-lobby offsets, epoch and recent broadcasts for recovery.
//! - `shared`: the state the manager and every connection share, and the routing decided on
//!   it (local or cluster-wide publish, the connect rate, the ping clock, SSE posts).
//! - `request`, `error`: [`ConnectRequest`] and [`Error`].
//! - `manager`: [`Manager`], the methods a backend calls.
//! - [`axum`]: the [`WsConnect`](crate::axum::WsConnect) extractor.
//! - [`sse`]: Server-Sent Events, the same connections for clients without WebSocket.
//! - [`stats`]: [`Stats`], the snapshot a backend reads.
//!
//! # Example
//!
//! A manager with small limits, and what a backend does with it:
//!
//! ```
//! use switchboard::{Config, Manager, Skip, UserPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), switchboard::Error> {
//! let mut config = Config::default();
//! config.limits.max_per_lobby = 10;
//! config.user_policy = UserPolicy::Multi;
//! let manager = Manager::new(config).expect("valid config");
//!
//! // Nobody is connected yet: a broadcast reaches no one, and stats say so.
//! let reached = manager.broadcast("lobby-1", &serde_json::json!({"text": "hi"}), Skip::Nobody)?;
//! assert_eq!(reached, 0);
//! assert_eq!(manager.stats().total_connections, 0);
//! // Presence, lobbies and disconnects answer for every node of a cluster: they are async.
//! assert!(manager.presence("lobby-1").await?.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! Embedding it in an axum app (see `examples/embed_in_axum.rs` for a complete program):
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{Router, extract::State, response::Response, routing::get};
//! use switchboard::{ConnectRequest, DisconnectReason, Manager, UserId, axum::WsConnect};
//!
//! async fn ws(State(manager): State<Manager>, connect: WsConnect) -> Response {
//!     // Authenticate `connect.token` your way; here the token is the user id.
//!     match connect.token.as_deref().map(UserId::parse) {
//!         Some(Ok(user)) => {
//!             let request = ConnectRequest::new(connect.lobby, user, connect.peer.ip());
//!             manager.accept(connect.upgrade, request)
//!         }
//!         _ => manager.refuse(connect.upgrade, DisconnectReason::Unauthorized),
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let manager = Manager::new(Default::default()).expect("valid config");
//! let app = Router::new().route("/ws/{lobby}", get(ws)).with_state(manager);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```

pub mod axum;
#[doc(hidden)]
pub mod bench_support;
mod client;
pub mod cluster;
pub mod config;
mod connection;
mod cork;
pub mod disconnect;
mod error;
mod gzip;
mod handle;
pub mod handler;
pub mod history;
mod hub;
mod ids;
mod manager;
pub mod protocol;
mod request;
mod shared;
mod skip;
pub mod sse;
pub mod stats;
pub mod ws;

pub use client::Client;
pub use config::{
    ClientPermissions, CompressionConfig, Config, ConfigError, Limits, PresenceConfig, RateConfig,
    SlowConsumerPolicy, UserPolicy,
};
pub use disconnect::DisconnectReason;
pub use error::Error;
pub use handle::{ConnectionInfo, ConnectionState, LostConnection};
pub use handler::{
    AppMessage, Credential, Handler, JoinCheck, JoinDecision, NoHandler, RpcCall, RpcDecision,
};
pub use history::{ClusterHistory, HistoryConfig, Recovery};
pub use ids::{ConnectionId, InvalidId, LobbyCode, UserId};
pub use manager::{LobbyInfo, Manager, SUBPROTOCOL, SUBPROTOCOL_V2};
pub use protocol::{ClientError, ErrorCode};
pub use request::{ConnectRequest, LobbyFilter};
pub use skip::Skip;
pub use stats::{RoundTrips, Stats};

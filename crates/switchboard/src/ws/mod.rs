//! Switchboard's own WebSocket layer (RFC 6455): the HTTP upgrade and the frame codec.
//!
//! Why not a WebSocket crate's stream: those keep a read buffer and a write buffer per
//! connection for its whole life (about 5.5 KiB here), more than everything else a connection
//! costs. This layer keeps none while a connection is idle: the connection task reads into a
//! per-thread buffer, decodes frames in place ([`frame::Decoder`]), and writes frames encoded
//! into another per-thread buffer; only what a socket could not take yet is kept. The
//! Autobahn|Testsuite checks it (`scripts/autobahn.sh`).

pub mod deflate;
pub mod frame;
mod upgrade;

pub use upgrade::{
    ConnectionFuture, Handshake, Upgrade, UpgradeRejection, Upgraded, response_head,
};

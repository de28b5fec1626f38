//! How a connection's queued frames become bytes on the wire: plain, or compressed with
//! permessage-deflate. One encoder for both writers of a socket: the connection's task and a
//! write-through (`direct`).

use super::{Outgoing, message_parts};
use crate::stats::Counters;
use crate::ws::deflate;
use crate::ws::frame::{self, OpCode};

/// How one connection's frames are encoded, as its handshake settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    /// The window the connection's messages may be compressed with; `None`: not at all
    /// (the extension was not negotiated, or only with a window zlib cannot keep to).
    pub(crate) window_bits: Option<u8>,
    /// Smaller messages go out plain: compressing them would gain little or nothing.
    pub(crate) min_bytes: u32,
}

impl Encoding {
    /// Whether encoding `item` compresses it for this connection alone (a message for this
    /// connection, or a broadcast for a member that asked for a smaller window), rather than
    /// writing it plain or with the bytes its broadcast compressed once for every member.
    pub(crate) fn compresses_alone(&self, item: &Outgoing) -> bool {
        let Some(bits) = self.window_bits else {
            return false;
        };
        let Some((opcode, payload)) = message_parts(item.message()) else {
            return false;
        };
        matches!(opcode, OpCode::Text | OpCode::Binary)
            && payload.len() >= self.min_bytes as usize
            && (bits != deflate::MAX_WINDOW_BITS || matches!(item, Outgoing::Own(_)))
    }

    /// Encodes a queued frame into `out`; returns its payload's length on the wire.
    /// Compressions are counted in `counters` (a broadcast once, whoever compresses it).
    pub(crate) fn encode(&self, out: &mut Vec<u8>, item: &Outgoing, counters: &Counters) -> u64 {
        let Some((opcode, payload)) = message_parts(item.message()) else {
            return 0;
        };
        let data = matches!(opcode, OpCode::Text | OpCode::Binary);
        let window = self
            .window_bits
            .filter(|_| data && payload.len() >= self.min_bytes as usize);
        let Some(bits) = window else {
            return encode_plain(out, opcode, payload);
        };
        // A broadcast: compressed once for all its members, with a full window (a member that
        // asked for a smaller one compresses its own).
        if bits == deflate::MAX_WINDOW_BITS {
            let shared = item.shared_deflated(|payload| {
                counters.deflated();
                deflate::with_compressed(payload, bits, |z| {
                    (z.len() < payload.len()).then(|| bytes::Bytes::copy_from_slice(z))
                })
            });
            match shared {
                Some(Some(deflated)) => return encode_deflated(out, opcode, deflated),
                Some(None) => return encode_plain(out, opcode, payload),
                None => {}
            }
        }
        counters.deflated();
        deflate::with_compressed(payload, bits, |z| {
            if z.len() < payload.len() {
                encode_deflated(out, opcode, z)
            } else {
                encode_plain(out, opcode, payload)
            }
        })
    }
}

/// Encodes a frame as it is; returns its payload's length.
fn encode_plain(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) -> u64 {
    frame::encode(out, opcode, payload);
    payload.len() as u64
}

/// Encodes a compressed message (RSV1); returns its compressed payload's length.
fn encode_deflated(out: &mut Vec<u8>, opcode: OpCode, deflated: &[u8]) -> u64 {
    frame::encode_deflated(out, opcode, deflated);
    deflated.len() as u64
}

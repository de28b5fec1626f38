//! The WebSocket frame decoder (`switchboard::ws::frame::Decoder`) on arbitrary bytes, fed
//! whole and in pieces cut where the input says: it never panics, it gives the same frames and
//! the same error however the bytes are split (a frame straddling reads is the common case on
//! a real socket), and it holds nothing once it has decoded every complete frame.
//!
//! With permessage-deflate (the input's `mode` says): arbitrary bytes reach the inflater as
//! compressed messages (RSV1), and the input compressed by the server's own compressor, sent
//! as one message fragmented at the cuts, inflates back to exactly the input (or is refused
//! as too big past the decoder's limit), whole or split.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use switchboard::ws::deflate;
use switchboard::ws::frame::{Decoder, Frame, FrameError};

/// The decoder's limit, on frames and on inflated messages.
const LIMIT: usize = 4096;

/// Decodes `bytes` fed in the pieces given; stops at the first error, as a connection does.
/// Frames are kept as their `Debug` text: equal text, equal frame.
fn decode(bytes: &[u8], cuts: &[usize], deflate: bool) -> (Vec<String>, Option<FrameError>, bool) {
    let mut decoder = Decoder::new(LIMIT).with_deflate(deflate);
    let mut frames = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let mut piece = bytes[start..end].to_vec();
        start = end;
        let fed = decoder.feed(&mut piece, |f| {
            frames.push(format!("{f:?}"));
            ControlFlow::<()>::Continue(())
        });
        if let Err(e) = fed {
            return (frames, Some(e), false);
        }
    }
    (frames, None, decoder.is_idle())
}

/// A masked client frame.
fn client_frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    let mask = [0x5a, 0x01, 0xc3, 0x77];
    out.push(first);
    match payload.len() {
        len @ 0..126 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

fuzz_target!(|input: (Vec<u8>, Vec<u16>, u8)| {
    let (bytes, raw_cuts, mode) = input;
    let cut = |len: usize| {
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|&c| usize::from(c) % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    };
    let with_deflate = mode & 1 == 1;
    let cuts = cut(bytes.len());
    let whole = decode(&bytes, &[], with_deflate);
    let split = decode(&bytes, &cuts, with_deflate);
    assert_eq!(whole.0, split.0, "frames differ with cuts {cuts:?}");
    assert_eq!(whole.1, split.1, "errors differ with cuts {cuts:?}");
    assert_eq!(whole.2, split.2, "idleness differs with cuts {cuts:?}");

    if mode & 2 == 0 {
        return;
    }
    // The input as one binary message, compressed, fragmented where the cuts fall in it.
    let bits = 9 + (mode >> 2) % 7;
    let mut compressed = Vec::new();
    deflate::compress(&bytes, bits, &mut compressed);
    let mut pieces = cut(compressed.len());
    pieces.dedup();
    let mut wire = Vec::new();
    let mut start = 0;
    for (i, &end) in pieces.iter().chain(std::iter::once(&compressed.len())).enumerate() {
        let fin = if end == compressed.len() { 0x80 } else { 0 };
        let first = if i == 0 { 0x40 | 0x02 } else { 0 };
        client_frame(&mut wire, fin | first, &compressed[start..end]);
        start = end;
        if fin != 0 {
            break;
        }
    }
    let expected = if bytes.len() <= LIMIT && compressed.len() <= LIMIT {
        (vec![format!("{:?}", Frame::Binary(&bytes))], None)
    } else {
        (Vec::new(), Some(FrameError::TooBig))
    };
    for cuts in [Vec::new(), cut(wire.len())] {
        let (frames, error, idle) = decode(&wire, &cuts, true);
        assert_eq!((frames, error), expected, "round trip, cuts {cuts:?}");
        assert!(idle || expected.1.is_some());
    }
});

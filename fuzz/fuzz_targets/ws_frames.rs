//! The WebSocket frame decoder (`switchboard::ws::frame::Decoder`) on arbitrary bytes, fed
//! whole and in pieces cut where the input says: it never panics, it gives the same frames and
//! the same error however the bytes are split (a frame straddling reads is the common case on
//! a real socket), and it holds nothing once it has decoded every complete frame.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use switchboard::ws::frame::{Decoder, FrameError};

/// Decodes `bytes` fed in the pieces given; stops at the first error, as a connection does.
/// Frames are kept as their `Debug` text: equal text, equal frame.
fn decode(bytes: &[u8], cuts: &[usize]) -> (Vec<String>, Option<FrameError>, bool) {
    let mut decoder = Decoder::new(4096);
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

fuzz_target!(|input: (Vec<u8>, Vec<u16>)| {
    let (bytes, raw_cuts) = input;
    let mut cuts: Vec<usize> = raw_cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let whole = decode(&bytes, &[]);
    let split = decode(&bytes, &cuts);
    assert_eq!(whole.0, split.0, "frames differ with cuts {cuts:?}");
    assert_eq!(whole.1, split.1, "errors differ with cuts {cuts:?}");
    assert_eq!(whole.2, split.2, "idleness differs with cuts {cuts:?}");
});

//! permessage-deflate (RFC 7692), server side: the negotiation, and compressing and inflating
//! one message at a time.
//!
//! Switchboard always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed and inflated with a fresh window,
//! so no connection keeps a compressor or an inflater between messages. The compressors and
//! the inflater are per thread, reset before each message; an idle connection holds nothing.
//!
//! The deflate work is flate2's (the zlib-rs backend); the framing (RSV1, the trailing
//! `00 00 ff ff` removed and put back) is [`frame`](super::frame)'s and this module's.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::FrameError;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The empty stored block a sync flush ends with: removed from every compressed message
/// (RFC 7692 7.2.1) and put back before inflating (7.2.2).
pub(crate) const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zlib's level 1 to 9: compressing is paid once per broadcast, but once per message for
/// direct frames; level 6 (zlib's default) gives JSON little over level 3 and costs more.
const LEVEL: u32 = 3;

/// The largest LZ77 window (log2 bytes), and the one a client that asks for no limit gets.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window zlib can compress raw deflate with. An offer of
/// `server_max_window_bits=8` is accepted, but the server then sends every message
/// uncompressed (RFC 7692 allows that for any message): zlib would silently use 9 bits, and
/// a client decoding with a 256-byte window would refuse the result.
const MIN_COMPRESS_BITS: u8 = 9;

/// A per-thread compressor's output buffer kept between messages at most this large.
const KEEP_BUF: usize = 256 * 1024;

/// What was agreed with one client: the extension is on, with no context takeover both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The client's `server_max_window_bits`, if its offer had one (8-15).
    server_max_window_bits: Option<u8>,
}

impl Deflate {
    /// The LZ77 window (log2 bytes) the server's messages may use; `None` when the server
    /// sends them uncompressed (an 8-bit window, which zlib cannot produce).
    pub fn window_bits(self) -> Option<u8> {
        let bits = self.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS);
        (bits >= MIN_COMPRESS_BITS).then_some(bits)
    }

    /// The `Sec-WebSocket-Extensions` answer accepting the offer.
    pub fn response(self) -> String {
        let mut answer =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        answer
    }
}

/// Picks the first `permessage-deflate` offer in `Sec-WebSocket-Extensions` (the header's
/// values, in order) that the server can honour; `None` declines the extension (the
/// handshake goes on without it). An offer with an unknown or repeated parameter, or a
/// parameter with an invalid value, is declined (RFC 7692 5.1) and the next one tried.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Deflate> {
    headers
        .into_iter()
        .flat_map(split_unquoted::<','>)
        .find_map(accept_offer)
}

/// One offer (`name; param; param=value`): the agreement, if the server can honour it.
fn accept_offer(offer: &str) -> Option<Deflate> {
    let mut params = split_unquoted::<';'>(offer).map(str::trim);
    if !params.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen = [false; 4];
    let mut deflate = Deflate {
        server_max_window_bits: None,
    };
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let known = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ];
        let which = known.iter().position(|k| name.eq_ignore_ascii_case(k))?;
        if std::mem::replace(&mut seen[which], true) {
            return None;
        }
        match (which, value) {
            // The no-context-takeover parameters have no value.
            (0 | 1, None) => {}
            (2, Some(value)) => deflate.server_max_window_bits = Some(window_bits(value)?),
            // The client says it can honour a limit (or which limit it will keep to): the
            // server inflates with a full window, so it needs none and answers none.
            (3, None) => {}
            (3, Some(value)) => {
                window_bits(value)?;
            }
            _ => return None,
        }
    }
    Some(deflate)
}

/// A window size parameter: 8 to 15, digits only, no leading zero.
fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())??;
    ((8..=15).contains(&bits) && !value.starts_with('0')).then_some(bits)
}

/// A parameter value, with the quotes of a quoted-string taken off (no escapes: a valid
/// value is a token).
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|v| !v.contains(['"', '\\'])),
        None => Some(value),
    }
}

/// Splits at `SEP` outside quoted strings.
fn split_unquoted<const SEP: char>(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == SEP && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

thread_local! {
    /// One compressor per window size in use on this thread (9 to 15 bits), reset per message.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const {
        RefCell::new([None, None, None, None, None, None, None])
    };
    /// The inflater, reset per message; a full window decodes any smaller one.
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    /// Where a message is inflated before it is handed on.
    static INFLATED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Compresses one message's payload as permessage-deflate sends it (a fresh window of
/// `window_bits`, 9 to 15; the trailing `00 00 ff ff` removed), appending it to `out`.
pub fn compress(payload: &[u8], window_bits: u8, out: &mut Vec<u8>) {
    let bits = window_bits.clamp(MIN_COMPRESS_BITS, MAX_WINDOW_BITS);
    let fresh = || Compress::new_with_window_bits(Compression::new(LEVEL), false, bits);
    COMPRESSORS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut compressors) => {
            let slot = &mut compressors[usize::from(bits - MIN_COMPRESS_BITS)];
            let compressor = slot.get_or_insert_with(fresh);
            compressor.reset();
            compress_with(compressor, payload, out);
        }
        Err(_) => compress_with(&mut fresh(), payload, out),
    });
}

fn compress_with(compressor: &mut Compress, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(payload.len() / 2 + 64);
    loop {
        let done = compressor.total_in() as usize;
        let input = payload.get(done..).unwrap_or_default();
        if compressor
            .compress_vec(input, out, FlushCompress::Sync)
            .is_err()
        {
            // Never expected (the stream is well formed): send nothing rather than garbage.
            out.truncate(start);
            return;
        }
        // The flush is complete once all input is in and the output was not the limit.
        if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve((out.len() - start).max(64));
    }
    if out[start..].ends_with(&TRAILER) {
        out.truncate(out.len() - TRAILER.len());
    }
}

/// Runs `f` with a deflated message compressed into this thread's buffer (see
/// [`compress`]).
pub fn with_compressed<R>(payload: &[u8], window_bits: u8, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_buffer(&COMPRESSED, |buf| {
        compress(payload, window_bits, buf);
        f(buf)
    })
}

thread_local! {
    static COMPRESSED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's buffer `cell`, cleared, and clears it after (giving back its
/// memory past [`KEEP_BUF`]); a nested call gets a fresh one.
fn thread_buffer<R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<u8>>>,
    f: impl FnOnce(&mut Vec<u8>) -> R,
) -> R {
    cell.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let result = f(&mut buf);
            buf.clear();
            if buf.capacity() > KEEP_BUF {
                *buf = Vec::new();
            }
            result
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// Inflates one compressed message (its payload as received, every fragment's in order) into
/// this thread's buffer and runs `f` with it. At most `limit` bytes are produced: a message
/// inflating to more is [`FrameError::TooBig`] as soon as the limit is passed (a zip bomb
/// costs `limit` bytes, not what it would expand to); data that is not deflate is a
/// protocol error.
pub fn with_inflated<R>(
    compressed: &[u8],
    limit: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, FrameError> {
    thread_buffer(&INFLATED, |buf| {
        if buf.capacity() > limit {
            // Kept from a larger limit: the output must not have room past this one.
            *buf = Vec::new();
        }
        INFLATER.with(|cell| match cell.try_borrow_mut() {
            Ok(mut inflater) => {
                let inflater = inflater.get_or_insert_with(|| Decompress::new(false));
                inflater.reset(false);
                inflate(inflater, compressed, limit, buf)
            }
            Err(_) => inflate(&mut Decompress::new(false), compressed, limit, buf),
        })?;
        Ok(f(buf))
    })
}

fn inflate(
    inflater: &mut Decompress,
    compressed: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    for input in [compressed, &TRAILER[..]] {
        if inflate_part(inflater, input, limit, out)? {
            // The message ended with a final block: what follows is not deflate's.
            return Ok(());
        }
    }
    Ok(())
}

/// Inflates `input` into `out`, within `limit`; `true` once the stream's final block ended.
fn inflate_part(
    inflater: &mut Decompress,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<bool, FrameError> {
    let corrupt = |_| FrameError::Protocol("invalid compressed data");
    let start = inflater.total_in();
    loop {
        let taken = (inflater.total_in() - start) as usize;
        let rest = input.get(taken..).unwrap_or_default();
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let probing = out.len() == out.capacity();
        let status = if !probing {
            inflater.decompress_vec(rest, out, FlushDecompress::Sync)
        } else if out.len() < limit {
            // Grow geometrically, never past the limit.
            out.reserve_exact(out.len().max(4096).min(limit - out.len()));
            continue;
        } else {
            // Full to the limit: one more byte out means the message is too big.
            inflater.decompress(rest, &mut [0u8; 1], FlushDecompress::Sync)
        }
        .map_err(corrupt)?;
        if probing && inflater.total_out() > out_before {
            return Err(FrameError::TooBig);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        // Done once all input is in and the output had room to spare (nothing pending).
        let filled = out.len() == out.capacity() && !probing;
        if (inflater.total_in() - start) as usize >= input.len() && !filled {
            return Ok(false);
        }
        if inflater.total_in() == in_before && inflater.total_out() == out_before && !filled {
            // Neither input taken nor output given, with room for it: not deflate.
            return Err(FrameError::Protocol("invalid compressed data"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(header: &str) -> Option<Deflate> {
        negotiate([header])
    }

    fn deflate(bits: Option<u8>) -> Option<Deflate> {
        Some(Deflate {
            server_max_window_bits: bits,
        })
    }

    #[test]
    fn negotiation_table() {
        let cases: &[(&str, Option<Deflate>)] = &[
            ("permessage-deflate", deflate(None)),
            ("permessage-deflate; client_max_window_bits", deflate(None)),
            (
                "Permessage-Deflate; Client_Max_Window_Bits=10",
                deflate(None),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                deflate(Some(10)),
            ),
            (
                "permessage-deflate; server_max_window_bits=\"12\"",
                deflate(Some(12)),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                deflate(Some(8)),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                deflate(None),
            ),
            // Declined: the handshake goes on without the extension.
            ("", None),
            ("x-webkit-deflate-frame", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits=+9", None),
            ("permessage-deflate; client_max_window_bits=0", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            ("permessage-deflate; unknown", None),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
                None,
            ),
            // Offers are tried in order: the first the server can honour wins.
            (
                "permessage-deflate; server_max_window_bits=99, permessage-deflate; server_max_window_bits=11",
                deflate(Some(11)),
            ),
            (
                "foo; x=\"a, permessage-deflate\", permessage-deflate; bogus, permessage-deflate",
                deflate(None),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(offer(header), *expected, "{header:?}");
        }
        // Several header lines are one list.
        assert_eq!(
            negotiate(["foo", "permessage-deflate; server_max_window_bits=9"]),
            deflate(Some(9))
        );
    }

    #[test]
    fn the_answer_turns_context_takeover_off_and_echoes_the_window() {
        assert_eq!(
            deflate(None).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            deflate(Some(10)).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert_eq!(deflate(None).unwrap().window_bits(), Some(15));
        assert_eq!(deflate(Some(9)).unwrap().window_bits(), Some(9));
        assert_eq!(
            deflate(Some(8)).unwrap().window_bits(),
            None,
            "zlib cannot keep to 256 bytes: the server sends uncompressed"
        );
    }

    fn round_trip(payload: &[u8], bits: u8) -> Vec<u8> {
        let mut compressed = Vec::new();
        compress(payload, bits, &mut compressed);
        assert!(!compressed.ends_with(&TRAILER) || payload.is_empty());
        with_inflated(&compressed, payload.len(), <[u8]>::to_vec).unwrap()
    }

    #[test]
    fn messages_round_trip_with_every_window() {
        let json =
            br#"{"type":"message","lobby":"lobby-1","from":"alice","data":{"text":"hello"}}"#
                .repeat(40);
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for bits in 9..=15 {
            for payload in [&b""[..], b"a", &json, &noise] {
                assert_eq!(round_trip(payload, bits), payload, "{bits} bits");
            }
        }
        let mut compressed = Vec::new();
        compress(&json, 15, &mut compressed);
        assert!(compressed.len() * 10 < json.len(), "JSON compresses");
    }

    #[test]
    fn a_window_smaller_than_the_data_is_kept_to() {
        // Matches 1000 bytes back: a 9-bit (512-byte) window must not use them, and an inflater
        // limited to 512 bytes decodes the result.
        let block: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let payload = [block.clone(), block].concat();
        let mut compressed = Vec::new();
        compress(&payload, 9, &mut compressed);
        compressed.extend_from_slice(&TRAILER);
        let mut small = Decompress::new_with_window_bits(false, 9);
        let mut out = Vec::with_capacity(payload.len() + 16);
        small
            .decompress_vec(&compressed, &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, payload);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let bomb = vec![0u8; 10 << 20];
        let mut compressed = Vec::new();
        compress(&bomb, 15, &mut compressed);
        assert!(compressed.len() < 20_000);
        let mut seen = 0;
        let result = with_inflated(&compressed, 64 * 1024, |out| seen = out.len());
        assert_eq!(result, Err(FrameError::TooBig));
        assert_eq!(seen, 0, "nothing is handed on");
        INFLATED.with(|b| {
            assert!(
                b.borrow().capacity() <= 64 * 1024,
                "at most the limit was produced"
            )
        });
        // Exactly at the limit is fine, one byte over is not.
        let exact = vec![b'x'; 5000];
        let mut compressed = Vec::new();
        compress(&exact, 15, &mut compressed);
        assert_eq!(with_inflated(&compressed, 5000, |o| o.len()), Ok(5000));
        assert_eq!(
            with_inflated(&compressed, 4999, |o| o.len()),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        // A block type of 3 is reserved.
        assert_eq!(
            with_inflated(&[0xff, 0xff, 0xff], 1000, |_| ()),
            Err(FrameError::Protocol("invalid compressed data"))
        );
        // A final block followed by more: the rest is ignored, as zlib does.
        let mut compressed = Vec::with_capacity(64);
        let mut c = Compress::new(Compression::new(LEVEL), false);
        c.compress_vec(b"hello", &mut compressed, FlushCompress::Finish)
            .unwrap();
        compressed.reserve(64);
        c.compress_vec(b"", &mut compressed, FlushCompress::Finish)
            .unwrap();
        assert_eq!(
            with_inflated(&compressed, 1000, <[u8]>::to_vec),
            Ok(b"hello".to_vec())
        );
    }
}

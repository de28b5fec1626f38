//! RFC 6455 frames, server side: decoding masked client frames in place, encoding unmasked
//! server frames.
//!
//! The decoder holds no buffer between frames: complete frames are unmasked and handed out
//! straight from the caller's read buffer. It keeps bytes only while a frame straddles two
//! reads, or while a fragmented message is being assembled. With permessage-deflate
//! negotiated ([`Decoder::with_deflate`]), a message whose first frame has RSV1 set is
//! inflated (in a per-thread buffer, [`deflate::with_inflated`]) before it is handed out.

use std::ops::ControlFlow;

use super::deflate;

/// An opcode of a frame the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A UTF-8 text message.
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// The close handshake.
    Close = 8,
    /// A ping (the peer answers with a pong carrying the same payload).
    Ping = 9,
    /// A pong.
    Pong = 10,
}

/// A complete inbound message or control frame, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message, UTF-8 checked.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping: answer with a pong carrying this payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close: its status code (if it sent one) and reason.
    Close(Option<u16>, &'a str),
}

/// A violation of RFC 6455 by the peer; each maps to the close code the server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// 1002: the frame breaks the protocol (the text says how).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// 1007: a text message (or close reason) that is not UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// 1009: a message larger than the decoder's limit.
    #[error("message too big")]
    TooBig,
}

/// Decodes masked client frames into [`Frame`]s, assembling fragmented messages.
#[derive(Debug)]
pub struct Decoder {
    /// The limit (a `u32`, so that the flag beside it costs a connection nothing).
    max_message: u32,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
    /// The start of a frame whose end has not arrived yet.
    partial: Vec<u8>,
    /// A fragmented message being assembled.
    message: Option<Fragmented>,
}

#[derive(Debug)]
struct Fragmented {
    text: bool,
    /// The payload is compressed (RSV1 on the first frame): inflated once complete.
    compressed: bool,
    payload: Vec<u8>,
    /// How much of a text payload is known to be valid UTF-8 (a code point may be split
    /// across fragments).
    checked: usize,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    /// RSV1: a compressed message (permessage-deflate).
    rsv1: bool,
    opcode: u8,
    len: usize,
    mask: [u8; 4],
    /// Bytes of header before the payload.
    size: usize,
}

impl Decoder {
    /// A decoder refusing messages (and frames) larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            deflate: false,
            partial: Vec::new(),
            message: None,
        }
    }

    /// Accepts compressed messages (RSV1 on a message's first frame) when `deflate` is on:
    /// permessage-deflate was negotiated. `max_message` then bounds the inflated size too.
    pub fn with_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }

    /// The largest message (and frame), inflated or not.
    fn limit(&self) -> usize {
        self.max_message as usize
    }

    /// Whether the decoder holds no bytes: no split frame, no fragmented message.
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.message.is_none()
    }

    /// Decodes the bytes just read (`input`, unmasked in place), calling `on_frame` for every
    /// complete message and control frame, in order. Stops at the first `Break`, returning
    /// its value; the bytes after it are dropped (the connection is ending).
    pub fn feed<B>(
        &mut self,
        input: &mut [u8],
        mut on_frame: impl FnMut(Frame<'_>) -> ControlFlow<B>,
    ) -> Result<Option<B>, FrameError> {
        if self.partial.is_empty() {
            let (used, flow) = self.decode(input, &mut on_frame)?;
            if let ControlFlow::Break(b) = flow {
                return Ok(Some(b));
            }
            self.keep(&input[used..]);
            return Ok(None);
        }
        let mut buffer = std::mem::take(&mut self.partial);
        buffer.extend_from_slice(input);
        let (used, flow) = self.decode(&mut buffer, &mut on_frame)?;
        if let ControlFlow::Break(b) = flow {
            return Ok(Some(b));
        }
        if used < buffer.len() {
            buffer.drain(..used);
            self.partial = buffer;
        }
        Ok(None)
    }

    /// Keeps the start of a split frame, reserving room for the whole of it.
    fn keep(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            return;
        }
        let expected = parse_header(rest)
            .ok()
            .flatten()
            .map_or(rest.len(), |h| h.size + h.len);
        self.partial = Vec::with_capacity(expected.max(rest.len()));
        self.partial.extend_from_slice(rest);
    }

    /// Decodes the complete frames at the start of `buf`; returns how many bytes they took.
    fn decode<B>(
        &mut self,
        buf: &mut [u8],
        on_frame: &mut impl FnMut(Frame<'_>) -> ControlFlow<B>,
    ) -> Result<(usize, ControlFlow<B>), FrameError> {
        let mut pos = 0;
        while let Some(header) = parse_header(&buf[pos..])? {
            self.check(&header)?;
            let end = pos + header.size + header.len;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[pos + header.size..end];
            unmask(payload, header.mask);
            pos = end;
            if let ControlFlow::Break(b) = self.frame(&header, payload, on_frame)? {
                return Ok((pos, ControlFlow::Break(b)));
            }
        }
        Ok((pos, ControlFlow::Continue(())))
    }

    /// What can be refused from the header alone, before waiting for the payload.
    fn check(&self, header: &Header) -> Result<(), FrameError> {
        let control = header.opcode >= 8;
        if header.rsv1 && !self.deflate {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if header.rsv1 && (control || header.opcode == 0) {
            return Err(FrameError::Protocol(
                "RSV1 on a control or continuation frame",
            ));
        }
        if control && (!header.fin || header.len > 125) {
            return Err(FrameError::Protocol(
                "fragmented or oversized control frame",
            ));
        }
        let before = match (&self.message, header.opcode) {
            (Some(message), 0) => message.payload.len(),
            _ => 0,
        };
        if before.saturating_add(header.len) > self.limit() {
            return Err(FrameError::TooBig);
        }
        Ok(())
    }

    fn frame<B>(
        &mut self,
        header: &Header,
        payload: &[u8],
        on_frame: &mut impl FnMut(Frame<'_>) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, FrameError> {
        let frame = match (header.opcode, header.fin) {
            (8, _) => close_frame(payload)?,
            (9, _) => Frame::Ping(payload),
            (10, _) => Frame::Pong(payload),
            (1 | 2, _) if self.message.is_some() => {
                return Err(FrameError::Protocol("new message inside a fragmented one"));
            }
            (opcode @ (1 | 2), true) if header.rsv1 => {
                return deflate::with_inflated(payload, self.limit(), |data| {
                    Ok(on_frame(data_frame(opcode == 1, data)?))
                })?;
            }
            (1, true) => {
                Frame::Text(std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?)
            }
            (2, true) => Frame::Binary(payload),
            (opcode @ (1 | 2), false) => {
                let mut message = Fragmented {
                    text: opcode == 1,
                    compressed: header.rsv1,
                    payload: payload.to_vec(),
                    checked: 0,
                };
                message.check_utf8(false)?;
                self.message = Some(message);
                return Ok(ControlFlow::Continue(()));
            }
            (0, fin) => {
                let Some(message) = self.message.as_mut() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                message.payload.extend_from_slice(payload);
                message.check_utf8(fin)?;
                if !fin {
                    return Ok(ControlFlow::Continue(()));
                }
                let Some(message) = self.message.take() else {
                    return Ok(ControlFlow::Continue(()));
                };
                if message.compressed {
                    return deflate::with_inflated(&message.payload, self.limit(), |data| {
                        Ok(on_frame(data_frame(message.text, data)?))
                    })?;
                }
                return Ok(on_frame(message.frame()?));
            }
            _ => return Err(FrameError::Protocol("unknown opcode")),
        };
        Ok(on_frame(frame))
    }
}

impl Fragmented {
    /// Checks the UTF-8 of a text message as far as it goes; a code point split at the end is
    /// an error only once the message is complete (`fin`).
    fn check_utf8(&mut self, fin: bool) -> Result<(), FrameError> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.payload[self.checked..]) {
            Ok(_) => self.checked = self.payload.len(),
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }

    fn frame(&self) -> Result<Frame<'_>, FrameError> {
        data_frame(self.text, &self.payload)
    }
}

/// A complete text (UTF-8 checked) or binary message.
fn data_frame(text: bool, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    Ok(if text {
        Frame::Text(std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?)
    } else {
        Frame::Binary(payload)
    })
}

/// Parses a header if `buf` holds all of it; refuses what no valid client frame has.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    // RSV2 and RSV3: no extension uses them. RSV1 is permessage-deflate's (see `check`).
    if b0 & 0x30 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("unmasked client frame"));
    }
    let (len, at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(b);
                (u64::from_be_bytes(bytes), 10)
            }
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        // Anything past usize is past every limit.
        len: usize::try_from(len).unwrap_or(usize::MAX),
        mask: [mask[0], mask[1], mask[2], mask[3]],
        size: at + 4,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

fn close_frame(payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    match payload {
        [] => Ok(Frame::Close(None, "")),
        [_] => Err(FrameError::Protocol("close frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Frame::Close(Some(code), reason))
        }
    }
}

/// Close codes a peer may send (RFC 6455 7.4 and the IANA registry): not the reserved ones,
/// nor those that only describe a close without being sent (1005, 1006, 1015).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends one unmasked, unfragmented server frame to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    encode_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends the header of an unmasked, unfragmented server frame whose payload is `len`
/// bytes (the payload is written after it, from wherever it is).
pub fn encode_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    header(out, 0x80 | opcode as u8, len);
}

/// Appends one unmasked, unfragmented server frame carrying a compressed message: RSV1 set,
/// `deflated` as [`deflate::compress`] gives it (permessage-deflate, negotiated).
pub fn encode_deflated(out: &mut Vec<u8>, opcode: OpCode, deflated: &[u8]) {
    header(out, 0xc0 | opcode as u8, deflated.len());
    out.extend_from_slice(deflated);
}

fn header(out: &mut Vec<u8>, first: u8, len: usize) {
    out.push(first);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a close frame: the code and as much of `reason` as fits a control frame.
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let Some(code) = code else {
        return encode(out, OpCode::Close, &[]);
    };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; 125];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(out, OpCode::Close, &payload[..2 + end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn owned(frame: Frame<'_>) -> Owned {
        match frame {
            Frame::Text(t) => Owned::Text(t.into()),
            Frame::Binary(b) => Owned::Binary(b.into()),
            Frame::Ping(b) => Owned::Ping(b.into()),
            Frame::Pong(b) => Owned::Pong(b.into()),
            Frame::Close(code, reason) => Owned::Close(code, reason.into()),
        }
    }

    /// Feeds `bytes` in chunks of `chunk` bytes and collects what comes out.
    fn decode_in(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<Owned>, FrameError> {
        decode_with(Decoder::new(max), bytes, chunk)
    }

    /// Feeds `bytes` to `decoder` in chunks of `chunk` bytes and collects what comes out.
    fn decode_with(
        mut decoder: Decoder,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<Vec<Owned>, FrameError> {
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut piece = piece.to_vec();
            decoder.feed(&mut piece, |f| {
                frames.push(owned(f));
                ControlFlow::<()>::Continue(())
            })?;
        }
        assert!(
            decoder.is_idle(),
            "nothing kept once every frame is complete"
        );
        Ok(frames)
    }

    #[test]
    fn frames_decode_whole_and_split_at_every_byte() {
        let long = "x".repeat(70_000);
        let mut bytes = client_frame(true, 1, b"hello");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 1, long.as_bytes()));
        bytes.extend(client_frame(true, 2, &[1, 2, 3]));
        bytes.extend(client_frame(true, 10, b""));
        bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'o', b'k']));
        let expected = vec![
            Owned::Text("hello".into()),
            Owned::Ping(b"p".to_vec()),
            Owned::Text(long.clone()),
            Owned::Binary(vec![1, 2, 3]),
            Owned::Pong(vec![]),
            Owned::Close(Some(1000), "ok".into()),
        ];
        for chunk in [bytes.len(), 4096, 100, 7, 1] {
            assert_eq!(
                decode_in(&bytes, chunk, 1 << 20).unwrap(),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn fragments_assemble_with_control_frames_between() {
        let text = "héllo wörld".as_bytes();
        // Split inside the two-byte 'é' so the UTF-8 check must wait for the next fragment.
        let mut bytes = client_frame(false, 1, &text[..2]);
        bytes.extend(client_frame(true, 9, b"mid"));
        bytes.extend(client_frame(false, 0, &text[2..8]));
        bytes.extend(client_frame(true, 0, &text[8..]));
        let frames = decode_in(&bytes, 3, 1 << 20).unwrap();
        assert_eq!(
            frames,
            vec![
                Owned::Ping(b"mid".to_vec()),
                Owned::Text("héllo wörld".into())
            ]
        );
    }

    #[test]
    fn violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                vec![0x81 | 0x40, 0x80, 0, 0, 0, 0],
                FrameError::Protocol("reserved bits set"),
            ),
            (
                vec![0x81, 0x00],
                FrameError::Protocol("unmasked client frame"),
            ),
            (
                client_frame(true, 3, b""),
                FrameError::Protocol("unknown opcode"),
            ),
            (
                client_frame(false, 9, b""),
                FrameError::Protocol("fragmented or oversized control frame"),
            ),
            (
                client_frame(true, 9, &[0; 126]),
                FrameError::Protocol("fragmented or oversized control frame"),
            ),
            (
                client_frame(true, 0, b"x"),
                FrameError::Protocol("continuation without a message"),
            ),
            (
                client_frame(true, 8, &[3]),
                FrameError::Protocol("close frame with a one-byte payload"),
            ),
            (
                client_frame(true, 8, &[0x03, 0xed]),
                FrameError::Protocol("invalid close code"),
            ),
            (
                client_frame(true, 8, &[0x03, 0xe8, 0xff]),
                FrameError::InvalidUtf8,
            ),
            (
                client_frame(true, 1, &[0xce, 0xba, 0xff]),
                FrameError::InvalidUtf8,
            ),
            (client_frame(true, 1, &[b'a'; 101]), FrameError::TooBig),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode_in(&bytes, bytes.len(), 100), Err(error));
        }
        let mut nested = client_frame(false, 1, b"a");
        nested.extend(client_frame(true, 1, b"b"));
        assert_eq!(
            decode_in(&nested, nested.len(), 100),
            Err(FrameError::Protocol("new message inside a fragmented one"))
        );
        // Invalid UTF-8 fails at the fragment that carries it, before the message ends.
        let mut bad = client_frame(false, 1, b"ok");
        bad.extend(client_frame(false, 0, &[0xff]));
        assert_eq!(
            decode_in(&bad, bad.len(), 100),
            Err(FrameError::InvalidUtf8)
        );
        // Fragments add up against the limit.
        let mut big = client_frame(false, 1, &[b'a'; 60]);
        big.extend(client_frame(true, 0, &[b'a'; 60]));
        assert_eq!(decode_in(&big, big.len(), 100), Err(FrameError::TooBig));
    }

    /// Decodes with permessage-deflate negotiated.
    fn decode_deflate(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<Owned>, FrameError> {
        decode_with(Decoder::new(max).with_deflate(true), bytes, chunk)
    }

    fn deflated(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        deflate::compress(payload, 15, &mut out);
        out
    }

    const RSV1: u8 = 0x40;

    #[test]
    fn compressed_messages_inflate_whole_split_and_fragmented() {
        let text = "héllo wörld, ".repeat(200);
        let z = deflated(text.as_bytes());
        let mut bytes = client_frame(true, RSV1 | 1, &z);
        bytes.extend(client_frame(true, 9, b"p"));
        // Fragmented: RSV1 on the first frame only, a ping between the fragments.
        bytes.extend(client_frame(false, RSV1 | 2, &z[..10]));
        bytes.extend(client_frame(true, 9, b"q"));
        bytes.extend(client_frame(false, 0, &z[10..20]));
        bytes.extend(client_frame(true, 0, &z[20..]));
        // Plain messages still pass on a connection that negotiated the extension.
        bytes.extend(client_frame(true, 1, b"plain"));
        let expected = vec![
            Owned::Text(text.clone()),
            Owned::Ping(b"p".to_vec()),
            Owned::Ping(b"q".to_vec()),
            Owned::Binary(text.clone().into_bytes()),
            Owned::Text("plain".into()),
        ];
        for chunk in [bytes.len(), 100, 7, 1] {
            assert_eq!(
                decode_deflate(&bytes, chunk, 1 << 20).unwrap(),
                expected,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn compression_violations_get_their_close_codes() {
        let z = deflated(b"hello");
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                client_frame(true, RSV1 | 9, b""),
                FrameError::Protocol("RSV1 on a control or continuation frame"),
            ),
            (
                [
                    client_frame(false, RSV1 | 1, &z),
                    client_frame(true, RSV1, b""),
                ]
                .concat(),
                FrameError::Protocol("RSV1 on a control or continuation frame"),
            ),
            (
                client_frame(true, 0x20 | 1, b""),
                FrameError::Protocol("reserved bits set"),
            ),
            (
                client_frame(true, RSV1 | 1, &deflated(&[0xff, 0xfe])),
                FrameError::InvalidUtf8,
            ),
            (
                client_frame(true, RSV1 | 1, &[0xff; 8]),
                FrameError::Protocol("invalid compressed data"),
            ),
            // The limit applies to the inflated message, fragmented or not.
            (
                client_frame(true, RSV1 | 1, &deflated(&[b'a'; 101])),
                FrameError::TooBig,
            ),
            (
                [
                    client_frame(false, RSV1 | 2, &deflated(&[7; 5000])[..3]),
                    client_frame(true, 0, &deflated(&[7; 5000])[3..]),
                ]
                .concat(),
                FrameError::TooBig,
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode_deflate(&bytes, bytes.len(), 100), Err(error));
        }
        // Without the extension, RSV1 is a protocol error.
        let bytes = client_frame(true, RSV1 | 1, &z);
        assert_eq!(
            decode_in(&bytes, bytes.len(), 100),
            Err(FrameError::Protocol("reserved bits set"))
        );
    }

    #[test]
    fn a_compressed_frame_encodes_with_rsv1() {
        let mut out = Vec::new();
        encode_deflated(&mut out, OpCode::Text, &[1, 2, 3]);
        assert_eq!(out, [0xc1, 3, 1, 2, 3]);
    }

    #[test]
    fn a_too_big_frame_is_refused_from_its_header() {
        // Only the header has arrived: the limit is known to be broken already.
        let header = &client_frame(true, 1, &[b'a'; 200])[..8];
        assert_eq!(
            decode_in(header, header.len(), 100),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn break_stops_decoding() {
        let mut bytes = client_frame(true, 1, b"one");
        bytes.extend(client_frame(true, 1, b"two"));
        let mut decoder = Decoder::new(100);
        let mut seen = 0;
        let stopped = decoder.feed(&mut bytes, |_| {
            seen += 1;
            ControlFlow::Break("stop")
        });
        assert_eq!((stopped, seen), (Ok(Some("stop")), 1));
    }

    #[test]
    fn encoding_uses_the_shortest_length() {
        for (len, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(&mut out, OpCode::Text, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        encode_close(&mut out, Some(4008), &"é".repeat(100));
        assert_eq!(
            out.len(),
            2 + 2 + 122,
            "the reason is cut at a char boundary within 123 bytes"
        );
        assert_eq!(&out[2..4], &4008u16.to_be_bytes());
    }
}

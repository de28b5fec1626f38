//! A gzip stream its reader can decode chunk by chunk, for Server-Sent Events.
//!
//! A gzip encoder that keeps its window holds output back until its buffer fills, so a
//! browser would see an event only when later ones pushed it out. Here every chunk is
//! deflated on its own (a fresh window, ended with a sync flush, as permessage-deflate does
//! with each message), so each one decodes as soon as it arrives, and the stream keeps only a
//! CRC and a length between chunks: no compressor per connection.

use bytes::Bytes;
use flate2::Crc;

use crate::ws::deflate;

/// The gzip member header: deflate, no name or time, unknown OS (RFC 1952).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// A final empty block (fixed Huffman codes, only the end-of-block code), byte aligned after
/// a sync flush.
const LAST_BLOCK: [u8; 2] = [0x03, 0x00];

/// The state of one gzip stream between chunks.
#[derive(Debug)]
pub(crate) struct GzipChunks {
    crc: Crc,
    started: bool,
}

impl GzipChunks {
    pub(crate) fn new() -> Self {
        Self {
            crc: Crc::new(),
            started: false,
        }
    }

    /// The bytes that carry `data`, decodable on their own once the ones before arrived.
    pub(crate) fn chunk(&mut self, data: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(data.len() / 2 + HEADER.len() + 16);
        self.start(&mut out);
        self.crc.update(data);
        deflate::compress(data, deflate::MAX_WINDOW_BITS, &mut out);
        out.extend_from_slice(&deflate::TRAILER);
        Bytes::from(out)
    }

    /// The end of the stream: the last block and the trailer (CRC-32 and length, RFC 1952).
    pub(crate) fn finish(&mut self) -> Bytes {
        let mut out = Vec::with_capacity(HEADER.len() + LAST_BLOCK.len() + 8);
        self.start(&mut out);
        out.extend_from_slice(&LAST_BLOCK);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Bytes::from(out)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(&HEADER);
            self.started = true;
        }
    }
}

/// Whether an `Accept-Encoding` header's values accept gzip (`gzip` or `*`, unless with
/// `q=0`).
pub(crate) fn accepted<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in values.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(!refused);
        } else if name == "*" {
            any = Some(!refused);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn every_chunk_decodes_as_soon_as_it_arrives() {
        let events = [
            "event: welcome\ndata: {\"type\":\"welcome\"}\n\n".to_owned(),
            format!("event: message\ndata: {}\n\n", "x".repeat(3000)),
            ": ping\n\n".to_owned(),
            String::new(),
            "event: close\ndata: {\"code\":1000}\n\n".to_owned(),
        ];
        let mut gz = GzipChunks::new();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut stream = Vec::new();
        let mut expected = String::new();
        for event in &events {
            let chunk = gz.chunk(event.as_bytes());
            stream.extend_from_slice(&chunk);
            decoder.write_all(&chunk).unwrap();
            decoder.flush().unwrap();
            expected.push_str(event);
            assert_eq!(
                decoder.get_ref().as_slice(),
                expected.as_bytes(),
                "decoded at once"
            );
        }
        let end = gz.finish();
        stream.extend_from_slice(&end);
        decoder.write_all(&end).unwrap();
        assert_eq!(decoder.finish().unwrap(), expected.as_bytes());
        // A strict reader checks the CRC and the length.
        let mut whole = String::new();
        flate2::read::GzDecoder::new(stream.as_slice())
            .read_to_string(&mut whole)
            .unwrap();
        assert_eq!(whole, expected);
        assert!(stream.len() < expected.len() / 2, "it compresses");
    }

    #[test]
    fn an_empty_stream_is_a_valid_gzip_stream() {
        let end = GzipChunks::new().finish();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&end[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn accept_encoding() {
        assert!(accepted(["gzip, deflate, br"]));
        assert!(accepted(["br;q=1.0, GZIP;q=0.5"]));
        assert!(accepted(["deflate", "gzip"]));
        assert!(accepted(["*"]));
        assert!(!accepted(["gzip;q=0"]));
        assert!(!accepted(["gzip; q=0.000, *"]), "gzip named and refused");
        assert!(!accepted(["br, deflate"]));
        assert!(!accepted(["identity"]));
        assert!(!accepted([""]));
        assert!(!accepted(["*;q=0"]));
    }
}

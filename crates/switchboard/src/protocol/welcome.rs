//! `welcome`, written by hand: every connect builds one, and serde_json spent more on it
//! (escaping each key, growing its buffer) than the rest of the registration. The text is
//! serde_json's for [`ServerFrame::Welcome`](super::ServerFrame::Welcome) and
//! [`ServerFrame::WelcomeV2`](super::ServerFrame::WelcomeV2), byte for byte (the tests
//! compare them), in a buffer of exactly its size. A v1 `welcome` is written before the
//! registry's lock is taken, up to the lobby's state, which is added under it.

use crate::ids::{ConnectionId, LobbyCode, UserId, push_decimal};

/// Where JSON goes: a string, or a count of its bytes (to size the string exactly first).
trait Out {
    /// Text written as it is (keys, punctuation).
    fn raw(&mut self, text: &str);
    /// A JSON string, quoted and escaped as serde_json escapes it.
    fn string(&mut self, text: &str);
    /// An unsigned integer.
    fn number(&mut self, n: u64);
}

/// The escape of a byte in a JSON string (serde_json's choices): `None` for a byte written as
/// it is. Every other control character is `\u00XX`, in lower-case hex.
fn short_escape(byte: u8) -> Option<&'static str> {
    Some(match byte {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        0x08 => "\\b",
        0x09 => "\\t",
        0x0a => "\\n",
        0x0c => "\\f",
        0x0d => "\\r",
        _ => return None,
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether a byte is escaped in a JSON string.
fn escaped(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// How many bytes of `text` are escaped (a loop the compiler vectorizes: ids and codes have
/// none, and are then copied whole).
fn escapes(text: &str) -> usize {
    text.bytes().filter(|&byte| escaped(byte)).count()
}

impl Out for String {
    fn raw(&mut self, text: &str) {
        self.push_str(text);
    }

    fn string(&mut self, text: &str) {
        self.push('"');
        if escapes(text) == 0 {
            self.push_str(text);
            self.push('"');
            return;
        }
        let mut plain = 0;
        for (i, &byte) in text.as_bytes().iter().enumerate() {
            if !escaped(byte) {
                continue;
            }
            // `byte` is ASCII: `i` is a character boundary.
            self.push_str(&text[plain..i]);
            plain = i + 1;
            match short_escape(byte) {
                Some(escape) => self.push_str(escape),
                None => {
                    self.push_str("\\u00");
                    self.push(char::from(HEX[usize::from(byte >> 4)]));
                    self.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
            }
        }
        self.push_str(&text[plain..]);
        self.push('"');
    }

    fn number(&mut self, n: u64) {
        push_decimal(self, n);
    }
}

/// Counts what a [`String`] would be written.
#[derive(Default)]
struct Len(usize);

impl Out for Len {
    fn raw(&mut self, text: &str) {
        self.0 += text.len();
    }

    fn string(&mut self, text: &str) {
        self.0 += 2;
        if escapes(text) == 0 {
            self.0 += text.len();
            return;
        }
        for &byte in text.as_bytes() {
            self.0 += match byte {
                0x20.. if byte != b'"' && byte != b'\\' => 1,
                _ if short_escape(byte).is_some() => 2,
                _ => 6,
            };
        }
    }

    fn number(&mut self, n: u64) {
        self.0 += n.checked_ilog10().map_or(1, |log| log as usize + 1);
    }
}

/// Writes `write`'s JSON into a string of its size and `room` bytes more.
fn exact(room: usize, write: impl Fn(&mut dyn Out)) -> String {
    let mut len = Len::default();
    write(&mut len);
    let mut text = String::with_capacity(len.0 + room);
    write(&mut text);
    debug_assert_eq!(text.len(), len.0);
    text
}

/// Room for a v1 `welcome`'s lobby state: `false`, the longest offset, a 16-character epoch
/// (the server's own; a longer one from a cluster makes the buffer grow).
const V1_TAIL: usize = r#"false,"offset":,"epoch":""}"#.len() + 20 + 16;

/// What every `welcome` starts with, up to its protocol-specific fields.
fn common(out: &mut dyn Out, connection_id: &ConnectionId, user_id: &UserId) {
    out.raw(r#"{"type":"welcome","connection_id":"#);
    out.string(connection_id.as_str());
    out.raw(r#","user_id":"#);
    out.string(user_id.as_str());
}

/// The timing fields, in both versions' order.
fn timing(out: &mut dyn Out, ping_interval_ms: u64, server_time: u64, protocol: u32) {
    out.raw(r#","ping_interval_ms":"#);
    out.number(ping_interval_ms);
    out.raw(r#","server_time":"#);
    out.number(server_time);
    out.raw(r#","protocol":"#);
    out.number(u64::from(protocol));
}

/// A v1 `welcome` up to the lobby's state (`presence_events`, `offset`, `epoch`), which the
/// registry adds under its lock ([`finish`](Self::finish)).
#[derive(Debug)]
pub(crate) struct WelcomeV1 {
    head: String,
}

impl WelcomeV1 {
    pub(crate) fn new(
        connection_id: &ConnectionId,
        user_id: &UserId,
        lobby: &LobbyCode,
        ping_interval_ms: u64,
        server_time: u64,
        protocol: u32,
    ) -> Self {
        let head = exact(V1_TAIL, |out| {
            common(out, connection_id, user_id);
            out.raw(r#","lobby":"#);
            out.string(lobby.as_str());
            timing(out, ping_interval_ms, server_time, protocol);
            out.raw(r#","presence_events":"#);
        });
        Self { head }
    }

    /// The whole frame (written into the room left for it: no allocation).
    pub(crate) fn finish(self, presence_events: bool, offset: u64, epoch: &str) -> String {
        let mut text = self.head;
        text.raw(if presence_events { "true" } else { "false" });
        text.raw(r#","offset":"#);
        text.number(offset);
        text.raw(r#","epoch":"#);
        text.string(epoch);
        text.raw("}");
        text
    }
}

/// A v2 `welcome` (no lobby fields: each lobby gets its own `joined`).
pub(crate) fn welcome_v2(
    connection_id: &ConnectionId,
    user_id: &UserId,
    ping_interval_ms: u64,
    server_time: u64,
    protocol: u32,
    max_lobbies: usize,
    token_expires_at: Option<u64>,
) -> String {
    exact(0, |out| {
        common(out, connection_id, user_id);
        timing(out, ping_interval_ms, server_time, protocol);
        out.raw(r#","max_lobbies":"#);
        out.number(max_lobbies as u64);
        if let Some(at) = token_expires_at {
            out.raw(r#","token_expires_at":"#);
            out.number(at);
        }
        out.raw("}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PROTOCOL_V2, PROTOCOL_VERSION, ServerFrame};

    /// Strings that need every kind of escape, and none.
    const TRICKY: &[&str] = &[
        "",
        "plain",
        "quote\"d",
        "back\\slash",
        "\\\"",
        "tab\there",
        "\u{8}\u{c}\n\r\t",
        "\u{0}\u{1}\u{1f}\u{7f}",
        "ünïcödé ✓ 𝄞",
        "\"\u{0}é\\",
        "</script>",
        "a\u{2028}b\u{2029}c",
    ];

    fn json_string(text: &str) -> String {
        let mut out = String::new();
        out.string(text);
        out
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for text in TRICKY {
            let expected = serde_json::to_string(text).unwrap();
            assert_eq!(json_string(text), expected, "{text:?}");
            let mut len = Len::default();
            len.string(text);
            assert_eq!(len.0, expected.len(), "{text:?}");
        }
        // Every single byte that can start or be a character.
        for c in (0..=0x7f_u8).map(char::from).chain(['é', '€', '𝄞']) {
            let text = format!("a{c}b");
            assert_eq!(json_string(&text), serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn numbers_are_written_in_full() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = String::new();
            out.number(n);
            assert_eq!(out, n.to_string());
            let mut len = Len::default();
            len.number(n);
            assert_eq!(len.0, out.len());
        }
    }

    fn user(text: &str) -> UserId {
        UserId::parse(text).unwrap()
    }

    #[test]
    fn v1_welcome_is_serde_jsons() {
        let users = [
            "u1",
            "quote\"d",
            "back\\slash",
            "ünïcödé ✓",
            "</script>\u{2028}",
        ];
        let lobby = LobbyCode::parse("lobby_1.a:b-c").unwrap();
        for (i, name) in users.iter().enumerate() {
            let id = ConnectionId::new("node-1", i as u64);
            let user_id = user(name);
            for (presence_events, offset, epoch) in [
                (true, 0, "0123456789abcdef"),
                (false, u64::MAX, ""),
                (true, 42, "quo\"te\\\n"),
            ] {
                let expected = ServerFrame::Welcome {
                    connection_id: &id,
                    user_id: &user_id,
                    lobby: &lobby,
                    ping_interval_ms: 20_000,
                    server_time: 1_700_000_000_123,
                    protocol: PROTOCOL_VERSION,
                    presence_events,
                    offset,
                    epoch,
                }
                .encode();
                let text = WelcomeV1::new(
                    &id,
                    &user_id,
                    &lobby,
                    20_000,
                    1_700_000_000_123,
                    PROTOCOL_VERSION,
                )
                .finish(presence_events, offset, epoch);
                assert_eq!(text, expected);
                if epoch.len() <= 16 {
                    assert!(text.capacity() - text.len() < V1_TAIL, "room, not more");
                }
            }
        }
    }

    #[test]
    fn v2_welcome_is_serde_jsons() {
        for (name, expires) in [("u1", None), ("quote\"d ✓", Some(1_700_000_000_000))] {
            let id = ConnectionId::new("node-\"1", 7);
            let user_id = user(name);
            let expected = ServerFrame::WelcomeV2 {
                connection_id: &id,
                user_id: &user_id,
                ping_interval_ms: 0,
                server_time: 5,
                protocol: PROTOCOL_V2,
                max_lobbies: 16,
                token_expires_at: expires,
            }
            .encode();
            let text = welcome_v2(&id, &user_id, 0, 5, PROTOCOL_V2, 16, expires);
            assert_eq!(text, expected);
            assert_eq!(text.capacity(), text.len(), "sized exactly");
        }
    }
}

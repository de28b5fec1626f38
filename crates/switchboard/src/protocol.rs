//! Wire protocols v1 and v2: parsing client frames and encoding server frames. v2 (one
//! connection in many lobbies) adds frames; v1 clients see exactly what they always saw.
//!
//! Parsing borrows from the frame text: `data` is kept as raw JSON and copied into outbound
//! frames without being re-serialized. `docs/protocol.md` describes the frames.

use axum::extract::ws::Message;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ConnectionId, LobbyCode, UserId};

mod welcome;
pub(crate) use welcome::{WelcomeV1, welcome_v2};

/// The protocol version a v1 `welcome` announces.
pub const PROTOCOL_VERSION: u32 = 1;

/// The protocol version a v2 `welcome` announces.
pub const PROTOCOL_V2: u32 = 2;

/// The longest `method` of a v2 `rpc`, in bytes: a method names an operation, and the name
/// travels to the backend with every call.
pub const MAX_RPC_METHOD_BYTES: usize = 128;

/// Error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// Not an object, or no string `type`, or a field of the wrong type.
    InvalidMessage,
    /// A `type` nobody handles.
    UnknownType,
    /// A required field is missing.
    MissingField,
    /// Too many messages.
    RateLimited,
    /// A client permission is off.
    NotAllowed,
    /// Cluster mode: the node's outbound queue to the other nodes is full; the frame was sent
    /// nowhere. Retry later.
    Overloaded,
    /// v2 `join`: the lobby has `limits.max_per_lobby` connections.
    LobbyFull,
    /// v2 `join`: the connection is in `limits.max_lobbies_per_connection` lobbies.
    TooManyLobbies,
    /// v2: a `lobby` that is not a valid lobby code.
    InvalidLobby,
    /// v2 `rpc`: the backend failed the call or did not answer it in time.
    RpcFailed,
}

/// A refusal of one client frame: sent as an `error` frame, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl ClientError {
    /// A refusal with a code and an explanation.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A client frame, parsed. Borrowed from the frame's text.
#[derive(Debug)]
pub(crate) enum ClientFrame<'a> {
    HealthPong {
        timestamp: Option<u64>,
    },
    Broadcast {
        /// v2: the lobby to broadcast in (v1: always `None`, the connection's one lobby).
        lobby: Option<LobbyCode>,
        data: &'a RawValue,
        exclude_self: bool,
    },
    Direct {
        to: UserId,
        data: &'a RawValue,
    },
    Presence {
        /// v2: the lobby asked about (v1: always `None`).
        lobby: Option<LobbyCode>,
    },
    /// v2: join a lobby, with recovery from `since` of `epoch` when given.
    Join {
        lobby: LobbyCode,
        /// Recovery: the last offset received, and its epoch.
        recover: Option<(u64, std::borrow::Cow<'a, str>)>,
    },
    /// v2: leave a lobby.
    Leave {
        lobby: LobbyCode,
    },
    /// v2: a fresh credential for the same user.
    Refresh {
        token: std::borrow::Cow<'a, str>,
    },
    /// v2: a call the backend answers (`rpc_result` or `error`, with the `id`).
    Rpc {
        /// Required: the answer is matched by it.
        id: &'a RawValue,
        method: std::borrow::Cow<'a, str>,
        /// `null` when the frame has none.
        data: &'a RawValue,
    },
    /// Any type the protocol does not define: the embedding app's.
    App {
        kind: std::borrow::Cow<'a, str>,
    },
}

/// The fields any client frame may carry; everything else is ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    exclude_self: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    lobby: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
}

/// A parse failure, with the frame's `id` when it could be read, so the error can echo it.
#[derive(Debug)]
pub(crate) struct ParseError<'a> {
    pub(crate) error: ClientError,
    pub(crate) id: Option<&'a RawValue>,
}

/// Parses one client text frame of protocol v1. On success also returns the frame's `id`
/// (string or number).
pub(crate) fn parse(text: &str) -> Result<(ClientFrame<'_>, Option<&RawValue>), ParseError<'_>> {
    parse_as(text, false)
}

/// Parses one client text frame of protocol v1 or (with `v2`) v2: v2's own types, and its
/// `lobby` on `broadcast` and `presence`, mean nothing in v1 (there `join` is the app's type).
pub(crate) fn parse_as(
    text: &str,
    v2: bool,
) -> Result<(ClientFrame<'_>, Option<&RawValue>), ParseError<'_>> {
    // serde's derive would also read a JSON array as the struct's fields by position, so
    // anything that is not an object is decided here: valid JSON of another shape, or not JSON.
    if !text.trim_start().starts_with('{') {
        let error = match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => ClientError::new(ErrorCode::InvalidMessage, "a frame must be a JSON object"),
            Err(e) => ClientError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")),
        };
        return Err(ParseError { error, id: None });
    }
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        // serde may stop at a shape error (a duplicate key) before it reaches a syntax error
        // later on: only JSON is `invalid_message`.
        let is_json = || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
        let error = if e.is_data() && is_json() {
            ClientError::new(ErrorCode::InvalidMessage, "a frame must be a JSON object")
        } else {
            ClientError::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"))
        };
        ParseError { error, id: None }
    })?;
    let id = env.id.filter(|raw| is_string_or_number(raw));
    let fail = |code, message: &str| ParseError {
        error: ClientError::new(code, message),
        id,
    };
    let kind = env
        .kind
        .and_then(as_str)
        .ok_or_else(|| fail(ErrorCode::InvalidMessage, "missing string field `type`"))?;
    let require_data = || {
        env.data
            .ok_or_else(|| fail(ErrorCode::MissingField, "missing field `data`"))
    };
    // v2's `lobby`: absent, or a valid code.
    let lobby = || -> Result<Option<LobbyCode>, ParseError<'_>> {
        match env.lobby.filter(|_| v2) {
            None => Ok(None),
            Some(raw) => as_str(raw)
                .and_then(|s| LobbyCode::parse(&s).ok())
                .map(Some)
                .ok_or_else(|| {
                    fail(
                        ErrorCode::InvalidLobby,
                        "`lobby` must be a valid lobby code",
                    )
                }),
        }
    };
    let require_lobby =
        || lobby()?.ok_or_else(|| fail(ErrorCode::MissingField, "missing field `lobby`"));
    let frame = match &*kind {
        "join" if v2 => {
            let lobby = require_lobby()?;
            let since = env.since.map(|raw| raw.get().parse::<u64>());
            let epoch = env.epoch.map(as_str);
            let recover = match (since, epoch) {
                (None, None) => None,
                (Some(Ok(since)), Some(Some(epoch))) => Some((since, epoch)),
                _ => {
                    return Err(fail(
                        ErrorCode::InvalidMessage,
                        "`since` (a number) and `epoch` (a string) go together",
                    ));
                }
            };
            ClientFrame::Join { lobby, recover }
        }
        "leave" if v2 => ClientFrame::Leave {
            lobby: require_lobby()?,
        },
        "refresh" if v2 => {
            let token = env
                .token
                .ok_or_else(|| fail(ErrorCode::MissingField, "missing field `token`"))?;
            ClientFrame::Refresh {
                token: as_str(token)
                    .ok_or_else(|| fail(ErrorCode::InvalidMessage, "`token` must be a string"))?,
            }
        }
        "rpc" if v2 => {
            // Checked first: without an id the refusal could not be matched to the call.
            let id = id.ok_or_else(|| {
                fail(
                    ErrorCode::MissingField,
                    "missing field `id` (a string or a number): an `rpc` is answered by it",
                )
            })?;
            let method = env
                .method
                .ok_or_else(|| fail(ErrorCode::MissingField, "missing field `method`"))?;
            let method = as_str(method)
                .filter(|m| !m.is_empty() && m.len() <= MAX_RPC_METHOD_BYTES)
                .ok_or_else(|| {
                    fail(
                        ErrorCode::InvalidMessage,
                        &format!("`method` must be a string of 1-{MAX_RPC_METHOD_BYTES} bytes"),
                    )
                })?;
            ClientFrame::Rpc {
                id,
                method,
                data: env.data.unwrap_or(RawValue::NULL),
            }
        }
        "health_pong" => ClientFrame::HealthPong {
            timestamp: env.timestamp.and_then(|t| t.get().parse().ok()),
        },
        "broadcast" => ClientFrame::Broadcast {
            lobby: lobby()?,
            data: require_data()?,
            exclude_self: match env.exclude_self.map(RawValue::get) {
                None | Some("false") | Some("null") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(fail(
                        ErrorCode::InvalidMessage,
                        "`exclude_self` must be a boolean",
                    ));
                }
            },
        },
        "direct" => {
            let to = env
                .to
                .ok_or_else(|| fail(ErrorCode::MissingField, "missing field `to`"))?;
            let to = as_str(to)
                .and_then(|s| UserId::parse(&s).ok())
                .ok_or_else(|| fail(ErrorCode::InvalidMessage, "`to` must be a valid user id"))?;
            ClientFrame::Direct {
                to,
                data: require_data()?,
            }
        }
        "presence" => ClientFrame::Presence { lobby: lobby()? },
        _ => ClientFrame::App { kind },
    };
    Ok((frame, id))
}

/// Parses a client frame and encodes the answer a connection would send for a bad one: the
/// inbound parser's whole surface, for fuzzing. Not part of the API.
#[doc(hidden)]
pub fn fuzz_parse(text: &str) -> Option<String> {
    match parse(text) {
        Ok(_) => None,
        Err(e) => Some(
            ServerFrame::Error {
                code: e.error.code,
                message: &e.error.message,
                id: e.id,
            }
            .encode(),
        ),
    }
}

pub(crate) fn is_string_or_number(raw: &RawValue) -> bool {
    matches!(
        raw.get().as_bytes().first(),
        Some(b'"' | b'-' | b'0'..=b'9')
    )
}

fn as_str(raw: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

/// Server frames. Each is encoded once; broadcasts share the encoded bytes.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerFrame<'a> {
    /// Written by hand (`welcome`): these two variants are the reference its tests compare.
    #[cfg_attr(not(test), allow(dead_code))]
    Welcome {
        connection_id: &'a ConnectionId,
        user_id: &'a UserId,
        lobby: &'a LobbyCode,
        ping_interval_ms: u64,
        server_time: u64,
        protocol: u32,
        presence_events: bool,
        /// The lobby's last assigned offset (0: none yet).
        offset: u64,
        /// Changes whenever the lobby's history is lost.
        epoch: &'a str,
    },
    /// v2's `welcome`: no lobby fields (each lobby gets its own `joined`).
    #[serde(rename = "welcome")]
    #[cfg_attr(not(test), allow(dead_code))]
    WelcomeV2 {
        connection_id: &'a ConnectionId,
        user_id: &'a UserId,
        ping_interval_ms: u64,
        server_time: u64,
        protocol: u32,
        max_lobbies: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        token_expires_at: Option<u64>,
    },
    /// v2: the connection is in a lobby now (answering a `join`, or the URL's lobby, or a
    /// server-side join).
    Joined {
        lobby: &'a LobbyCode,
        offset: u64,
        epoch: &'a str,
        presence_events: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// v2: the connection is no longer in a lobby.
    Left {
        lobby: &'a LobbyCode,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// v2: a client frame with an `id` succeeded.
    Ack {
        id: &'a RawValue,
        /// A broadcast's offset in its lobby.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// A refresh's new expiry.
        #[serde(skip_serializing_if = "Option::is_none")]
        token_expires_at: Option<u64>,
    },
    /// v2: the answer to an `rpc`, with its `id`.
    RpcResult {
        id: &'a RawValue,
        data: &'a RawValue,
    },
    HealthPing {
        timestamp: u64,
    },
    Message {
        lobby: &'a LobbyCode,
        from: Option<&'a UserId>,
        data: &'a RawValue,
    },
    Direct {
        from: Option<&'a UserId>,
        data: &'a RawValue,
    },
    /// The lobby's users, sorted: this node's registry or, in cluster mode, the cluster's.
    Presence {
        lobby: &'a LobbyCode,
        users: Vec<&'a str>,
        /// v2: the `id` of the `presence` request answered.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    MemberJoined {
        lobby: &'a LobbyCode,
        user_id: &'a UserId,
    },
    MemberLeft {
        lobby: &'a LobbyCode,
        user_id: &'a UserId,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Recovered {
        /// v2: the lobby recovered (v1 connections are in one lobby).
        #[serde(skip_serializing_if = "Option::is_none")]
        lobby: Option<&'a LobbyCode>,
        ok: bool,
    },
    Goodbye {
        code: u16,
        reason: &'a str,
        retry_after_ms: u64,
    },
}

impl ServerFrame<'_> {
    /// Encodes the frame as JSON text.
    pub(crate) fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames are plain data and always serialize")
    }
}

/// Milliseconds since the Unix epoch, the protocol's clock.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch of a wall-clock time, the protocol's clock.
pub(crate) fn system_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The text of an encoded frame (every frame the manager encodes is text).
pub(crate) fn frame_text(frame: &Message) -> &str {
    match frame {
        Message::Text(text) => text.as_str(),
        _ => "",
    }
}

/// A server frame, encoded, as the message every queue and the history share.
pub(crate) fn text(mut encoded: String) -> Message {
    // The frame's buffer is shared by every queue and the history for as long as any holds
    // it: not the up-to-double capacity a growing encoder leaves behind.
    if encoded.capacity() - encoded.len() > SLACK {
        encoded.shrink_to_fit();
    }
    Message::Text(encoded.into())
}

/// Spare capacity a frame may keep (shrinking costs a copy: small frames keep theirs).
const SLACK: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        parse(text).expect_err(text).error.code
    }

    #[test]
    fn bad_frames_get_the_design_codes() {
        assert_eq!(code_of("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of(""), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code_of("42"), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"data":1}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"broadcast"}"#), ErrorCode::MissingField);
        assert_eq!(
            code_of(r#"{"type":"direct","data":1}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code_of(r#"{"type":"direct","to":"","data":1}"#),
            ErrorCode::InvalidMessage
        );
    }

    /// Found by the fuzzer: arrays were read as the envelope's fields by position, and
    /// trailing garbage after a non-object was called `invalid_message`.
    #[test]
    fn arrays_are_never_frames_and_garbage_is_invalid_json() {
        assert_eq!(
            code_of(r#"["presence",null,null,null,null,null]"#),
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            code_of(r#"["broadcast","a",{"x":1},null,true,null]"#),
            ErrorCode::InvalidMessage
        );
        let long = "\t\t[\t\t\t\t\t\t\t3.0e2,3.1e2,3.2,3,3.1e2,3.2,3.02,3.1e2,3.0e2,3.11e2,\n1]";
        assert_eq!(code_of(long), ErrorCode::InvalidMessage);
        assert_eq!(
            code_of(r#""health_pong"{"typ)e":"dirata":1,"id":-3}"#),
            ErrorCode::InvalidJson
        );
        assert!(
            parse("  {\"type\":\"presence\"}").is_ok(),
            "leading whitespace is fine"
        );
        // Found by the fuzzer: serde stops at the duplicate key before the truncation.
        assert_eq!(code_of(r#"{"id":"","id""#), ErrorCode::InvalidJson);
        assert_eq!(
            code_of(r#"{"type":"presence","type":"presence"}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn errors_echo_string_or_number_ids() {
        let e = parse(r#"{"type":"broadcast","id":"a1"}"#).unwrap_err();
        assert_eq!(e.id.map(RawValue::get), Some(r#""a1""#));
        let e = parse(r#"{"type":"broadcast","id":17}"#).unwrap_err();
        assert_eq!(e.id.map(RawValue::get), Some("17"));
        let e = parse(r#"{"type":"broadcast","id":{"x":1}}"#).unwrap_err();
        assert!(e.id.is_none(), "objects are not ids");
    }

    #[test]
    fn good_frames_parse() {
        let (f, _) =
            parse(r#"{"type":"broadcast","data":{"a":[1,2]},"exclude_self":true}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Broadcast { data, exclude_self: true, .. } if data.get() == r#"{"a":[1,2]}"#)
        );
        let (f, _) = parse(r#"{"type":"direct","to":"bob","data":"hi"}"#).unwrap();
        assert!(matches!(f, ClientFrame::Direct { ref to, .. } if to.as_str() == "bob"));
        let (f, _) = parse(r#"{"type":"health_pong","timestamp":1700000000000}"#).unwrap();
        assert!(matches!(
            f,
            ClientFrame::HealthPong {
                timestamp: Some(1_700_000_000_000)
            }
        ));
        let (f, _) = parse(r#"{"type":"game_move","x":1}"#).unwrap();
        assert!(matches!(f, ClientFrame::App { ref kind } if kind == "game_move"));
        let (f, _) = parse(r#"{"type":"pres\u0065nce"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Presence { lobby: None }),
            "escaped type names still match"
        );
    }

    fn v2_code_of(text: &str) -> ErrorCode {
        parse_as(text, true).expect_err(text).error.code
    }

    #[test]
    fn rpc_is_v2_needs_an_id_and_a_method_of_at_most_128_bytes() {
        let (f, id) =
            parse_as(r#"{"type":"rpc","method":"add","data":[1,2],"id":7}"#, true).unwrap();
        assert!(
            matches!(f, ClientFrame::Rpc { id, ref method, data } if id.get() == "7" && method == "add" && data.get() == "[1,2]")
        );
        assert_eq!(id.map(RawValue::get), Some("7"));
        let (f, _) = parse_as(r#"{"type":"rpc","method":"now","id":"a"}"#, true).unwrap();
        assert!(
            matches!(f, ClientFrame::Rpc { data, .. } if data.get() == "null"),
            "no data is null"
        );
        let (f, _) = parse(r#"{"type":"rpc","method":"now","id":1}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::App { ref kind } if kind == "rpc"),
            "v1: the app's type"
        );
        assert_eq!(
            v2_code_of(r#"{"type":"rpc","method":"now"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            v2_code_of(r#"{"type":"rpc","method":"now","id":{"x":1}}"#),
            ErrorCode::MissingField,
            "an id that is not echoed is no id"
        );
        for missing in [
            r#"{"type":"rpc","id":1}"#,
            r#"{"type":"rpc","id":1,"method":null}"#,
        ] {
            assert_eq!(v2_code_of(missing), ErrorCode::MissingField, "{missing}");
        }
        for method in ["\"\"", "7", "[\"a\"]"] {
            let frame = format!(r#"{{"type":"rpc","id":1,"method":{method}}}"#);
            assert_eq!(v2_code_of(&frame), ErrorCode::InvalidMessage, "{frame}");
        }
        let longest = "m".repeat(MAX_RPC_METHOD_BYTES);
        let frame = format!(r#"{{"type":"rpc","id":1,"method":"{longest}"}}"#);
        assert!(parse_as(&frame, true).is_ok(), "128 bytes is a method");
        let frame = format!(r#"{{"type":"rpc","id":1,"method":"{longest}m"}}"#);
        let refused = parse_as(&frame, true).unwrap_err();
        assert_eq!(refused.error.code, ErrorCode::InvalidMessage);
        assert_eq!(refused.id.map(RawValue::get), Some("1"), "echoes the id");
    }

    /// Every code, by a match that stops compiling when a code is added without a row.
    fn every_error_code() -> Vec<ErrorCode> {
        use ErrorCode::*;
        let all = vec![
            InvalidJson,
            InvalidMessage,
            UnknownType,
            MissingField,
            RateLimited,
            NotAllowed,
            Overloaded,
            LobbyFull,
            TooManyLobbies,
            InvalidLobby,
            RpcFailed,
        ];
        for code in &all {
            match code {
                InvalidJson | InvalidMessage | UnknownType | MissingField | RateLimited
                | NotAllowed | Overloaded | LobbyFull | TooManyLobbies | InvalidLobby
                | RpcFailed => {}
            }
        }
        all
    }

    #[test]
    fn protocol_doc_has_a_row_for_every_error_code() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/protocol.md"
        ));
        for code in every_error_code() {
            let word = serde_json::to_string(&code).unwrap();
            let row = format!("| `{}` |", word.trim_matches('"'));
            assert!(
                doc.lines().any(|line| line.starts_with(&row)),
                "docs/protocol.md has no error table row {row}"
            );
        }
    }

    #[test]
    fn message_frame_embeds_raw_data() {
        let data = RawValue::from_string(r#"{"k":"v"}"#.into()).unwrap();
        let lobby = LobbyCode::parse("l1").unwrap();
        let user = UserId::parse("u\"1").unwrap();
        let text = ServerFrame::Message {
            lobby: &lobby,
            from: Some(&user),
            data: &data,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"type":"message","lobby":"l1","from":"u\"1","data":{"k":"v"}}"#
        );
    }
}

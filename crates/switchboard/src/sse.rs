//! Server-Sent Events: the same connections for clients that cannot open a WebSocket.
//!
//! An SSE connection is admitted, registered, health-checked and cleaned up exactly like a
//! WebSocket one (it runs through the same `connection::drive`); only the transport differs:
//! server frames leave as SSE events (`event:` the frame's type, `data:` the JSON frame, `id:`
//! `EPOCH:OFFSET` for messages, so the browser's `Last-Event-ID` recovers), and client frames
//! arrive as HTTP posts (`Manager::sse_post`). A close is an event `close` with the code and
//! reason, then the stream ends. Refusals happen before the stream starts, as HTTP statuses.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::ws::Message;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use std::collections::BTreeMap;

use crate::connection;
use crate::disconnect::DisconnectReason;
use crate::gzip::GzipChunks;
use crate::handler::AppHandler;
use crate::history::Recovery;
use crate::hub::Join;
use crate::ids::LobbyCode;
use crate::request::ConnectRequest;
use crate::shared::Shared;

/// Client frames waiting for an SSE connection's reader; beyond this a post gets 429.
const INBOUND_QUEUE: usize = 64;
/// Encoded events waiting for the HTTP body; the outbound queue in front of it is the real
/// bound (and the slow-consumer policy).
const BODY_QUEUE: usize = 16;

pub use crate::error::SsePostError;

/// Opens an SSE stream for `request` (`Manager::accept_sse`). With `joins` (protocol v2,
/// `Manager::accept_sse_v2`) the connection speaks v2 and joins those lobbies before its stream
/// starts; a refused join is an `error` event, the others go on.
pub(crate) async fn open(
    shared: &Arc<Shared>,
    handler: &AppHandler,
    request: ConnectRequest,
    joins: Option<Vec<(LobbyCode, Option<Recovery>)>>,
) -> Response {
    let (inbound, frames) = mpsc::channel(INBOUND_QUEUE);
    let protocol = if joins.is_some() { 2 } else { 1 };
    let admitted = match connection::admit(shared, request, protocol, Some(inbound)).await {
        Ok(admitted) => admitted,
        Err(reason) => return refusal(reason),
    };
    for (lobby, recovery) in joins.iter().flatten() {
        let join = Join {
            lobby,
            recovery: recovery.as_ref(),
            cluster_history: None,
        };
        let conn = admitted.conn();
        if let Err(error) = shared.join(conn, join, None).await {
            crate::client::send_error(shared, conn, &error, None);
        }
    }
    let (body, events) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let stream = Box::pin(futures_util::stream::unfold(frames, |mut frames| async {
        frames.recv().await.map(|frame| (frame, frames))
    }));
    let sink = SseSink {
        body: PollSender::new(body),
        epoch: None,
        positions: (protocol == 2).then(BTreeMap::new),
    };
    let drive = connection::drive(shared.clone(), handler.clone(), admitted, stream, sink);
    shared.tracker.spawn(drive);
    let body = futures_util::stream::unfold(events, |mut events| async {
        events
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), events))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Whether a request's `Accept-Encoding` takes gzip (`gzip` or `*`, without `q=0`): then
/// [`gzip`] may compress its event stream.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    crate::gzip::accepted(
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// An SSE response compressed with gzip, for a client that [`accepts_gzip`]. Each event is
/// deflated on its own and flushed, so the browser decodes it as soon as it arrives (a
/// general-purpose compression layer would hold events back until its buffer fills); the
/// stream keeps only a CRC and a length between events. Responses that are not an event
/// stream (refusals) are returned as they are.
pub fn gzip(response: Response) -> Response {
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    if !is_stream || response.headers().contains_key(header::CONTENT_ENCODING) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let state = (body.into_data_stream(), Some(GzipChunks::new()));
    let events = futures_util::stream::unfold(state, |(mut events, mut gz)| async move {
        let chunks = gz.as_mut()?;
        let out = match events.next().await {
            Some(Ok(event)) => Ok(chunks.chunk(&event)),
            Some(Err(error)) => {
                gz = None;
                Err(error)
            }
            None => {
                let end = chunks.finish();
                gz = None;
                Ok(end)
            }
        };
        Some((out, (events, gz)))
    });
    Response::from_parts(parts, Body::from_stream(events))
}

/// The HTTP answer to a refused SSE connect: 401, 429, or 503 with `Retry-After`, and the
/// JSON error body.
pub fn refusal(reason: DisconnectReason) -> Response {
    let status = match reason {
        DisconnectReason::Unauthorized => StatusCode::UNAUTHORIZED,
        DisconnectReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({"error": {"code": reason.as_str(), "message": format!("connection refused: {reason}")}});
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(ms) = reason.retry_after_ms() {
        let secs = ms.div_ceil(1000).to_string();
        if let Ok(value) = secs.parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// The writer's side of an SSE connection: frames in, event-stream bytes out.
struct SseSink {
    body: PollSender<Bytes>,
    /// The lobby's epoch, read from `welcome`, for the `id:` of messages (v1).
    epoch: Option<String>,
    /// v2: every lobby's epoch and last offset, from `joined` and `message` events, for the
    /// `id:` of messages: `LOBBY=EPOCH:OFFSET` joined by `,` (neither `=` nor `,` is in a lobby
    /// code), so the browser's `Last-Event-ID` resumes every lobby at once.
    positions: Option<BTreeMap<String, (String, u64)>>,
}

impl SseSink {
    /// Encodes one frame as an SSE event; `None` for frames SSE has no use for.
    fn encode(&mut self, frame: Message) -> Option<Bytes> {
        match frame {
            Message::Text(text) => {
                let json = text.as_str();
                let kind = frame_type(json)?;
                let mut event = format!("event: {kind}\n");
                if let Some(positions) = &mut self.positions {
                    if let Some(id) = v2_event_id(positions, kind, json) {
                        event.push_str(&format!("id: {id}\n"));
                    }
                } else if kind == "welcome" {
                    // welcome's id too: a stream that breaks before its first message still
                    // resumes (Last-Event-ID) from the lobby's offset at connect time.
                    let welcome = serde_json::from_str::<serde_json::Value>(json).ok();
                    self.epoch = welcome
                        .as_ref()
                        .and_then(|v| v["epoch"].as_str().map(str::to_owned));
                    let offset = welcome.as_ref().and_then(|v| v["offset"].as_u64());
                    if let (Some(epoch), Some(offset)) = (&self.epoch, offset) {
                        event.push_str(&format!("id: {epoch}:{offset}\n"));
                    }
                }
                if kind == "message"
                    && self.positions.is_none()
                    && let (Some(epoch), Some(offset)) = (&self.epoch, trailing_offset(json))
                {
                    event.push_str(&format!("id: {epoch}:{offset}\n"));
                }
                push_data(&mut event, json);
                event.push('\n');
                Some(Bytes::from(event))
            }
            // Protocol pings become comments: they keep proxies from timing the stream out.
            Message::Ping(_) => Some(Bytes::from_static(b": ping\n\n")),
            Message::Close(frame) => {
                let (code, reason) =
                    frame.map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                let data = serde_json::json!({"code": code, "reason": reason});
                Some(Bytes::from(format!("event: close\ndata: {data}\n\n")))
            }
            Message::Pong(_) | Message::Binary(_) => None,
        }
    }
}

/// Appends `json` as `data:` lines. JSON may hold raw line breaks outside its strings (a
/// client's or a backend's pretty-printed `data`); a line break would end the `data:` field
/// early, so each line gets its own field and EventSource joins them back with `\n`, which
/// is the same JSON (a `\r\n` becomes two line breaks: whitespace all the same).
fn push_data(event: &mut String, json: &str) {
    for line in json.split(['\r', '\n']) {
        event.push_str("data: ");
        event.push_str(line);
        event.push('\n');
    }
}

/// v2: follows the lobbies' positions through `joined`, `message` and `left`, and returns the
/// event id to write after a change (every lobby's `LOBBY=EPOCH:OFFSET`, joined by `,`).
fn v2_event_id(
    positions: &mut BTreeMap<String, (String, u64)>,
    kind: &str,
    json: &str,
) -> Option<String> {
    match kind {
        "joined" => {
            let frame: serde_json::Value = serde_json::from_str(json).ok()?;
            let lobby = frame["lobby"].as_str()?.to_owned();
            let epoch = frame["epoch"].as_str()?.to_owned();
            positions.insert(lobby, (epoch, frame["offset"].as_u64()?));
        }
        "left" => {
            let frame: serde_json::Value = serde_json::from_str(json).ok()?;
            positions.remove(frame["lobby"].as_str()?);
        }
        "message" => {
            // `{"type":"message","lobby":"..."` comes first, `,"offset":N}` last.
            let lobby = json.strip_prefix(r#"{"type":"message","lobby":""#)?;
            let (lobby, _) = lobby.split_once('"')?;
            let offset = trailing_offset(json)?;
            positions.get_mut(lobby)?.1 = offset;
        }
        _ => return None,
    }
    let id: Vec<String> = positions
        .iter()
        .map(|(lobby, (epoch, offset))| format!("{lobby}={epoch}:{offset}"))
        .collect();
    Some(id.join(","))
}

/// Reads a v2 event id (`LOBBY=EPOCH:OFFSET,...`, what the browser sends back as
/// `Last-Event-ID`) into each lobby's recovery; entries that do not parse are left out.
pub fn positions_from_event_id(id: &str) -> Vec<(LobbyCode, Recovery)> {
    id.split(',')
        .filter_map(|entry| {
            let (lobby, position) = entry.split_once('=')?;
            let (epoch, offset) = position.rsplit_once(':')?;
            let recovery = Recovery {
                since: offset.parse().ok()?,
                epoch: epoch.to_owned(),
            };
            Some((LobbyCode::parse(lobby).ok()?, recovery))
        })
        .collect()
}

/// The `type` of a frame the server encoded (`{"type":"..."` comes first).
fn frame_type(json: &str) -> Option<&str> {
    let rest = json.strip_prefix(r#"{"type":""#)?;
    rest.split_once('"').map(|(kind, _)| kind)
}

/// The `offset` a message frame ends with (`,"offset":N}`).
fn trailing_offset(json: &str) -> Option<u64> {
    let body = json.strip_suffix('}')?;
    let (_, offset) = body.rsplit_once(r#","offset":"#)?;
    offset.parse().ok()
}

impl Sink<Message> for SseSink {
    type Error = ();

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        self.body.poll_reserve(cx).map_err(drop)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Message) -> Result<(), ()> {
        let closing = matches!(frame, Message::Close(_));
        match self.encode(frame) {
            Some(event) => self.body.send_item(event).map_err(drop)?,
            // Nothing to send: give the reserved slot back.
            None => {
                self.body.abort_send();
            }
        }
        if closing {
            // The stream ends after the close event.
            self.body.close();
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        self.body.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_event_ids_follow_every_lobby_and_read_back() {
        let mut positions = BTreeMap::new();
        let joined = |lobby: &str, offset: u64| {
            format!(
                r#"{{"type":"joined","lobby":"{lobby}","offset":{offset},"epoch":"e{lobby}","presence_events":true}}"#
            )
        };
        assert_eq!(
            v2_event_id(&mut positions, "joined", &joined("b:1", 4)).as_deref(),
            Some("b:1=eb:1:4")
        );
        v2_event_id(&mut positions, "joined", &joined("a", 0));
        let message = r#"{"type":"message","lobby":"b:1","from":null,"data":1,"offset":5}"#;
        let id = v2_event_id(&mut positions, "message", message).unwrap();
        assert_eq!(id, "a=ea:0,b:1=eb:1:5");
        let back = positions_from_event_id(&id);
        assert_eq!(back.len(), 2);
        assert_eq!(
            (
                back[1].0.as_str(),
                back[1].1.since,
                back[1].1.epoch.as_str()
            ),
            ("b:1", 5, "eb:1")
        );
        let left = r#"{"type":"left","lobby":"a","reason":"left"}"#;
        assert_eq!(
            v2_event_id(&mut positions, "left", left).as_deref(),
            Some("b:1=eb:1:5")
        );
        assert_eq!(
            v2_event_id(&mut positions, "ack", r#"{"type":"ack","id":1}"#),
            None
        );
        assert!(positions_from_event_id("garbage,x=,=1:2,a=e:x").is_empty());
    }

    #[test]
    fn frames_become_events() {
        let (tx, _rx) = mpsc::channel(4);
        let mut sink = SseSink {
            body: PollSender::new(tx),
            epoch: None,
            positions: None,
        };
        let welcome = r#"{"type":"welcome","epoch":"e1","offset":0}"#;
        let event = sink.encode(Message::Text(welcome.into())).unwrap();
        assert_eq!(
            event,
            format!("event: welcome\nid: e1:0\ndata: {welcome}\n\n")
        );
        let message = r#"{"type":"message","lobby":"l","from":null,"data":{"x":"}"},"offset":12}"#;
        let event = sink.encode(Message::Text(message.into())).unwrap();
        assert_eq!(
            event,
            format!("event: message\nid: e1:12\ndata: {message}\n\n")
        );
        let close = axum::extract::ws::CloseFrame {
            code: 4009,
            reason: "kicked".into(),
        };
        let event = sink.encode(Message::Close(Some(close))).unwrap();
        assert_eq!(
            event,
            "event: close\ndata: {\"code\":4009,\"reason\":\"kicked\"}\n\n"
        );
        assert!(sink.encode(Message::Pong(Bytes::new())).is_none());
    }

    #[test]
    fn line_breaks_in_json_become_one_data_line_each() {
        let (tx, _rx) = mpsc::channel(4);
        let mut sink = SseSink {
            body: PollSender::new(tx),
            epoch: None,
            positions: None,
        };
        let message = "{\"type\":\"message\",\"data\":[\n 1,\r\n 2\r]}";
        let event = sink.encode(Message::Text(message.into())).unwrap();
        assert_eq!(
            event,
            "event: message\ndata: {\"type\":\"message\",\"data\":[\ndata:  1,\ndata: \ndata:  2\ndata: ]}\n\n"
        );
    }
}

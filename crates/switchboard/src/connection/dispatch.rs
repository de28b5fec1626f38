//! What a client frame does, whatever transport carried it: the rate charge, `broadcast`,
//! `direct`, `presence`, `health_pong`, application messages for the handler, and the
//! `error` answers.

use std::time::Duration;

use super::rate::{MessageRate, Verdict};
use crate::client::{Client, send_error};
use crate::disconnect::DisconnectReason;
use crate::handle::ConnHandle;
use crate::handler::{AppMessage, Handler};
use crate::protocol::{self, ClientError, ClientFrame, ErrorCode, ServerFrame, unix_ms};
use crate::shared::Shared;
use crate::skip::Skip;

/// A WebSocket Pong. The first echo of the last Ping this server sent is free and measures a
/// round trip (its payload is the Ping's send time); any other Pong is charged to the rate.
pub(super) fn handle_pong(
    payload: &[u8],
    conn: &ConnHandle,
    shared: &Shared,
    rate: &mut MessageRate,
) -> Result<(), DisconnectReason> {
    if let Some(stamp) = conn.answers_ping(payload) {
        if let Some(rtt) = shared.rtt_since(stamp) {
            conn.record_rtt(rtt, &shared.counters.rtt);
        }
        return Ok(());
    }
    charge_control(shared, rate).map(drop)
}

/// Charges a control frame (a Ping, an unsolicited Pong) to the rate: `Ok(false)` when it is
/// over the budget (it is then dropped, unanswered), `Err` when the refusals close the
/// connection.
pub(super) fn charge_control(
    shared: &Shared,
    rate: &mut MessageRate,
) -> Result<bool, DisconnectReason> {
    match rate.check(&shared.config.rate, shared.clock_secs()) {
        Verdict::Allowed => Ok(true),
        Verdict::Refused => Ok(false),
        Verdict::Exceeded => Err(DisconnectReason::RateLimited),
    }
}

/// A `health_pong` this small at most may be looked at before the rate check.
const MAX_FREE_PONG: usize = 256;

/// Handles one client text frame (and counts it); an `Err` closes the connection with that
/// reason, and so does a close meanwhile (the handler's, say): no further frame is read.
pub(super) fn handle_text(
    text: &str,
    client: &Client,
    handler: &dyn Handler,
    rate: &mut MessageRate,
) -> Result<(), DisconnectReason> {
    let Client { conn, shared } = client;
    shared.counters.message_in(text.len());
    // The rate is checked before the frame is parsed. One exception: the first echo of the
    // last `health_ping` is free, so that a client busy at its limit is never closed for
    // answering health checks. Only a small frame naming the type, while a ping waits for its
    // echo, is parsed to find out; anything else it turns out to be is charged as usual.
    let mut parsed = None;
    let mut echo = None;
    if text.len() <= MAX_FREE_PONG && conn.awaits_health_pong() && text.contains("health_pong") {
        let frame = protocol::parse(text);
        if let Ok((ClientFrame::HealthPong { timestamp: Some(t) }, _)) = &frame
            && conn.answers_health_ping(*t)
        {
            echo = Some(*t);
        }
        parsed = Some(frame);
    }
    if echo.is_none() {
        let verdict = rate.check(&shared.config.rate, shared.clock_secs());
        if verdict != Verdict::Allowed {
            // Refused unparsed: no `id` to echo.
            let error = ClientError::new(ErrorCode::RateLimited, "too many messages; slow down");
            send_error(shared, conn, &error, None);
            return match verdict {
                Verdict::Exceeded => Err(DisconnectReason::RateLimited),
                _ => Ok(()),
            };
        }
    }
    let (frame, id) = match parsed.unwrap_or_else(|| protocol::parse(text)) {
        Ok(parsed) => parsed,
        Err(e) => {
            send_error(shared, conn, &e.error, e.id);
            return Ok(());
        }
    };
    let info = &conn.info;
    let permissions = shared.config.client;
    let outcome = match frame {
        ClientFrame::HealthPong { .. } => {
            // Only the echo of the ping this server last sent counts as a round trip.
            if let Some(rtt) = echo.and_then(|sent| unix_ms().checked_sub(sent)) {
                let rtt = Duration::from_millis(rtt);
                if rtt <= shared.config.stale_after() {
                    conn.record_rtt(rtt, &shared.counters.rtt);
                }
            }
            Ok(())
        }
        ClientFrame::Broadcast { .. } if !permissions.allow_broadcast => {
            Err(not_allowed("broadcast"))
        }
        ClientFrame::Direct { .. } if !permissions.allow_direct => Err(not_allowed("direct")),
        ClientFrame::Broadcast { data, exclude_self } => {
            let frame = ServerFrame::Message {
                lobby: &info.lobby,
                from: Some(&info.user_id),
                data,
            };
            let skip = if exclude_self {
                Skip::Connection(info.id.as_str())
            } else {
                Skip::Nobody
            };
            // Encoded once without an offset: the offset is added as it is numbered.
            let frame = frame.encode();
            shared
                .publish(&info.lobby, &frame, skip)
                .map(drop)
                .map_err(|_| overloaded())
        }
        ClientFrame::Direct { to, data } => {
            let frame = ServerFrame::Direct {
                from: Some(&info.user_id),
                data,
            };
            let frame = crate::protocol::text(frame.encode());
            shared
                .send_to_user(to.as_str(), &frame)
                .map(drop)
                .map_err(|_| overloaded())
        }
        ClientFrame::Presence => {
            shared.queue_presence_list(conn);
            Ok(())
        }
        ClientFrame::App { kind } => handler.on_message(
            client,
            AppMessage {
                kind: &kind,
                text,
                id,
            },
        ),
    };
    if let Err(error) = outcome {
        send_error(shared, conn, &error, id);
    }
    conn.reason().map_or(Ok(()), Err)
}

fn overloaded() -> ClientError {
    ClientError::new(
        ErrorCode::Overloaded,
        "the server cannot forward this to the other nodes now; retry later",
    )
}

fn not_allowed(kind: &str) -> ClientError {
    ClientError::new(
        ErrorCode::NotAllowed,
        format!("clients may not send `{kind}` on this server"),
    )
}

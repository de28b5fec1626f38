//! What a client frame does, whatever transport carried it: the rate charge, `broadcast`,
//! `direct`, `presence`, `health_pong`, v2's `join`, `leave`, `refresh` and `rpc` (its own
//! module), application messages for the handler, and the `error` answers.

use std::time::Duration;

use super::health::HealthClock;
use super::rate::{MessageRate, Verdict};
use crate::client::{Client, send_error};
use crate::disconnect::DisconnectReason;
use crate::error::Error;
use crate::handle::ConnHandle;
use crate::handler::{AppHandler, AppMessage, JoinCheck, JoinDecision};
use crate::history::Recovery;
use crate::hub::{Join, LeftReason};
use crate::ids::LobbyCode;
use crate::protocol::{self, ClientError, ClientFrame, ErrorCode, ServerFrame, unix_ms};
use crate::shared::Shared;
use crate::skip::Skip;
use serde_json::value::RawValue;

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
            shared.counters.round_trip(rtt);
            conn.record_rtt(rtt);
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
    handler: &AppHandler,
    rate: &mut MessageRate,
    clock: &mut HealthClock,
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
        let frame = protocol::parse_as(text, conn.v2());
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
    let v2 = conn.v2();
    let (frame, id) = match parsed.unwrap_or_else(|| protocol::parse_as(text, v2)) {
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
                    shared.counters.round_trip(rtt);
                    conn.record_rtt(rtt);
                }
            }
            Ok(Answer::Nothing)
        }
        ClientFrame::Broadcast { .. } if !permissions.allow_broadcast => {
            Err(not_allowed("broadcast"))
        }
        ClientFrame::Direct { .. } if !permissions.allow_direct => Err(not_allowed("direct")),
        ClientFrame::Broadcast {
            lobby,
            data,
            exclude_self,
        } => shared
            .hub
            .lobby_of(conn.seq, lobby.as_ref())
            .map_err(not_in_lobby)
            .and_then(|lobby| {
                let frame = ServerFrame::Message {
                    lobby: &lobby,
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
                let acked = v2 && id.is_some();
                shared
                    .publish(&lobby, &frame, skip, acked)
                    .map(|published| match published.numbered {
                        // Numbered by the cluster: acknowledged once the offset is known.
                        Some(numbered) => {
                            ack_when_numbered(client, numbered, id);
                            Answer::Nothing
                        }
                        None => Answer::Ack {
                            offset: published.offset,
                            token_expires_at: None,
                        },
                    })
                    .map_err(|error| match error {
                        Error::LobbyBusy => shed(),
                        _ => overloaded(),
                    })
            }),
        ClientFrame::Direct { to, data } => {
            let frame = ServerFrame::Direct {
                from: Some(&info.user_id),
                data,
            };
            let frame = crate::protocol::text(frame.encode());
            shared
                .send_to_user(to.as_str(), &frame)
                .map(|_| Answer::ack())
                .map_err(|_| overloaded())
        }
        ClientFrame::Presence { lobby } => shared
            .hub
            .lobby_of(conn.seq, lobby.as_ref())
            .map_err(not_in_lobby)
            .map(|lobby| {
                // v2 answers with the request's id on the list itself.
                let id = id.filter(|_| v2).map(ToOwned::to_owned);
                shared.queue_presence_list(conn, lobby, id);
                Answer::Nothing
            }),
        ClientFrame::Join { lobby, recover } => {
            let recovery = recover.map(|(since, epoch)| Recovery {
                since,
                epoch: epoch.into_owned(),
            });
            let join = Join {
                lobby: &lobby,
                recovery: recovery.as_ref(),
                cluster_history: None,
            };
            match handler.authorize_join(client, &lobby) {
                // Alone, a join needs no round trip: answered before the next frame is read.
                JoinDecision::Allow if !shared.in_cluster() => join_now(client, handler, join, id),
                JoinDecision::Allow => {
                    join_later(client, handler, None, lobby, recovery, id);
                    Ok(Answer::Nothing)
                }
                JoinDecision::Deny(error) => Err(error),
                JoinDecision::Later(decision) => {
                    join_later(client, handler, Some(decision), lobby, recovery, id);
                    Ok(Answer::Nothing)
                }
            }
        }
        ClientFrame::Leave { lobby } => {
            leave(client, handler, lobby, LeftReason::Left, id);
            Ok(Answer::Nothing)
        }
        ClientFrame::Refresh { token } => handler.refresh(client, &token).and_then(|credential| {
            if credential.user_id != info.user_id {
                return Err(ClientError::new(
                    ErrorCode::NotAllowed,
                    "the token names another user",
                ));
            }
            clock.set_expiry(credential.expires_at);
            for lobby in shared.hub.set_allowed(conn.seq, credential.allowed) {
                leave(client, handler, lobby, LeftReason::NotAllowed, None);
            }
            Ok(Answer::Ack {
                offset: None,
                token_expires_at: credential.expires_at.map(crate::protocol::system_ms),
            })
        }),
        ClientFrame::Rpc {
            id: call,
            method,
            data,
        } => {
            super::rpc::call(client, handler, call, &method, data);
            Ok(Answer::Nothing)
        }
        ClientFrame::App { kind } => handler
            .on_message(
                client,
                AppMessage {
                    kind: &kind,
                    text,
                    id,
                },
            )
            .map(|()| Answer::ack()),
    };
    // v2: a frame with an `id` that succeeded is acknowledged (unless its answer carries it).
    if let (
        Ok(Answer::Ack {
            offset,
            token_expires_at,
        }),
        Some(id),
        true,
    ) = (&outcome, id, v2)
    {
        let ack = ServerFrame::Ack {
            id,
            offset: *offset,
            token_expires_at: *token_expires_at,
        };
        shared.hub.deliver(conn, protocol::text(ack.encode()));
    }
    if let Err(error) = outcome {
        send_error(shared, conn, &error, id);
    }
    conn.reason().map_or(Ok(()), Err)
}

/// Acknowledges a broadcast the cluster numbers, from a tracked task, once Redis has given it
/// its offset (without one if the publish failed after it was queued).
fn ack_when_numbered(
    client: &Client,
    numbered: tokio::sync::oneshot::Receiver<u64>,
    id: Option<&RawValue>,
) {
    let Some(id) = id.map(ToOwned::to_owned) else {
        return;
    };
    let client = client.clone();
    client.clone().spawn(async move {
        let ack = ServerFrame::Ack {
            id: &id,
            offset: numbered.await.ok(),
            token_expires_at: None,
        };
        client
            .shared
            .hub
            .deliver(&client.conn, protocol::text(ack.encode()));
    });
}

/// What a handled frame is answered with, besides an error.
enum Answer {
    /// v2 only, and only for a frame with an `id`: `ack`, with a broadcast's offset or a
    /// refresh's new expiry.
    Ack {
        offset: Option<u64>,
        token_expires_at: Option<u64>,
    },
    /// Nothing more: the frame needs no answer or its answer carries the `id` itself.
    Nothing,
}

impl Answer {
    /// A plain `ack`.
    fn ack() -> Self {
        Self::Ack {
            offset: None,
            token_expires_at: None,
        }
    }
}

/// The refusal of a frame whose lobby is not one the connection is in (`true`: it named one)
/// or that named none while the connection is not in exactly one.
fn not_in_lobby(named: bool) -> ClientError {
    if named {
        ClientError::new(ErrorCode::NotAllowed, "you are not in that lobby")
    } else {
        ClientError::new(
            ErrorCode::MissingField,
            "missing field `lobby` (required unless the connection is in exactly one lobby)",
        )
    }
}

/// Joins now (the app allowed it) and tells the app.
fn join_now(
    client: &Client,
    handler: &AppHandler,
    join: Join<'_>,
    id: Option<&RawValue>,
) -> Result<Answer, ClientError> {
    client.shared.join_here(client.conn.seq, join, id)?;
    handler.on_join(client, join.lobby);
    Ok(Answer::Nothing)
}

/// Leaves a lobby (`left` with `reason` and `id`) and tells the app if the connection was in
/// it. In cluster mode the cluster's count is freed first, from a tracked task.
fn leave(
    client: &Client,
    handler: &AppHandler,
    lobby: LobbyCode,
    reason: LeftReason,
    id: Option<&RawValue>,
) {
    if !client.shared.in_cluster() {
        if client
            .shared
            .leave_here(client.conn.seq, &lobby, reason, id)
        {
            handler.on_leave(client, &lobby);
        }
        return;
    }
    let (client, handler) = (client.clone(), handler.clone());
    let id = id.map(ToOwned::to_owned);
    client.clone().spawn(async move {
        let was_in = client
            .shared
            .leave(&client.conn, &lobby, reason, id.as_deref())
            .await;
        if was_in {
            handler.on_leave(&client, &lobby);
        }
    });
}

/// Joins from a tracked task, once the app's asynchronous decision (if any) allows it and,
/// in cluster mode, the cluster has reserved the lobby's place; a refusal is the `error` with
/// the frame's `id`.
fn join_later(
    client: &Client,
    handler: &AppHandler,
    decision: Option<JoinCheck>,
    lobby: LobbyCode,
    recovery: Option<Recovery>,
    id: Option<&RawValue>,
) {
    let (client, handler) = (client.clone(), handler.clone());
    let id = id.map(ToOwned::to_owned);
    client.clone().spawn(async move {
        let join = Join {
            lobby: &lobby,
            recovery: recovery.as_ref(),
            cluster_history: None,
        };
        let allowed = match decision {
            Some(decision) => decision.await,
            None => Ok(()),
        };
        let joined = match allowed {
            Ok(()) => client.shared.join(&client.conn, join, id.as_deref()).await,
            Err(error) => Err(error),
        };
        if joined.is_ok() {
            handler.on_join(&client, &lobby);
        }
        if let Err(error) = joined {
            send_error(&client.shared, &client.conn, &error, id.as_deref());
        }
    });
}

fn overloaded() -> ClientError {
    ClientError::new(
        ErrorCode::Overloaded,
        "the server cannot forward this to the other nodes now; retry later",
    )
}

/// A broadcast shed where it entered: the sender retries later. Not a rate violation: the
/// sender did nothing wrong.
fn shed() -> ClientError {
    ClientError::new(
        ErrorCode::RateLimited,
        "the lobby's members are behind; broadcast not sent, retry later",
    )
}

fn not_allowed(kind: &str) -> ClientError {
    ClientError::new(
        ErrorCode::NotAllowed,
        format!("clients may not send `{kind}` on this server"),
    )
}

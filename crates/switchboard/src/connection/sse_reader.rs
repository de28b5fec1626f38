//! The reader task of transports whose frames arrive as a stream (SSE posts): each frame goes
//! to the dispatcher; it returns once the connection has a [`DisconnectReason`].

use std::time::SystemTime;

use axum::extract::ws::Message;
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, sleep_until};

use super::dispatch::{charge_control, handle_pong, handle_text};
use super::health::HealthClock;
use super::rate::MessageRate;
use crate::client::Client;
use crate::disconnect::DisconnectReason;
use crate::handler::AppHandler;

pub(super) async fn run<S>(
    stream: &mut S,
    client: &Client,
    handler: &AppHandler,
    expires_at: Option<SystemTime>,
) where
    S: Stream<Item = Message> + Unpin,
{
    let Client { conn, shared } = client;
    let mut clock = HealthClock::new(shared, expires_at);
    let mut rate = MessageRate::new(&shared.config.rate);
    let timer = sleep_until(clock.next_deadline());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            () = conn.closed() => return,
            () = &mut timer => {
                if let Some(reason) = clock.tick(conn, shared) {
                    conn.close(reason);
                    return;
                }
                timer.as_mut().reset(clock.next_deadline());
            }
            frame = stream.next() => {
                let reason = match frame {
                    Some(message) => {
                        clock.last_seen = Instant::now();
                        match handle(message, client, handler, &mut rate, &mut clock) {
                            Ok(()) => continue,
                            Err(reason) => reason,
                        }
                    }
                    None => DisconnectReason::ConnectionLost,
                };
                conn.close(reason);
                return;
            }
        }
    }
}

/// Handles one inbound frame; an `Err` closes the connection with that reason.
fn handle(
    message: Message,
    client: &Client,
    handler: &AppHandler,
    rate: &mut MessageRate,
    clock: &mut HealthClock,
) -> Result<(), DisconnectReason> {
    let Client { conn, shared } = client;
    match message {
        Message::Text(text) => handle_text(text.as_str(), client, handler, rate, clock),
        Message::Binary(_) => Err(DisconnectReason::UnsupportedData),
        Message::Pong(payload) => handle_pong(&payload, conn, shared, rate),
        // The WebSocket layer answers pings itself; any frame is proof of life.
        Message::Ping(_) => charge_control(shared, rate).map(drop),
        Message::Close(_) => Err(DisconnectReason::ClientClosed),
    }
}

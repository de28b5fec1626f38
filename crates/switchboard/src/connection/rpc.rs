//! Protocol v2's `rpc`: a client's call that the app answers, at once or from a tracked task,
//! within the connection's bound on calls waiting. An `rpc` is never acknowledged: its
//! `rpc_result` (or `error`), carrying the call's `id`, is its answer.

use serde_json::value::RawValue;

use crate::client::{Client, send_error};
use crate::handle::RpcSlot;
use crate::handler::{AppHandler, RpcDecision};
use crate::protocol::{self, ClientError, ErrorCode, ServerFrame};

/// Answers one `rpc` (every outcome is sent from here, and counted).
pub(super) fn call(
    client: &Client,
    handler: &AppHandler,
    id: &RawValue,
    method: &str,
    data: &RawValue,
) {
    let Client { shared, conn } = client;
    let max = shared.config.limits.max_rpc_in_flight;
    // The place is taken before the app is asked, so a call past the bound costs the app
    // (and its backend) nothing.
    let Some(slot) = RpcSlot::take(conn, max) else {
        shared.counters.rpc_refused.increment(1);
        let error = ClientError::new(
            ErrorCode::RateLimited,
            format!(
                "{max} calls of this connection already wait for their answers \
                 (limits.max_rpc_in_flight); retry when one is answered"
            ),
        );
        send_error(shared, conn, &error, Some(id));
        return;
    };
    // Each place is given back before the answer goes out: a client that has its answer may
    // call again at once.
    match handler.on_rpc(client, method, data) {
        RpcDecision::Reply(result) => {
            drop(slot);
            answer(client, id, Ok(result));
        }
        RpcDecision::Fail(error) => {
            drop(slot);
            answer(client, id, Err(error));
        }
        RpcDecision::Later(call) => {
            let (client, id) = (client.clone(), id.to_owned());
            client.clone().spawn(async move {
                tokio::select! {
                    outcome = call => {
                        drop(slot);
                        answer(&client, &id, outcome);
                    }
                    // Nobody is left to answer: the call is dropped (an app's call never
                    // outlives its client), and its place with it.
                    () = client.closed() => {}
                }
            });
        }
    }
}

/// Sends a call's result as `rpc_result`, or its failure as `error`, with the call's `id`.
fn answer(client: &Client, id: &RawValue, outcome: Result<Box<RawValue>, ClientError>) {
    let Client { shared, conn } = client;
    match outcome {
        Ok(data) => {
            shared.counters.rpc_ok.increment(1);
            let frame = ServerFrame::RpcResult { id, data: &data };
            shared.hub.deliver(conn, protocol::text(frame.encode()));
        }
        Err(error) => {
            // A server too busy to take the call refused it; anything else failed it.
            let counter = match error.code {
                ErrorCode::Overloaded | ErrorCode::RateLimited => &shared.counters.rpc_refused,
                _ => &shared.counters.rpc_failed,
            };
            counter.increment(1);
            send_error(shared, conn, &error, Some(id));
        }
    }
}

//! Pub/sub in: the node's subscriptions (its own channel, and each lobby's while it has a
//! local member) and what each message received does.

use super::*;

impl RedisCluster {
    /// The pub/sub connection: (re)connects, (re)subscribes, and hands messages to the node.
    pub(crate) async fn listen(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let pubsub = tokio::select! {
                () = self.stop.cancelled() => return,
                p = self.client.get_async_pubsub() => p,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(p) => p.split(),
                Err(error) => {
                    self.failed("pubsub connect", &error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.heartbeat);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let node_channel = self.node_channel(&self.cfg.node_id);
            let subscribed = async {
                sink.subscribe(&node_channel).await?;
                let mut subs = self.subs.lock().await;
                for lobby in subs.lobbies.keys() {
                    sink.subscribe(self.lobby_channel(lobby)).await?;
                }
                subs.sink = Some(sink.clone());
                redis::RedisResult::Ok(())
            };
            if let Err(error) = subscribed.await {
                self.failed("subscribe", &error);
                continue;
            }
            loop {
                let message = tokio::select! {
                    () = self.stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(message) = message else { break };
                let channel = message.get_channel_name().to_owned();
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                self.receive(&channel, payload);
            }
            self.subs.lock().await.sink = None;
            metrics::counter!("switchboard_redis_errors_total").increment(1);
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    /// Handles one pub/sub message.
    pub(crate) fn receive(&self, channel: &str, payload: String) {
        let lobby_prefix = self.key("chan:lobby:");
        if let Some(lobby) = channel.strip_prefix(&lobby_prefix)
            && let Some(numbered) = payload.strip_prefix("#M\u{1f}")
        {
            // A broadcast numbered by the cluster: every node delivers it, the sender's too.
            let mut parts = numbered.splitn(4, SEP);
            if let (Some(epoch), Some(offset), Some(skip), Some(frame)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && let Ok(offset) = offset.parse()
            {
                self.local.deliver_numbered(
                    lobby,
                    epoch,
                    offset,
                    frame.to_owned(),
                    Skip::decode(skip),
                );
            }
            return;
        }
        if let Some(lobby) = channel.strip_prefix(&lobby_prefix) {
            // A join/leave event: the origin delivered it to its own members already.
            if let Some((origin, frame)) = payload.split_once(SEP)
                && origin != self.cfg.node_id
            {
                self.local.deliver_event(lobby, frame.to_owned());
            }
            return;
        }
        let mut parts = payload.splitn(3, SEP);
        let (Some(kind), Some(arg), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let reason = || {
            DisconnectReason::ALL
                .into_iter()
                .find(|r| r.as_str() == rest)
                .unwrap_or(DisconnectReason::Kicked)
        };
        match kind {
            "user" => {
                self.local.deliver_user(arg, rest.to_owned());
            }
            "close" => {
                self.local.close_connection(arg, reason());
            }
            "direct" => {
                self.local.deliver_to_connection(arg, rest.to_owned());
            }
            "join" => self.local.membership_for_user(arg, rest, true),
            "part" => self.local.membership_for_user(arg, rest, false),
            "ask" => self.answer(arg, rest),
            "reply" => self.answered(arg, rest),
            "close_user" => {
                self.local.close_user(arg, reason());
            }
            "post" => {
                let mut who = arg.splitn(3, '\t');
                if let (Some(id), Some(user), Some(lobby)) = (who.next(), who.next(), who.next()) {
                    self.local.post(id, user, lobby, rest);
                }
            }
            _ => tracing::debug!(kind, "unknown node message"),
        }
    }

    pub(crate) async fn subscribe_lobby(&self, lobby: &str) {
        let mut subs = self.subs.lock().await;
        let count = subs.lobbies.entry(lobby.to_owned()).or_default();
        *count += 1;
        if *count == 1
            && let Some(sink) = subs.sink.as_mut()
            && let Err(error) = sink.subscribe(self.lobby_channel(lobby)).await
        {
            // The pub/sub loop resubscribes every lobby when it reconnects.
            tracing::warn!(%error, lobby, "subscribe failed");
        }
    }

    pub(crate) async fn unsubscribe_lobby(&self, lobby: &str) {
        let mut subs = self.subs.lock().await;
        let Some(count) = subs.lobbies.get_mut(lobby) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            subs.lobbies.remove(lobby);
            if let Some(sink) = subs.sink.as_mut() {
                let _ = sink.unsubscribe(self.lobby_channel(lobby)).await;
            }
        }
    }
}

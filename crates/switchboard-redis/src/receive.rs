//! Pub/sub in: the node's subscriptions (its own channel, and each lobby's while it has a
//! local member) and what each message received does.
//!
//! A node that cannot keep up with what Redis sends it falls behind its pub/sub stream. It
//! finds out with a probe: every [`PROBE_EVERY`] it publishes a message to itself (straight
//! on its command connection, not behind its own outbound queue), which comes back behind
//! everything Redis queued for it (measured on its own clock, so clocks need not agree). When a probe is late by more than [`INTAKE_BEHIND`], the node tells every
//! node (and itself) to shed publishes to the lobbies whose broadcasts it is still working
//! through, before Redis's buffer for it overflows (Redis then drops the subscription, and
//! with it every broadcast in that buffer).

use std::time::Instant;

use futures_util::FutureExt;

use super::*;

/// A probe back later than this: this node is behind what Redis sends it.
const INTAKE_BEHIND: Duration = Duration::from_millis(200);
/// How often a probe goes out (one at a time).
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Messages already received are delivered in batches of at most this many (each member
/// woken once per batch).
const INTAKE_BATCH: usize = 64;
/// A probe not back after this is taken for lost (its publish failed): another goes out.
const PROBE_LOST: Duration = Duration::from_secs(2);

/// How far behind its pub/sub stream the node is, from its probes.
#[derive(Default)]
struct Intake {
    /// The probe out now: its number and when it left.
    out: Option<(u64, Instant)>,
    sent: u64,
    /// How late the last probe back was.
    last_delay: Duration,
}

impl Intake {
    /// A new probe's number, unless one is out (and not yet late enough to give up on).
    fn probe(&mut self) -> Option<u64> {
        if self.out.is_some_and(|(_, at)| at.elapsed() < PROBE_LOST) {
            return None;
        }
        self.sent += 1;
        self.out = Some((self.sent, Instant::now()));
        Some(self.sent)
    }

    /// Probe `n` came back.
    fn back(&mut self, n: u64) {
        if let Some((out, at)) = self.out
            && out == n
        {
            self.last_delay = at.elapsed();
            self.out = None;
        }
    }

    fn behind(&self) -> bool {
        let waiting = self.out.map_or(Duration::ZERO, |(_, at)| at.elapsed());
        self.last_delay.max(waiting) >= INTAKE_BEHIND
    }
}

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
                sink.subscribe(self.nodes_channel()).await?;
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
            let mut intake = Intake::default();
            let mut probes = tokio::time::interval(PROBE_EVERY);
            probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let probe_prefix = format!("probe{SEP}");
            loop {
                let message = tokio::select! {
                    () = self.stop.cancelled() => return,
                    _ = probes.tick() => {
                        if self.up.load(Ordering::Relaxed)
                            && let Some(mut con) = self.connection()
                            && let Some(n) = intake.probe()
                        {
                            let (channel, probe) =
                                (node_channel.clone(), format!("{probe_prefix}{n}{SEP}-"));
                            tokio::spawn(async move {
                                let _ = con.publish::<_, _, ()>(channel, probe).await;
                            });
                        }
                        continue;
                    }
                    m = stream.next() => m,
                };
                let Some(message) = message else { break };
                // What Redis sent together is delivered as one batch: each member is woken
                // once for all of it (no await in here: the batch is this thread's).
                let ended = {
                    let _batch = self.local.batch();
                    let mut next = Some(message);
                    let mut taken = 0;
                    let mut ended = false;
                    while let Some(message) = next.take() {
                        self.take(message, &node_channel, &probe_prefix, &mut intake);
                        taken += 1;
                        if taken < INTAKE_BATCH {
                            match stream.next().now_or_never() {
                                Some(Some(more)) => next = Some(more),
                                Some(None) => ended = true,
                                None => {}
                            }
                        }
                    }
                    ended
                };
                if ended {
                    break;
                }
            }
            self.subs.lock().await.sink = None;
            metrics::counter!("switchboard_redis_errors_total").increment(1);
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("redis pub/sub connection lost; reconnecting");
        }
    }

    /// Handles one message of the pub/sub stream: a probe back, or one for the node.
    fn take(
        &self,
        message: redis::Msg,
        node_channel: &str,
        probe_prefix: &str,
        intake: &mut Intake,
    ) {
        let channel = message.get_channel_name();
        let Ok(payload) = message.get_payload::<String>() else {
            return;
        };
        if channel == node_channel
            && let Some(rest) = payload.strip_prefix(probe_prefix)
        {
            if let Some(Ok(n)) = rest.split(SEP).next().map(str::parse) {
                intake.back(n);
            }
            return;
        }
        if intake.behind() {
            self.intake_behind(channel);
        }
        self.receive(channel, payload);
    }

    /// This node is behind what Redis sends it, and `channel` is a lobby's: every node, this
    /// one included, sheds publishes to that lobby for a while.
    fn intake_behind(&self, channel: &str) {
        if let Some(lobby) = channel.strip_prefix(&self.key("chan:lobby:"))
            && self.local.behind_upstream(lobby)
        {
            metrics::counter!("switchboard_redis_intake_behind_total").increment(1);
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
            "pressure" => {
                if rest != self.cfg.node_id {
                    self.local.pressed_elsewhere(arg);
                }
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

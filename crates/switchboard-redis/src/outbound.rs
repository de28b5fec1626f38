//! The node's outbound queue to Redis: bounded in bytes (`redis.outbound_max_bytes`), the
//! node's own messages with room of their own, and one publisher task sending whatever is
//! queued as one pipeline per batch.

use super::*;

impl RedisCluster {
    /// Queues a publish within the byte bound; whether it was queued. A refusal is counted:
    /// `switchboard_redis_overloaded_total` for data (whose caller is told),
    /// `switchboard_redis_publish_dropped_total` for the node's own messages.
    pub(crate) fn enqueue(&self, out: Outgoing, priority: Priority) -> bool {
        let cost = out.cost();
        let ceiling = match priority {
            Priority::Data => self.cfg.outbound_max_bytes,
            Priority::Control => self.cfg.outbound_max_bytes.saturating_mul(2),
        };
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                q.checked_add(cost).filter(|&after| after <= ceiling)
            })
            .is_ok();
        if reserved && self.publish.send(out).is_ok() {
            return true;
        }
        if reserved {
            self.queued.fetch_sub(cost, Ordering::SeqCst);
        }
        match priority {
            Priority::Data => metrics::counter!("switchboard_redis_overloaded_total").increment(1),
            Priority::Control => {
                metrics::counter!("switchboard_redis_publish_dropped_total").increment(1);
            }
        }
        false
    }

    /// Queues a caller's frame: what to tell the caller.
    pub(crate) fn enqueue_data(&self, out: Outgoing) -> Published {
        if !self.up.load(Ordering::Relaxed) {
            return Published::Unavailable;
        }
        if self.enqueue(out, Priority::Data) {
            Published::Queued
        } else {
            Published::Overloaded
        }
    }

    /// Publishes in order, pipelining whatever is waiting: one round trip per batch, whatever
    /// it holds (a direct frame's recipients are looked up inside Redis, by `DIRECT`). A
    /// broadcast to a lobby whose members are behind somewhere (word came while it waited
    /// here) is shed before Redis numbers it: no member sees a gap, and a sender waiting for
    /// its offset gets none.
    pub(crate) async fn publisher(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                () = self.stop.cancelled() => return,
                n = queue.recv_many(&mut batch, 256) => n,
            };
            if received == 0 {
                return;
            }
            let cost: usize = batch.iter().map(Outgoing::cost).sum();
            let Some(mut con) = self.connection() else {
                // Redis went away after these were queued: they are lost, and counted.
                metrics::counter!("switchboard_redis_publish_dropped_total")
                    .increment(batch.len() as u64);
                batch.clear();
                self.dequeued(cost);
                continue;
            };
            let mut pipe = redis::pipe();
            // The broadcasts whose offset someone waits for, in the order of their answers.
            let mut offsets = Vec::new();
            for out in batch.drain(..) {
                match out {
                    Outgoing::Publish { channel, payload } => {
                        pipe.publish(channel, payload).ignore();
                    }
                    Outgoing::Message {
                        lobby,
                        frame,
                        skip,
                        offset,
                    } => {
                        if self.local.pressed(&lobby) {
                            continue;
                        }
                        pipe.cmd("EVAL")
                            .arg(scripts::PUBLISH)
                            .arg(0)
                            .arg(&self.cfg.key_prefix)
                            .arg(lobby)
                            .arg(frame)
                            .arg(self.cfg.history.size)
                            .arg(self.cfg.history.ttl.as_millis().max(1) as u64)
                            .arg(self.local_ms())
                            .arg(skip)
                            .arg(format!("{:016x}", fastrand::u64(..)));
                        match offset {
                            Some(offset) => offsets.push(offset),
                            None => {
                                pipe.ignore();
                            }
                        }
                    }
                    Outgoing::User { kind, user, frame } => {
                        let payload = format!("{kind}{SEP}{user}{SEP}{frame}");
                        pipe.cmd("EVAL")
                            .arg(scripts::DIRECT)
                            .arg(0)
                            .arg(&self.cfg.key_prefix)
                            .arg(&self.cfg.node_id)
                            .arg(user)
                            .arg(payload)
                            .ignore();
                    }
                }
            }
            if pipe.is_empty() {
                // Everything was shed: nothing to send (an empty pipeline is an error).
                self.dequeued(cost);
                continue;
            }
            // Only the answers not ignored come back: the offsets asked for, in order.
            let sent = pipe.query_async::<Vec<u64>>(&mut con).await;
            self.dequeued(cost);
            match sent {
                Ok(numbered) => {
                    for (offset, to) in numbered.into_iter().zip(offsets) {
                        let _ = to.send(offset);
                    }
                }
                Err(error) => self.failed("publish", &error),
            }
        }
    }

    pub(crate) fn dequeued(&self, cost: usize) {
        let left = self.queued.fetch_sub(cost, Ordering::SeqCst) - cost;
        metrics::gauge!("switchboard_redis_outbound_bytes").set(left as f64);
    }
}

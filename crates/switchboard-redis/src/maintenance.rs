//! Liveness: the heartbeat and dead-node sweep (on Redis's clock), reconnecting, and the
//! resync that makes this node's entries in Redis match its connections.

use super::*;

impl RedisCluster {
    /// Keeps a connection and a heartbeat going; frees dead nodes; resyncs after trouble.
    pub(crate) async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let existing = self
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut con = match existing {
                Some(con) => con,
                None => match self.connect().await {
                    Ok(con) => {
                        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(con.clone());
                        con
                    }
                    Err(error) => {
                        self.failed("connect", &error);
                        continue;
                    }
                },
            };
            // No time from here: the script reads Redis's clock. (The round trip is timed
            // for the dashboard only.)
            let asked = std::time::Instant::now();
            let beat: Result<(i64, Vec<String>, Vec<String>), _> = self
                .scripts
                .heartbeat
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .arg(self.cfg.node_ttl.as_millis() as u64)
                .invoke_async(&mut con)
                .await;
            match beat {
                Ok((added, left, lost)) => {
                    let rtt = asked.elapsed().as_micros().clamp(1, u64::MAX as u128) as u64;
                    self.heartbeat_rtt_us.store(rtt, Ordering::Relaxed);
                    if !self.up.swap(true, Ordering::SeqCst) {
                        tracing::info!(node = %self.cfg.node_id, "redis connected");
                    }
                    metrics::gauge!("switchboard_redis_up").set(1.0);
                    // Each dead connection before its user's leave, as on a live node.
                    for item in &lost {
                        let mut fields = item.splitn(4, '\t');
                        if let (Some(node), Some(id), Some(user), Some(ip)) =
                            (fields.next(), fields.next(), fields.next(), fields.next())
                        {
                            self.local.connection_lost(node, id, user, ip);
                        }
                    }
                    self.announce_left(&left);
                    let forgotten = added == 1 && !self.conns_snapshot().is_empty();
                    if forgotten || self.needs_resync.swap(false, Ordering::SeqCst) {
                        self.resync(&mut con).await;
                    }
                }
                Err(error) => {
                    metrics::gauge!("switchboard_redis_up").set(0.0);
                    self.failed("heartbeat", &error);
                }
            }
        }
    }

    pub(crate) async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let timeout = self.cfg.heartbeat.min(Duration::from_millis(1_000));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        self.client.get_connection_manager_with_config(config).await
    }

    pub(crate) fn conns_snapshot(&self) -> Vec<(ConnectionInfo, Vec<LobbyCode>)> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Makes this node's entries in Redis match its connections exactly.
    pub(crate) async fn resync(&self, con: &mut ConnectionManager) {
        let _alone = self.registry.write().await;
        let conns = self.conns_snapshot();
        let mut invocation = self.scripts.resync.prepare_invoke();
        invocation
            .arg(&self.cfg.key_prefix)
            .arg(self.history_ttl_ms())
            .arg(&self.cfg.node_id);
        for (c, lobbies) in &conns {
            let joined: Vec<&str> = lobbies.iter().map(LobbyCode::as_str).collect();
            invocation
                .arg(c.id.as_str())
                .arg(c.user_id.as_str())
                .arg(joined.first().copied().unwrap_or(""))
                .arg(self.cfg.limits.ip_key(c.ip).to_string())
                .arg(joined.join(","));
        }
        let synced: Result<(Vec<String>, Vec<String>), _> = invocation.invoke_async(con).await;
        match synced {
            Ok((left, joined)) => {
                tracing::info!(connections = conns.len(), "re-registered with redis");
                self.announce(&left, false);
                self.announce(&joined, true);
            }
            Err(error) => self.failed("resync", &error),
        }
    }
}

//! `Cluster` for `RedisCluster`: what the manager asks of the cluster (admit, release,
//! publish, presence, counts), each a script call or a queued publish.

use super::*;

impl Cluster for RedisCluster {
    fn admit<'a>(
        &'a self,
        conn: &'a ConnectionInfo,
        lobby: Option<&'a LobbyCode>,
    ) -> BoxFuture<'a, Admission> {
        Box::pin(async move {
            // Subscribe before reserving: nothing published after our members exist is missed.
            if let Some(lobby) = lobby {
                self.subscribe_lobby(lobby.as_str()).await;
            }
            let registering = self.registry.read().await;
            let admission = self.admit_remote(conn, lobby).await;
            if !matches!(admission, Admission::Refused(_)) {
                let lobbies = lobby.into_iter().cloned().collect();
                self.conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(conn.id.as_str().to_owned(), (conn.clone(), lobbies));
            }
            drop(registering);
            if let (Admission::Refused(_), Some(lobby)) = (&admission, lobby) {
                self.unsubscribe_lobby(lobby.as_str()).await;
            }
            admission
        })
    }

    fn release<'a>(&'a self, conn: &'a ConnectionInfo) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let lobbies = {
                let _releasing = self.registry.read().await;
                self.conns
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(conn.id.as_str())
                    .map(|(_, lobbies)| lobbies)
                    .unwrap_or_default()
            };
            for lobby in &lobbies {
                self.unsubscribe_lobby(lobby.as_str()).await;
            }
            let Some(mut con) = self.connection() else {
                self.needs_resync.store(true, Ordering::SeqCst);
                return;
            };
            let released: Result<(Vec<String>, Vec<i64>), _> = self
                .scripts
                .release
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .arg(conn.id.as_str())
                .invoke_async(&mut con)
                .await;
            match released {
                Ok((left, users)) => self.announce_sized(&left, &users, false),
                Err(error) => self.failed("release", &error),
            }
        })
    }

    fn join<'a>(
        &'a self,
        conn: &'a ConnectionInfo,
        lobby: &'a LobbyCode,
    ) -> BoxFuture<'a, Admission> {
        Box::pin(async move {
            // As at admit: subscribed before the membership exists.
            self.subscribe_lobby(lobby.as_str()).await;
            let registering = self.registry.read().await;
            let Some(mut con) = self.connection() else {
                drop(registering);
                self.needs_resync.store(true, Ordering::SeqCst);
                self.record_membership(conn, lobby);
                return Admission::Unavailable;
            };
            let joined: Result<(String, i64, i64), _> = self
                .scripts
                .join
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(&self.cfg.node_id)
                .arg(conn.id.as_str())
                .arg(conn.user_id.as_str())
                .arg(lobby.as_str())
                .arg(self.cfg.limits.max_per_lobby)
                .invoke_async(&mut con)
                .await;
            let admission = match joined {
                Ok((status, joined, users)) if status == "ok" || status == "already" => {
                    self.record_membership(conn, lobby);
                    let events =
                        self.cfg.presence_events && users as usize <= self.cfg.events_max_members;
                    if joined == 1 {
                        let item = [format!("{lobby}\t{}", conn.user_id)];
                        self.announce_sized(&item, &[users], true);
                    }
                    Admission::Admitted {
                        presence_events: events,
                    }
                }
                Ok((status, _, _)) if status == "lobby_full" => {
                    Admission::Refused(DisconnectReason::LobbyFull)
                }
                // Released meanwhile: there is nobody to join.
                Ok(_) => Admission::Refused(DisconnectReason::ConnectionLost),
                Err(error) => {
                    self.failed("join", &error);
                    self.record_membership(conn, lobby);
                    Admission::Unavailable
                }
            };
            drop(registering);
            if let Admission::Refused(_) = admission {
                self.unsubscribe_lobby(lobby.as_str()).await;
            }
            admission
        })
    }

    fn leave<'a>(&'a self, conn: &'a ConnectionInfo, lobby: &'a LobbyCode) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let was_in = {
                let _leaving = self.registry.read().await;
                let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                conns.get_mut(conn.id.as_str()).is_some_and(|(_, lobbies)| {
                    let before = lobbies.len();
                    lobbies.retain(|l| l != lobby);
                    lobbies.len() < before
                })
            };
            if !was_in {
                return;
            }
            self.unsubscribe_lobby(lobby.as_str()).await;
            let Some(mut con) = self.connection() else {
                self.needs_resync.store(true, Ordering::SeqCst);
                return;
            };
            let parted: Result<(String, i64), _> = self
                .scripts
                .part
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(conn.id.as_str())
                .arg(conn.user_id.as_str())
                .arg(lobby.as_str())
                .invoke_async(&mut con)
                .await;
            match parted {
                Ok((left, users)) if !left.is_empty() => {
                    self.announce_sized(&[left], &[users], false);
                }
                Ok(_) => {}
                Err(error) => self.failed("leave", &error),
            }
        })
    }

    fn publish_message(
        &self,
        lobby: &LobbyCode,
        frame: &str,
        skip: Skip<'_>,
        offset: Option<OffsetSender>,
    ) -> Published {
        self.enqueue_data(Outgoing::Message {
            lobby: lobby.as_str().to_owned(),
            frame: frame.to_owned(),
            skip: skip.encode(),
            offset,
        })
    }

    fn history<'a>(
        &'a self,
        lobby: &'a LobbyCode,
        since: Option<u64>,
    ) -> BoxFuture<'a, Option<ClusterHistory>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let now = self.local_ms();
            let replayed: redis::RedisResult<(String, u64, Vec<String>)> = self
                .scripts
                .replay
                .arg(&self.cfg.key_prefix)
                .arg(self.history_ttl_ms())
                .arg(lobby.as_str())
                // No recovery asked: just the epoch and last offset.
                .arg(since.unwrap_or(u64::MAX / 2))
                .arg(now)
                .arg(self.history_ttl_ms())
                .arg(format!("{:016x}", fastrand::u64(..)))
                .invoke_async(&mut con)
                .await;
            let (epoch, last, flat) = match replayed {
                Ok(r) => r,
                Err(error) => {
                    self.failed("history", &error);
                    return None;
                }
            };
            let frames = flat
                .chunks(2)
                .filter_map(|pair| Some((pair[0].parse().ok()?, pair.get(1)?.clone())))
                .collect();
            Some(ClusterHistory {
                epoch,
                last,
                frames,
            })
        })
    }

    fn publish_user(&self, user: &str, frame: &str) -> Published {
        self.enqueue_data(Outgoing::User {
            kind: "user",
            user: user.to_owned(),
            frame: frame.to_owned(),
        })
    }

    fn membership_for_user(&self, user: &str, lobby: &LobbyCode, join: bool) -> Published {
        self.enqueue_data(Outgoing::User {
            kind: if join { "join" } else { "part" },
            user: user.to_owned(),
            frame: lobby.as_str().to_owned(),
        })
    }

    fn presence<'a>(&'a self, lobby: &'a LobbyCode) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let key = self.key(&format!("lobby:{lobby}:users"));
            match con.hkeys::<_, Vec<String>>(key).await {
                Ok(mut users) => {
                    users.sort_unstable();
                    Some(users)
                }
                Err(error) => {
                    self.failed("presence", &error);
                    None
                }
            }
        })
    }

    fn lobbies(&self) -> BoxFuture<'_, Option<Vec<ClusterLobby>>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let names: Vec<String> = match con.smembers(self.key("lobbies")).await {
                Ok(names) => names,
                Err(error) => {
                    self.failed("lobbies", &error);
                    return None;
                }
            };
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.get(self.key(&format!("lobby:{name}:count")))
                    .hlen(self.key(&format!("lobby:{name}:users")));
            }
            let counts: Vec<Option<usize>> = pipe.query_async(&mut con).await.ok()?;
            let mut lobbies: Vec<ClusterLobby> = names
                .into_iter()
                .zip(counts.chunks(2))
                .map(|(lobby, c)| ClusterLobby {
                    lobby,
                    connections: c[0].unwrap_or(0),
                    users: c.get(1).copied().flatten().unwrap_or(0),
                })
                .filter(|l| l.connections > 0)
                .collect();
            lobbies.sort_unstable_by(|a, b| a.lobby.cmp(&b.lobby));
            Some(lobbies)
        })
    }

    fn close_user<'a>(
        &'a self,
        user: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<usize>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let held: HashMap<String, String> =
                con.hgetall(self.key(&format!("user:{user}"))).await.ok()?;
            let mut elsewhere = 0;
            let mut nodes: Vec<&str> = Vec::new();
            for value in held.values() {
                let node = value.split('\t').next().unwrap_or_default();
                if node != self.cfg.node_id {
                    elsewhere += 1;
                    nodes.push(node);
                }
            }
            nodes.sort_unstable();
            nodes.dedup();
            for node in nodes {
                let payload = format!("close_user{SEP}{user}{SEP}{}", reason.as_str());
                self.enqueue(
                    Outgoing::Publish {
                        channel: self.node_channel(node),
                        payload,
                    },
                    Priority::Control,
                );
            }
            Some(elsewhere)
        })
    }

    fn send_to_connection<'a>(
        &'a self,
        id: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.send_to_owner(id, format!("direct{SEP}{id}{SEP}{frame}"), Priority::Data))
    }

    fn close_connection<'a>(
        &'a self,
        id: &'a str,
        reason: DisconnectReason,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.send_to_owner(
            id,
            format!("close{SEP}{id}{SEP}{}", reason.as_str()),
            Priority::Control,
        ))
    }

    fn forward_post<'a>(
        &'a self,
        id: &'a str,
        user: &'a str,
        lobby: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(self.send_to_owner(
            id,
            format!("post{SEP}{id}\t{user}\t{lobby}{SEP}{frame}"),
            Priority::Data,
        ))
    }

    fn lookup<'a>(&'a self, what: Lookup<'a>) -> BoxFuture<'a, Option<Vec<FoundConnection>>> {
        // Each Redis call is bounded by the connection's response timeout and each question
        // by `ASK_TIMEOUT`; this bounds the whole.
        Box::pin(async move {
            tokio::time::timeout(lookup::ASK_TIMEOUT * 4, self.lookup_everywhere(what))
                .await
                .ok()
                .flatten()
        })
    }

    fn stats(&self) -> BoxFuture<'_, Option<ClusterStats>> {
        Box::pin(async move {
            let mut con = self.connection()?;
            let (nodes, total, lobbies, users): (usize, Option<usize>, usize, Option<usize>) =
                redis::pipe()
                    .zcard(self.key("nodes"))
                    .get(self.key("count"))
                    .scard(self.key("lobbies"))
                    .get(self.key("users"))
                    .query_async(&mut con)
                    .await
                    .ok()?;
            Some(ClusterStats::new(
                nodes,
                total.unwrap_or(0),
                lobbies,
                users.unwrap_or(0),
            ))
        })
    }

    fn status(&self) -> &'static str {
        if self.up.load(Ordering::Relaxed) {
            "up"
        } else {
            "down"
        }
    }

    fn tell_pressure(&self, lobby: &LobbyCode) {
        // Best effort: a full outbound queue drops it, and the next reminder follows soon.
        let payload = format!("pressure{SEP}{lobby}{SEP}{}", self.cfg.node_id);
        self.enqueue(
            Outgoing::Publish {
                channel: self.nodes_channel(),
                payload,
            },
            Priority::Control,
        );
    }
}

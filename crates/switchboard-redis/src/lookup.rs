//! An operator's search across nodes (`Cluster::lookup`): Redis says which node holds which
//! connection (`user:{u}`, `node:{n}`, `mem:{id}`); the live details (round trip, queue,
//! transport, lobbies) are in the owner's memory only, so the searching node asks the owner
//! over its node channel and waits a bounded time for the answer.
//!
//! Bounds: at most [`MAX_LISTED`] connections per search (the per-user limit bounds them
//! already) and per answer; an answer at most [`MAX_REPLY_BYTES`] (the owner leaves out
//! what does not fit, the asker drops a larger one); at most [`MAX_ASKS`] questions
//! outstanding per node (a search past it gets its entries without live details, `busy`);
//! each question waits at most [`ASK_TIMEOUT`] (then `timeout`): a frozen or dead node never
//! hangs a search.

use std::time::Duration;

use super::*;

/// How long a question waits for its answer.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// Questions outstanding at once on one node.
pub const MAX_ASKS: usize = 64;
/// Connections listed per search and per answer.
pub const MAX_LISTED: usize = 100;
/// The largest answer, in bytes of JSON.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Encodes `details` as a JSON array of at most `max_bytes`: entries that would not fit are
/// left out (the asker shows them without live details).
pub(crate) fn encode_reply(details: &[ConnectionDetails], max_bytes: usize) -> String {
    let mut out = String::from("[");
    for d in details.iter().take(MAX_LISTED) {
        let Ok(one) = serde_json::to_string(d) else {
            continue;
        };
        // "," before it, "]" after.
        if out.len() + one.len() + 2 > max_bytes {
            break;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&one);
    }
    out.push(']');
    out
}

/// Removes a question from the outstanding ones when its asker stops waiting (answered,
/// timed out, or the search was dropped).
struct Outstanding<'a> {
    cluster: &'a RedisCluster,
    id: u64,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.cluster
            .asks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl RedisCluster {
    /// The other nodes' connections `what` names, each with its owner's live details when
    /// the owner answers within [`ASK_TIMEOUT`]. `None` when Redis cannot answer.
    pub(crate) async fn lookup_everywhere(&self, what: Lookup<'_>) -> Option<Vec<FoundConnection>> {
        let mut con = self.connection()?;
        let me = self.cfg.node_id.as_str();
        let mut found: Vec<FoundConnection> = match what {
            Lookup::User(user) => {
                let held: redis::RedisResult<HashMap<String, String>> =
                    con.hgetall(self.key(&format!("user:{user}"))).await;
                let held = match held {
                    Ok(held) => held,
                    Err(error) => {
                        self.failed("lookup", &error);
                        return None;
                    }
                };
                held.into_iter()
                    .filter_map(|(id, value)| {
                        let mut f = value.splitn(3, '\t');
                        let (node, _lobby, ip) = (f.next()?, f.next()?, f.next()?);
                        Some(FoundConnection::new(
                            node.to_owned(),
                            id,
                            user.to_owned(),
                            ip.to_owned(),
                            Vec::new(),
                        ))
                    })
                    .collect()
            }
            Lookup::Connection(id) => {
                let Some((node, _)) = id.rsplit_once('-') else {
                    return Some(Vec::new());
                };
                if node == me {
                    return Some(Vec::new());
                }
                let held: redis::RedisResult<Option<String>> =
                    con.hget(self.key(&format!("node:{node}")), id).await;
                let held = match held {
                    Ok(held) => held,
                    Err(error) => {
                        self.failed("lookup", &error);
                        return None;
                    }
                };
                held.and_then(|value| {
                    let mut f = value.splitn(3, '\t');
                    let (user, _lobby, ip) = (f.next()?, f.next()?, f.next()?);
                    Some(FoundConnection::new(
                        node.to_owned(),
                        id.to_owned(),
                        user.to_owned(),
                        ip.to_owned(),
                        Vec::new(),
                    ))
                })
                .into_iter()
                .collect()
            }
        };
        found.retain(|f| f.node != me);
        found.sort_unstable_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
        found.truncate(MAX_LISTED);
        if found.is_empty() {
            return Some(found);
        }
        // Each connection's lobbies as the cluster records them, for an owner that is silent.
        let mut pipe = redis::pipe();
        for f in &found {
            pipe.smembers(self.key(&format!("mem:{}", f.id)));
        }
        if let Ok(lobbies) = pipe.query_async::<Vec<Vec<String>>>(&mut con).await {
            for (f, mut l) in found.iter_mut().zip(lobbies) {
                l.sort_unstable();
                f.lobbies = l;
            }
        }
        let mut nodes: Vec<String> = found.iter().map(|f| f.node.clone()).collect();
        nodes.dedup();
        let answers = futures_util::future::join_all(nodes.iter().map(|n| self.ask(n, what))).await;
        for (node, answer) in nodes.iter().zip(answers) {
            for f in found.iter_mut().filter(|f| &f.node == node) {
                match &answer {
                    Ok(details) => match details.iter().find(|d| d.id == f.id) {
                        Some(d) => f.live = Some(d.clone()),
                        // Listed in Redis, not held by its node (any more): it just left, or
                        // did not fit in the answer.
                        None => f.unavailable = Some("not_reported"),
                    },
                    Err(why) => f.unavailable = Some(why),
                }
            }
        }
        Some(found)
    }

    /// Asks `node` for the live details of its connections `what` names; waits at most
    /// [`ASK_TIMEOUT`].
    async fn ask(
        &self,
        node: &str,
        what: Lookup<'_>,
    ) -> Result<Vec<ConnectionDetails>, &'static str> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = {
            let mut asks = self.asks.lock().unwrap_or_else(PoisonError::into_inner);
            if asks.len() >= MAX_ASKS {
                return Err("busy");
            }
            let id = self.next_ask.fetch_add(1, Ordering::Relaxed);
            asks.insert(id, tx);
            id
        };
        let _outstanding = Outstanding { cluster: self, id };
        let target = match what {
            Lookup::User(user) => format!("u{user}"),
            Lookup::Connection(conn) => format!("c{conn}"),
        };
        let payload = format!("ask{SEP}{id}\t{}{SEP}{target}", self.cfg.node_id);
        let queued = self.enqueue(
            Outgoing::Publish {
                channel: self.node_channel(node),
                payload,
            },
            Priority::Control,
        );
        if !queued {
            return Err("overloaded");
        }
        match tokio::time::timeout(ASK_TIMEOUT, rx).await {
            Ok(Ok(text)) if text.len() <= MAX_REPLY_BYTES => {
                serde_json::from_str(&text).map_err(|_| "bad_answer")
            }
            Ok(Ok(_)) => Err("too_large"),
            Ok(Err(_)) | Err(_) => Err("timeout"),
        }
    }

    /// Answers another node's question (`ask`): this node's connections it names, with their
    /// live details, on the asker's channel.
    pub(crate) fn answer(&self, question: &str, target: &str) {
        let Some((id, asker)) = question.split_once('\t') else {
            return;
        };
        let what = match target.split_at_checked(1) {
            Some(("u", user)) => Lookup::User(user),
            Some(("c", conn)) => Lookup::Connection(conn),
            _ => return,
        };
        let details = self.local.details(what, MAX_LISTED);
        let payload = format!(
            "reply{SEP}{id}{SEP}{}",
            encode_reply(&details, MAX_REPLY_BYTES)
        );
        self.enqueue(
            Outgoing::Publish {
                channel: self.node_channel(asker),
                payload,
            },
            Priority::Control,
        );
    }

    /// Hands an answer to the question waiting for it (none: it timed out already).
    pub(crate) fn answered(&self, id: &str, text: &str) {
        let Ok(id) = id.parse::<u64>() else { return };
        let waiting = self
            .asks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send(text.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(i: usize) -> ConnectionDetails {
        serde_json::from_value(serde_json::json!({
            "id": format!("n-{i}"), "user_id": "u", "protocol": 1, "ip": "127.0.0.1",
            "connected_at": 1, "lobbies": ["room"], "transport": "websocket", "queued": 0,
            "rtt_ms": null,
        }))
        .unwrap()
    }

    #[test]
    fn an_answer_stays_within_its_byte_and_count_bounds() {
        let many: Vec<ConnectionDetails> = (0..MAX_LISTED * 3).map(detail).collect();
        // Past the count bound: at most MAX_LISTED, whatever the room.
        let all = encode_reply(&many, usize::MAX);
        let parsed: Vec<ConnectionDetails> = serde_json::from_str(&all).unwrap();
        assert_eq!(parsed.len(), MAX_LISTED);
        // Past the byte bound: whole entries only, valid JSON, within the bound.
        for max in [2, 100, 1000, 4096] {
            let text = encode_reply(&many, max);
            assert!(text.len() <= max, "{} > {max}", text.len());
            let parsed: Vec<ConnectionDetails> = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed, many[..parsed.len()].to_vec());
            if max >= 1000 {
                assert!(!parsed.is_empty(), "some fit in {max}");
            }
        }
    }
}

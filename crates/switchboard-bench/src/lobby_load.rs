//! The two sides of a fan-out run, shared by `fanout`, its `--past-saturation` mode
//! (`overload`) and `stale`: the members, counting what they see in one [`Seen`], and the
//! publisher sending numbered broadcasts at a rate.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::cli::PayloadKind;
use crate::client::{OP_CLOSE, OP_TEXT, Ws, field_str, field_u64};
use crate::common::{histogram, now_us};

/// What the members have seen; shared by every member task on the one thread.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Messages with a smaller sequence number belong to an earlier step and are ignored.
    pub(crate) first_seq: Cell<u64>,
    pub(crate) received: Cell<u64>,
    /// Bytes the members read from their sockets since the last [`reset`](Self::reset)
    /// (what came on the wire: frame headers, compressed or plain payloads, pings).
    pub(crate) bytes_read: Cell<u64>,
    pub(crate) any: Cell<u64>,
    pub(crate) last_at: Cell<Option<Instant>>,
    pub(crate) hist: RefCell<Histogram<u64>>,
    pub(crate) closed: Cell<u64>,
    pub(crate) close_codes: RefCell<BTreeMap<String, u64>>,
    /// Close frames as the members saw them: `CODE reason` (or how the connection ended).
    pub(crate) close_reasons: RefCell<BTreeMap<String, u64>>,
    /// `--past-saturation`: follow each member's offsets and which broadcasts arrived.
    pub(crate) track: Cell<bool>,
    /// Broadcasts a member never got: the gaps between consecutive offsets it saw.
    pub(crate) gap_lost: Cell<u64>,
    /// Offsets seen again or out of order.
    pub(crate) repeats: Cell<u64>,
    /// `recovered` frames with `ok: false` (fell behind further than the history reaches).
    pub(crate) recovered_lost: Cell<u64>,
    /// Which of this step's broadcasts (by sequence number) reached at least one member.
    pub(crate) distinct: RefCell<Vec<bool>>,
}

impl Seen {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self {
            first_seq: Cell::new(u64::MAX),
            received: Cell::new(0),
            bytes_read: Cell::new(0),
            any: Cell::new(0),
            last_at: Cell::new(None),
            hist: RefCell::new(histogram()),
            closed: Cell::new(0),
            close_codes: RefCell::new(BTreeMap::new()),
            close_reasons: RefCell::new(BTreeMap::new()),
            track: Cell::new(false),
            gap_lost: Cell::new(0),
            repeats: Cell::new(0),
            recovered_lost: Cell::new(0),
            distinct: RefCell::new(Vec::new()),
        })
    }

    /// A member's text frame; `last` is the offset of the member's last broadcast (tracked
    /// with `--past-saturation` only).
    fn on_text(&self, payload: &[u8], last: &mut Option<u64>) {
        if self.track.get() {
            self.follow(payload, last);
        }
        let Some(seq) = field_u64(payload, b"\"s\":") else {
            return;
        };
        self.any.set(self.any.get() + 1);
        if seq < self.first_seq.get() {
            return;
        }
        if self.track.get() {
            let i = (seq - self.first_seq.get()) as usize;
            let mut distinct = self.distinct.borrow_mut();
            if i < MAX_DISTINCT {
                if distinct.len() <= i {
                    distinct.resize(i + 1, false);
                }
                distinct[i] = true;
            }
        }
        if let Some(sent) = field_u64(payload, b"\"t\":") {
            let now = now_us();
            self.received.set(self.received.get() + 1);
            self.last_at.set(Some(Instant::now()));
            let _ = self
                .hist
                .borrow_mut()
                .record(now.saturating_sub(sent).max(1));
        }
    }

    /// Offsets (Switchboard's broadcasts end with `"offset":N}`) and `recovered` ok:false.
    fn follow(&self, payload: &[u8], last: &mut Option<u64>) {
        if let Some(offset) = tail_offset(payload) {
            match *last {
                Some(prev) if offset > prev + 1 => {
                    self.gap_lost.set(self.gap_lost.get() + (offset - prev - 1));
                }
                Some(prev) if offset <= prev => self.repeats.set(self.repeats.get() + 1),
                _ => {}
            }
            *last = Some(offset);
        } else if payload.starts_with(br#"{"type":"recovered""#)
            && crate::client::find(payload, b"false").is_some()
        {
            self.recovered_lost.set(self.recovered_lost.get() + 1);
        }
    }

    /// Starts counting from sequence number `seq`.
    pub(crate) fn reset(&self, seq: u64) {
        self.first_seq.set(seq);
        self.received.set(0);
        self.bytes_read.set(0);
        self.last_at.set(None);
        self.hist.borrow_mut().reset();
        self.distinct.borrow_mut().clear();
    }

    /// How many of this step's broadcasts reached at least one member.
    pub(crate) fn distinct_seen(&self) -> u64 {
        self.distinct.borrow().iter().filter(|b| **b).count() as u64
    }

    /// Waits until no message has arrived for `quiet` (at most `limit`).
    pub(crate) async fn settle(&self, quiet: Duration, limit: Duration) {
        let start = Instant::now();
        let mut last = (self.any.get(), Instant::now());
        while start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let any = self.any.get();
            if any != last.0 {
                last = (any, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }
}

/// Sequence numbers of one step followed for `distinct` (a bound on its memory).
const MAX_DISTINCT: usize = 16 << 20;

/// The `N` of a frame ending with `"offset":N}` (how Switchboard numbers a broadcast).
pub(crate) fn tail_offset(payload: &[u8]) -> Option<u64> {
    let body = payload.strip_suffix(b"}")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, number) = body.split_at(body.len() - digits);
    if digits == 0 || !head.ends_with(br#""offset":"#) {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

/// A close frame's `CODE reason`, as the member saw it.
pub(crate) fn close_label(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let reason = String::from_utf8_lossy(reason);
            if reason.is_empty() {
                code.to_string()
            } else {
                format!("{code} {reason}")
            }
        }
        _ => "close without a code".into(),
    }
}

/// A member's life: read, measure, answer pings, until closed.
pub(crate) async fn member(mut ws: Ws, seen: Rc<Seen>) {
    let mut last = None;
    let mut close_reason = None;
    loop {
        let before = ws.bytes_read;
        let read = ws
            .read_some(&mut |f| {
                if f.opcode == OP_TEXT {
                    seen.on_text(f.payload, &mut last);
                } else if f.opcode == OP_CLOSE {
                    close_reason = Some(close_label(f.payload));
                }
            })
            .await;
        seen.bytes_read
            .set(seen.bytes_read.get() + (ws.bytes_read - before));
        if read.is_err() || ws.flush().await.is_err() || ws.closed.is_some() {
            seen.closed.set(seen.closed.get() + 1);
            let code = match (&read, ws.closed) {
                (Err(e), _) => format!("io:{:?}", e.kind()),
                (_, Some(Some(code))) => code.to_string(),
                _ => "eof".into(),
            };
            let reason = match (&read, close_reason) {
                (Err(e), _) => format!("io:{:?}", e.kind()),
                (_, Some(label)) => label,
                _ => "eof (no close frame)".into(),
            };
            *seen.close_codes.borrow_mut().entry(code).or_default() += 1;
            *seen.close_reasons.borrow_mut().entry(reason).or_default() += 1;
            return;
        }
    }
}

/// The publisher: frames carrying a sequence number, a send time and padding to `payload`
/// bytes of `data` (or a chat message object of about that size: [`PayloadKind::Chat`]),
/// sent at `rate` per second with `exclude_self`.
#[derive(Debug)]
pub(crate) struct Publisher {
    pub(crate) ws: Ws,
    pub(crate) next_seq: u64,
    pad: String,
    kind: PayloadKind,
    /// The `data` size asked for (`--payload`).
    size: usize,
    /// `error` frames the server answered with, by code (`rate_limited`: shed, `overloaded`).
    pub(crate) errors: ErrorFrames,
    /// Broadcasts sent together, in one write (`fanout --per-write`).
    pub(crate) per_write: u64,
}

/// The `error` frames a publisher got, by code.
#[derive(Debug, Default)]
pub(crate) struct ErrorFrames(pub(crate) BTreeMap<String, u64>);

impl ErrorFrames {
    fn on_frame(&mut self, f: &crate::client::Frame<'_>) {
        if f.opcode == OP_TEXT && f.payload.starts_with(br#"{"type":"error""#) {
            let code = field_str(f.payload, b"\"code\":").unwrap_or("?");
            *self.0.entry(code.to_owned()).or_default() += 1;
        }
    }

    /// Broadcasts refused: `rate_limited` (shed) and `overloaded`.
    pub(crate) fn refused(&self) -> u64 {
        ["rate_limited", "overloaded"]
            .iter()
            .filter_map(|c| self.0.get(*c))
            .sum()
    }
}

impl Publisher {
    pub(crate) fn new(ws: Ws, payload: usize, kind: PayloadKind) -> Self {
        // `{"s":SEQ,"t":MICROS,"p":"..."}` with typical widths of SEQ and MICROS.
        let overhead = r#"{"s":1234,"t":12345678,"p":""}"#.len();
        Self {
            ws,
            next_seq: 1,
            pad: "x".repeat(payload.saturating_sub(overhead)),
            kind,
            size: payload,
            errors: ErrorFrames::default(),
            per_write: 1,
        }
    }

    fn queue_one(&mut self) {
        let frame = match self.kind {
            PayloadKind::Padding => format!(
                r#"{{"type":"broadcast","exclude_self":true,"data":{{"s":{},"t":{},"p":"{}"}}}}"#,
                self.next_seq,
                now_us(),
                self.pad
            ),
            PayloadKind::Chat => format!(
                r#"{{"type":"broadcast","exclude_self":true,"data":{}}}"#,
                chat_message(self.next_seq, now_us(), self.size)
            ),
        };
        self.next_seq += 1;
        self.ws.text(frame.as_bytes());
    }

    /// Sends at `rate` per second for `secs`; returns messages sent and the time it took.
    /// Keeps reading its own socket (pings) meanwhile.
    pub(crate) async fn send_for(&mut self, rate: f64, secs: f64) -> anyhow::Result<(u64, f64)> {
        self.send_within(rate, secs, None).await
    }

    /// [`send_for`](Self::send_for), but sending nothing more once `limit` has passed (a
    /// server that stops reading the publisher makes it send fewer).
    pub(crate) async fn send_within(
        &mut self,
        rate: f64,
        secs: f64,
        limit: Option<Duration>,
    ) -> anyhow::Result<(u64, f64)> {
        let total = (rate * secs).round().max(1.0) as u64;
        let start = Instant::now();
        let tick = Duration::from_secs_f64((1.0 / rate).clamp(0.001, 0.05));
        let mut sent = 0;
        while sent < total {
            // A tick's grace past the limit, for the frames due just before it.
            if limit.is_some_and(|l| start.elapsed() >= l + Duration::from_millis(100)) {
                break;
            }
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1)
                .next_multiple_of(self.per_write)
                .min(total);
            while sent < due {
                self.queue_one();
                sent += 1;
            }
            match limit {
                // A server that stops reading the publisher does not stretch the step: what
                // it has not taken by the limit stays in `out` (counted as sent, reported as
                // unwritten bytes) and the step ends.
                Some(l) => {
                    let until =
                        tokio::time::Instant::from_std(start + l + Duration::from_millis(100));
                    match tokio::time::timeout_at(until, self.ws.flush()).await {
                        Ok(flushed) => flushed?,
                        Err(_) => break,
                    }
                }
                None => self.ws.flush().await?,
            }
            if sent >= total {
                break;
            }
            let errors = &mut self.errors;
            let mut on_frame = |f: crate::client::Frame<'_>| errors.on_frame(&f);
            tokio::select! {
                read = self.ws.read_some(&mut on_frame) => read?,
                () = tokio::time::sleep(tick) => {}
            }
            if self.ws.closed.is_some() {
                bail!("publisher closed by the server: {:?}", self.ws.closed);
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    }

    /// Reads (answers pings) for `d`.
    pub(crate) async fn idle_for(&mut self, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            while self.ws.closed.is_none() {
                let errors = &mut self.errors;
                let read = self.ws.read_some(&mut |f| errors.on_frame(&f)).await;
                if read.is_err() || self.ws.flush().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// Senders of [`chat_message`]s: id, display name, role.
const CHAT_USERS: [(&str, &str, &str); 6] = [
    ("u_7f3a91", "Ana Lima", "member"),
    ("u_02bc44", "Kenji Watanabe", "moderator"),
    ("u_9d1e07", "Fatima Zahra El Idrissi", "member"),
    ("u_55a0c3", "Ola Nordmann", "member"),
    ("u_e41f28", "Priya Raghunathan", "admin"),
    ("u_3b6d9a", "Tomás Ferreira", "member"),
];

/// Words the messages' text is drawn from (chat English, some names and numbers).
const CHAT_WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "I",
    "you",
    "it",
    "is",
    "that",
    "we",
    "on",
    "for",
    "this",
    "in",
    "just",
    "can",
    "be",
    "have",
    "not",
    "with",
    "so",
    "if",
    "but",
    "what",
    "will",
    "at",
    "my",
    "do",
    "are",
    "was",
    "deploy",
    "build",
    "release",
    "staging",
    "prod",
    "tonight",
    "tomorrow",
    "meeting",
    "standup",
    "ticket",
    "PR",
    "review",
    "merged",
    "broken",
    "fixed",
    "flaky",
    "test",
    "again",
    "thanks!",
    "lol",
    "ok",
    "sure",
    "sounds",
    "good",
    "looks",
    "great",
    "anyone",
    "seen",
    "error",
    "logs",
    "dashboard",
    "latency",
    "spike",
    "around",
    "3pm",
    "coffee?",
    "lunch",
    "back",
    "in",
    "5",
    "min",
    "brb",
    "👍",
    "🎉",
    "haha",
    "yes",
    "no",
    "maybe",
    "later",
    "Friday",
    "Monday",
    "customer",
    "reported",
    "timeout",
    "cache",
    "rollback",
    "config",
    "migration",
    "v4.12",
    "hotfix",
    "branch",
    "channel",
    "pinned",
    "docs",
];

/// A chat message as a chat application would broadcast it, with `"s"` (sequence number) and
/// `"t"` (send time, us) first for the members' bookkeeping; its text is drawn from
/// [`CHAT_WORDS`] by a generator seeded with `seq` (every message differs, as real ones do)
/// and is long enough that the object is about `size` bytes (its skeleton alone, ~600 bytes,
/// when `size` is smaller).
pub(crate) fn chat_message(seq: u64, t_us: u64, size: usize) -> String {
    let (user, name, role) = CHAT_USERS[(seq % CHAT_USERS.len() as u64) as usize];
    let (reply_user, reply_name, _) = CHAT_USERS[((seq + 3) % CHAT_USERS.len() as u64) as usize];
    let ms = t_us / 1000;
    let skeleton = |text: &str| {
        format!(
            concat!(
                r#"{{"s":{seq},"t":{t},"kind":"chat.message","id":"msg_{ms:x}{seq:06x}","#,
                r#""channel":{{"id":"c_general","name":"general","workspace":"acme-eng"}},"#,
                r#""user":{{"id":"{user}","name":"{name}","role":"{role}","#,
                r#""avatar":"https://cdn.acme.example/avatars/{user}/64.png","status":"online"}},"#,
                r#""text":"{text}","sent_at":"{iso}","edited_at":null,"#,
                r#""reply_to":{{"id":"msg_{ms:x}{prev:06x}","user":"{reply_user}","name":"{reply_name}"}},"#,
                r#""mentions":["{reply_user}"],"reactions":[{{"emoji":"👍","count":{r1}}},{{"emoji":"🎉","count":{r2}}}],"#,
                r#""attachments":[],"client":{{"platform":"web","version":"4.12.0","locale":"en-GB"}},"#,
                r#""thread":{{"replies":{replies},"last_reply_at":"{iso}"}}}}"#
            ),
            seq = seq,
            t = t_us,
            ms = ms,
            prev = seq.saturating_sub(1),
            user = user,
            name = name,
            role = role,
            text = text,
            iso = iso8601(ms),
            reply_user = reply_user,
            reply_name = reply_name,
            r1 = seq % 7,
            r2 = seq % 3,
            replies = seq % 12,
        )
    };
    let base = skeleton("").len();
    let mut text = String::new();
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut sentence_start = true;
    while base + text.len() < size {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = CHAT_WORDS[(x % CHAT_WORDS.len() as u64) as usize];
        if !text.is_empty() {
            text.push(' ');
        }
        if sentence_start {
            let mut chars = word.chars();
            if let Some(c) = chars.next() {
                text.extend(c.to_uppercase());
                text.push_str(chars.as_str());
            }
        } else {
            text.push_str(word);
        }
        sentence_start = x.is_multiple_of(9);
        if sentence_start {
            text.push(if x.is_multiple_of(2) { '.' } else { '?' });
        }
    }
    skeleton(&text)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch (UTC).
fn iso8601(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{chat_message, iso8601};
    use crate::client::field_u64;

    #[test]
    fn chat_messages_are_json_of_about_the_size_asked() {
        for seq in [1, 2, 77, 12_345] {
            let m = chat_message(seq, 1_765_000_000_123_456, 1024);
            let v: serde_json::Value = serde_json::from_str(&m).unwrap_or_default();
            assert_eq!(v["s"], seq, "{m}");
            assert_eq!(field_u64(m.as_bytes(), b"\"s\":"), Some(seq));
            assert_eq!(
                field_u64(m.as_bytes(), b"\"t\":"),
                Some(1_765_000_000_123_456)
            );
            assert!(
                (1024..1024 + 40).contains(&m.len()),
                "{} bytes: {m}",
                m.len()
            );
        }
        assert_ne!(chat_message(1, 0, 1024), chat_message(2, 0, 1024));
        assert_eq!(iso8601(1_796_670_000_123), "2026-12-07T19:00:00.123Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
    }
}

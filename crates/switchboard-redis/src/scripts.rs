//! The Lua scripts that keep the cluster's shared state. Each runs atomically in Redis, so a
//! reservation checks every limit and commits in one step, whatever the other nodes do.
//!
//! Keys (P = `redis.key_prefix`):
//! - `P nodes`                 ZSET node -> last heartbeat (ms, Redis's clock)
//! - `P node:{n}`              HASH connection id -> "user \t lobby \t ip" (node n's connections;
//!   `lobby` is the one it connected to, "" for a protocol-v2 connection in none)
//! - `P user:{u}`              HASH connection id -> "node \t lobby \t ip"
//! - `P mem:{id}`              SET the lobbies connection `id` is in (its memberships)
//! - `P lobby:{l}:users`       HASH user -> connections of the user in the lobby (presence)
//! - `P lobby:{l}:count`       connections in the lobby
//! - `P ip:{ip}`               connections from the IP
//! - `P count`, `P users`      connections and users on every node
//! - `P lobbies`               SET of lobbies with members
//! - `P timeline:{n}`          LIST node n's dashboard samples, newest first (`samples`)
//! - `P timelines`             ZSET node -> time of its last sample (`samples`)
//!
//! Every removal goes through `release`, which deletes the connection from its node's hash
//! first and does nothing if it was already gone: a connection is freed exactly once, whether
//! its node releases it, a replacement frees it, or a survivor cleans up its dead node.

/// Shared Lua functions, prepended to every script but `PUBLISH`. ARGV[1] is the key prefix,
/// ARGV[2] the history TTL (ms), for every script that uses them.
const PRELUDE: &str = r#"
local P, TTL = ARGV[1], tonumber(ARGV[2])
local function split(s)
  local a, b, c = string.match(s, '^([^\t]*)\t([^\t]*)\t(.*)$')
  return a, b, c
end
local function decr_or_del(key)
  if redis.call('DECR', key) <= 0 then redis.call('DEL', key) end
end
-- Puts connection `id` of `user` in `lobby`; returns nil if it was in already, else whether
-- its user joined the lobby.
local function join_lobby(id, user, lobby)
  if redis.call('SADD', P .. 'mem:' .. id, lobby) == 0 then return nil end
  if redis.call('INCR', P .. 'lobby:' .. lobby .. ':count') == 1 then
    redis.call('SADD', P .. 'lobbies', lobby)
    -- Members again: the numbering must not expire under them.
    redis.call('PERSIST', P .. 'lobby:' .. lobby .. ':epoch')
    redis.call('PERSIST', P .. 'lobby:' .. lobby .. ':offset')
  end
  return redis.call('HINCRBY', P .. 'lobby:' .. lobby .. ':users', user, 1) == 1
end
-- Takes connection `id` of `user` out of `lobby`; returns nil if it was not in it, else
-- "lobby\tuser" if its user left the lobby, or false.
local function leave_lobby(id, user, lobby)
  if redis.call('SREM', P .. 'mem:' .. id, lobby) == 0 then return nil end
  if redis.call('DECR', P .. 'lobby:' .. lobby .. ':count') <= 0 then
    redis.call('DEL', P .. 'lobby:' .. lobby .. ':count')
    redis.call('SREM', P .. 'lobbies', lobby)
    -- Nobody left: the lobby's numbering lives on for the history TTL, then a new epoch.
    redis.call('PEXPIRE', P .. 'lobby:' .. lobby .. ':epoch', TTL)
    redis.call('PEXPIRE', P .. 'lobby:' .. lobby .. ':offset', TTL)
  end
  if redis.call('HINCRBY', P .. 'lobby:' .. lobby .. ':users', user, -1) <= 0 then
    redis.call('HDEL', P .. 'lobby:' .. lobby .. ':users', user)
    return lobby .. '\t' .. user
  end
  return false
end
-- Frees one connection of `node` and its memberships; appends to `left` the "lobby\tuser" of
-- every lobby its user left. Returns whether it existed.
local function release(node, id, left)
  local info = redis.call('HGET', P .. 'node:' .. node, id)
  if not info then return false end
  redis.call('HDEL', P .. 'node:' .. node, id)
  local user, _, ip = split(info)
  decr_or_del(P .. 'count')
  for _, lobby in ipairs(redis.call('SMEMBERS', P .. 'mem:' .. id)) do
    local l = leave_lobby(id, user, lobby)
    if l then left[#left + 1] = l end
  end
  redis.call('DEL', P .. 'mem:' .. id)
  redis.call('HDEL', P .. 'user:' .. user, id)
  if redis.call('HLEN', P .. 'user:' .. user) == 0 then decr_or_del(P .. 'users') end
  decr_or_del(P .. 'ip:' .. ip)
  return true
end
-- Records one connection of `node`, in `lobby` unless it is ""; returns true if its user
-- joined the lobby.
local function add(node, id, user, lobby, ip)
  redis.call('INCR', P .. 'count')
  if redis.call('HLEN', P .. 'user:' .. user) == 0 then redis.call('INCR', P .. 'users') end
  redis.call('HSET', P .. 'user:' .. user, id, node .. '\t' .. lobby .. '\t' .. ip)
  redis.call('INCR', P .. 'ip:' .. ip)
  redis.call('HSET', P .. 'node:' .. node, id, user .. '\t' .. lobby .. '\t' .. ip)
  if lobby == '' then return false end
  return join_lobby(id, user, lobby) == true
end
-- The users of `lobby`, for whether it sends join/leave events.
local function lobby_users(lobby)
  return redis.call('HLEN', P .. 'lobby:' .. lobby .. ':users')
end
"#;

/// ARGV: P, TTL, node, id, user, lobby, ip, max_connections, max_per_lobby, max_per_user,
/// max_per_ip, policy. Returns {status, reason, joined, lobby users, {replaced "node\tid"},
/// {left "lobby\tuser"}}.
const ADMIT: &str = r#"
local node, id, user, lobby, ip = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local max_conn, max_lobby, max_user, max_ip =
  tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local policy = ARGV[12]
local existing = redis.call('HGETALL', P .. 'user:' .. user)
local olds = {}
for i = 1, #existing, 2 do
  local onode, olobby, oip = split(existing[i + 1])
  olds[#olds + 1] = {id = existing[i], node = onode, lobby = olobby, ip = oip}
end
local replaced = {}
if policy == 'replace' then
  replaced = olds
elseif policy == 'reject' then
  if #olds >= 1 then return {'refused', 'user_limit', 0, 0, {}, {}} end
elseif #olds >= max_user then
  return {'refused', 'user_limit', 0, 0, {}, {}}
end
local freed_lobby, freed_ip = 0, 0
for _, o in ipairs(replaced) do
  if lobby ~= '' and redis.call('SISMEMBER', P .. 'mem:' .. o.id, lobby) == 1 then
    freed_lobby = freed_lobby + 1
  end
  if o.ip == ip then freed_ip = freed_ip + 1 end
end
local function count(key) return tonumber(redis.call('GET', key) or '0') end
if count(P .. 'count') - #replaced + 1 > max_conn then
  return {'refused', 'server_full', 0, 0, {}, {}}
end
if lobby ~= '' and count(P .. 'lobby:' .. lobby .. ':count') - freed_lobby + 1 > max_lobby then
  return {'refused', 'lobby_full', 0, 0, {}, {}}
end
if count(P .. 'ip:' .. ip) - freed_ip + 1 > max_ip then
  return {'refused', 'ip_limit', 0, 0, {}, {}}
end
-- The new connection is added before the replaced ones go, so a replacement in the same
-- lobby never shows a leave/join pair.
local joined = add(node, id, user, lobby, ip)
local gone, left = {}, {}
for _, o in ipairs(replaced) do
  release(o.node, o.id, left)
  gone[#gone + 1] = o.node .. '\t' .. o.id
end
local members = lobby ~= '' and lobby_users(lobby) or 0
return {'ok', '', joined and 1 or 0, members, gone, left}
"#;

/// ARGV: P, TTL, node, id. Returns {{"lobby\tuser" left}, {their lobbies' users}}.
const RELEASE: &str = r#"
local node, id = ARGV[3], ARGV[4]
local left, users = {}, {}
release(node, id, left)
for i, l in ipairs(left) do users[i] = lobby_users(string.match(l, '^([^\t]*)')) end
return {left, users}
"#;

/// ARGV: P, TTL, node, id, user, lobby, max_per_lobby. Puts a live connection in one more
/// lobby, within the lobby's cap cluster-wide. Returns {status, joined (0/1), lobby users}:
/// status `ok`, `already` (it was in it), `lobby_full`, or `gone` (the connection was
/// released meanwhile: nothing is recorded for it).
const JOIN: &str = r#"
local node, id, user, lobby, max = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
if redis.call('HEXISTS', P .. 'node:' .. node, id) == 0 then return {'gone', 0, 0} end
if redis.call('SISMEMBER', P .. 'mem:' .. id, lobby) == 1 then
  return {'already', 0, lobby_users(lobby)}
end
if tonumber(redis.call('GET', P .. 'lobby:' .. lobby .. ':count') or '0') >= max then
  return {'lobby_full', 0, 0}
end
local joined = join_lobby(id, user, lobby)
return {'ok', joined and 1 or 0, lobby_users(lobby)}
"#;

/// ARGV: P, TTL, id, user, lobby. Takes a live connection out of one lobby. Returns
/// {left "lobby\tuser" or "", lobby users}.
const PART: &str = r#"
local id, user, lobby = ARGV[3], ARGV[4], ARGV[5]
local l = leave_lobby(id, user, lobby)
return {l or '', lobby_users(lobby)}
"#;

/// ARGV: P, TTL, node, ttl (ms). Refreshes this node, frees every node silent for longer
/// than the TTL. Returns {1 if this node was unknown (first beat, or cleaned up by others),
/// {left "lobby\tuser"}, {lost "node\tid\tuser\tip": the dead nodes' connections}}.
///
/// The time is Redis's (`TIME`), never a node's: every heartbeat and every sweep reads one
/// clock, so a node whose clock is off neither frees the others nor gets freed.
const HEARTBEAT: &str = r#"
local node, ttl = ARGV[3], tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', P .. 'nodes', now, node)
local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', now - ttl)
local left, lost = {}, {}
for _, d in ipairs(dead) do
  if d ~= node then
    local conns = redis.call('HGETALL', P .. 'node:' .. d)
    for i = 1, #conns, 2 do
      local user, _, ip = split(conns[i + 1])
      if release(d, conns[i], left) then
        lost[#lost + 1] = d .. '\t' .. conns[i] .. '\t' .. user .. '\t' .. ip
      end
    end
    redis.call('DEL', P .. 'node:' .. d)
    redis.call('ZREM', P .. 'nodes', d)
  end
end
return {added, left, lost}
"#;

/// ARGV: P, TTL, node, then (id, user, lobby, ip, lobbies) for every connection the node holds
/// now, `lobbies` being all its lobbies joined by ",". Makes the node's entries and their
/// memberships match exactly. Returns {{left}, {joined "lobby\tuser"}}.
const RESYNC: &str = r#"
local node = ARGV[3]
local want = {}
for i = 4, #ARGV, 5 do
  local lobbies = {}
  for l in string.gmatch(ARGV[i + 4], '[^,]+') do lobbies[l] = true end
  want[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], lobbies}
end
local left, joined = {}, {}
for _, id in ipairs(redis.call('HKEYS', P .. 'node:' .. node)) do
  local c = want[id]
  if not c then
    release(node, id, left)
  else
    -- Still here: its memberships are made to match.
    for _, l in ipairs(redis.call('SMEMBERS', P .. 'mem:' .. id)) do
      if not c[4][l] then
        local gone = leave_lobby(id, c[1], l)
        if gone then left[#left + 1] = gone end
      end
    end
    for l in pairs(c[4]) do
      if join_lobby(id, c[1], l) then joined[#joined + 1] = l .. '\t' .. c[1] end
    end
    want[id] = nil
  end
end
for id, c in pairs(want) do
  add(node, id, c[1], '', c[3])
  for l in pairs(c[4]) do
    if join_lobby(id, c[1], l) then joined[#joined + 1] = l .. '\t' .. c[1] end
  end
end
return {left, joined}
"#;

/// ARGV: P, TTL, node. Removes a node that leaves gracefully (after releasing its connections).
const LEAVE: &str = r#"
local node = ARGV[3]
local left = {}
for _, id in ipairs(redis.call('HKEYS', P .. 'node:' .. node)) do release(node, id, left) end
redis.call('DEL', P .. 'node:' .. node)
redis.call('ZREM', P .. 'nodes', node)
return left
"#;

/// ARGV: P, lobby, frame (without offset), history size, ttl ms, now ms, exclude user,
/// fresh epoch. Numbers the broadcast cluster-wide, keeps it in the lobby's capped stream,
/// and publishes it on the lobby's channel for every node, the sender's included, so all
/// nodes deliver the lobby's broadcasts in one order. Returns the offset.
///
/// The offset counter, the epoch and the stream expire `ttl` after the lobby's last
/// broadcast: a lobby quiet for that long starts a new epoch.
pub(crate) const PUBLISH: &str = r#"
local P, lobby, frame = ARGV[1], ARGV[2], ARGV[3]
local size, ttl, now, exclude, fresh = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local base = P .. 'lobby:' .. lobby
local epoch = redis.call('GET', base .. ':epoch')
if not epoch then
  epoch = fresh
  redis.call('SET', base .. ':epoch', epoch)
end
local offset = redis.call('INCR', base .. ':offset')
local numbered = string.sub(frame, 1, -2) .. ',"offset":' .. offset .. '}'
if size > 0 then
  redis.call('XADD', base .. ':history', 'MAXLEN', size, offset .. '-1', 'f', numbered, 't', now)
end
redis.call('PEXPIRE', base .. ':history', ttl)
if redis.call('EXISTS', base .. ':count') == 0 then
  -- A broadcast to an empty lobby: its numbering lasts as long as its history.
  redis.call('PEXPIRE', base .. ':epoch', ttl)
  redis.call('PEXPIRE', base .. ':offset', ttl)
end
local sep = string.char(31)
redis.call('PUBLISH', P .. 'chan:lobby:' .. lobby,
  '#M' .. sep .. epoch .. sep .. offset .. sep .. exclude .. sep .. numbered)
return offset
"#;

/// ARGV: P, node, user, payload. Publishes `payload` on the channel of every other node that
/// holds a connection of `user`, once per node: the lookup happens in Redis, inside the
/// publisher's pipeline, so a direct frame costs no round trip of its own. Returns how many
/// nodes.
pub(crate) const DIRECT: &str = r#"
local P, me, user, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seen, n = {}, 0
for _, v in ipairs(redis.call('HVALS', P .. 'user:' .. user)) do
  local node = string.match(v, '^([^\t]*)')
  if node ~= me and not seen[node] then
    seen[node] = true
    n = n + 1
    redis.call('PUBLISH', P .. 'chan:node:' .. node, payload)
  end
end
return n
"#;

/// ARGV: P, TTL, lobby, since, now ms, ttl ms, fresh epoch. Creates the epoch if the lobby has
/// none. Returns {epoch or '', last offset, {offset, frame,
/// offset, frame, ...}} for the broadcasts after `since` still in the stream and younger than
/// the TTL.
const REPLAY: &str = r#"
local lobby, since, now, ttl, fresh =
  ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local base = P .. 'lobby:' .. lobby
-- The epoch exists from the first `welcome` on, so clients keep the one they saw.
redis.call('SET', base .. ':epoch', fresh, 'NX')
local epoch = redis.call('GET', base .. ':epoch')
local last = tonumber(redis.call('GET', base .. ':offset') or '0')
local out = {}
if since < last then
  for _, e in ipairs(redis.call('XRANGE', base .. ':history', (since + 1) .. '-1', '+')) do
    local f, t = nil, 0
    for i = 1, #e[2], 2 do
      if e[2][i] == 'f' then f = e[2][i + 1] elseif e[2][i] == 't' then t = tonumber(e[2][i + 1]) end
    end
    if f and now - t < ttl then
      out[#out + 1] = string.match(e[1], '^(%d+)')
      out[#out + 1] = f
    end
  end
end
return {epoch, last, out}
"#;

/// The compiled scripts (loaded with EVALSHA, falling back to EVAL).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) admit: redis::Script,
    pub(crate) release: redis::Script,
    pub(crate) heartbeat: redis::Script,
    pub(crate) resync: redis::Script,
    pub(crate) leave: redis::Script,
    pub(crate) join: redis::Script,
    pub(crate) part: redis::Script,
    pub(crate) replay: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}{body}"));
        Self {
            admit: script(ADMIT),
            release: script(RELEASE),
            heartbeat: script(HEARTBEAT),
            resync: script(RESYNC),
            leave: script(LEAVE),
            join: script(JOIN),
            part: script(PART),
            replay: script(REPLAY),
        }
    }
}

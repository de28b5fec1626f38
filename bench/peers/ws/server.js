'use strict';
// The `ws` peer: an idiomatic Node server on the npm `ws` package speaking the subset of
// Switchboard's protocol v1 the benchmarks use (bench/peers/README.md). One Set per lobby,
// broadcast serialized once and sent to each member with ws's own buffering (no bounded
// queue: a slow reader grows memory), the documented isAlive heartbeat for stale clients.
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 8081);
const PING_INTERVAL_MS = Number(process.env.PING_INTERVAL_MS || 20000);
// Limits raised for the benchmark (the process cap of 20,000 open files binds first).
const MAX_CONNECTIONS = Number(process.env.MAX_CONNECTIONS || 100000);
const MAX_PER_LOBBY = Number(process.env.MAX_PER_LOBBY || 100000);
const LOBBY_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

const lobbies = new Map(); // lobby -> Set<ws>
const users = new Map(); // user id -> Set<ws>
const everyone = new Set();
let nextId = 0;

const send = (ws, obj) => ws.send(JSON.stringify(obj));
const error = (ws, code, message, id) =>
  send(ws, id === undefined ? { type: 'error', code, message } : { type: 'error', code, message, id });

function refuse(ws, code, reason) {
  if (code === 4002) send(ws, { type: 'goodbye', code, reason, retry_after_ms: 2000 + Math.floor(Math.random() * 8000) });
  ws.close(code, reason);
}

// PER_MESSAGE_DEFLATE=1: ws's permessage-deflate, set to match Switchboard's (docs/protocol.md,
// "Compression"): no context takeover both ways (a fresh window per message), messages of 256
// bytes or more compressed, zlib level 3. ws still compresses every send on the connection's
// own zlib stream (a broadcast is compressed once per member) and keeps that stream (reset,
// not freed) once the connection has sent one compressed message.
const PER_MESSAGE_DEFLATE = process.env.PER_MESSAGE_DEFLATE === '1'
  ? {
      threshold: 256,
      serverNoContextTakeover: true,
      clientNoContextTakeover: true,
      zlibDeflateOptions: { level: 3 },
    }
  : false;
const wss = new WebSocketServer({ noServer: true, maxPayload: 65536, perMessageDeflate: PER_MESSAGE_DEFLATE, clientTracking: false });

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404).end(req.url === '/healthz' ? 'ok' : '');
});

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  const m = /^\/ws\/([^/]+)$/.exec(url.pathname);
  if (!m || !LOBBY_RE.test(m[1])) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    return;
  }
  const auth = req.headers.authorization || '';
  const token = url.searchParams.get('token') || (auth.toLowerCase().startsWith('bearer ') ? auth.slice(7) : null);
  wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws, m[1], token));
});

function onConnection(ws, lobby, token) {
  ws.on('error', () => {});
  if (!token) return ws.close(4001, 'unauthorized'); // dev mode: the token is the user id
  const members = lobbies.get(lobby);
  if (everyone.size >= MAX_CONNECTIONS) return refuse(ws, 4002, 'server_full');
  if (members && members.size >= MAX_PER_LOBBY) return refuse(ws, 4002, 'lobby_full');
  ws.user = token;
  ws.lobby = lobby;
  ws.isAlive = true;
  (members || lobbies.set(lobby, new Set()).get(lobby)).add(ws);
  (users.get(token) || users.set(token, new Set()).get(token)).add(ws);
  everyone.add(ws);
  send(ws, {
    type: 'welcome', connection_id: `ws-${++nextId}`, user_id: token, lobby,
    ping_interval_ms: PING_INTERVAL_MS, server_time: Date.now(), protocol: 1, presence_events: false,
  });
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data, isBinary) => onMessage(ws, data, isBinary));
  ws.on('close', () => forget(ws));
}

function forget(ws) {
  everyone.delete(ws);
  const members = lobbies.get(ws.lobby);
  if (members && members.delete(ws) && members.size === 0) lobbies.delete(ws.lobby);
  const tabs = users.get(ws.user);
  if (tabs && tabs.delete(ws) && tabs.size === 0) users.delete(ws.user);
}

function onMessage(ws, data, isBinary) {
  ws.isAlive = true; // any inbound frame is proof of life
  if (isBinary) return ws.close(1003, 'unsupported_data');
  let msg;
  try { msg = JSON.parse(data); } catch { return error(ws, 'invalid_json', 'not JSON'); }
  if (msg === null || typeof msg !== 'object' || typeof msg.type !== 'string') {
    return error(ws, 'invalid_message', 'expected an object with a string type');
  }
  switch (msg.type) {
    case 'health_pong':
      return;
    case 'broadcast': {
      if (msg.data === undefined) return error(ws, 'missing_field', 'missing field `data`', msg.id);
      // Serialized once; the same Buffer goes to every member.
      const frame = Buffer.from(JSON.stringify({ type: 'message', lobby: ws.lobby, from: ws.user, data: msg.data }));
      for (const peer of lobbies.get(ws.lobby) || []) {
        if (msg.exclude_self === true && peer === ws) continue;
        if (peer.readyState === WebSocket.OPEN) peer.send(frame, { binary: false });
      }
      return;
    }
    case 'direct': {
      if (msg.data === undefined || msg.to === undefined) return error(ws, 'missing_field', 'missing field', msg.id);
      const frame = Buffer.from(JSON.stringify({ type: 'direct', from: ws.user, data: msg.data }));
      for (const peer of users.get(String(msg.to)) || []) peer.send(frame, { binary: false });
      return;
    }
    case 'presence': {
      const names = new Set();
      for (const peer of lobbies.get(ws.lobby) || []) names.add(peer.user);
      return send(ws, { type: 'presence', lobby: ws.lobby, users: [...names].sort() });
    }
    default:
      return error(ws, 'unknown_type', `unknown type ${msg.type}`, msg.id);
  }
}

// ws's documented heartbeat: a client silent for a whole interval is terminated at the next
// tick (so a dead peer goes within one to two intervals); the seed's health_ping goes too.
const heartbeat = setInterval(() => {
  const ping = JSON.stringify({ type: 'health_ping', timestamp: Date.now() });
  for (const ws of everyone) {
    if (!ws.isAlive) { ws.terminate(); forget(ws); continue; }
    ws.isAlive = false;
    ws.ping();
    ws.send(ping);
  }
}, PING_INTERVAL_MS);

server.listen(PORT, HOST, () => console.log(`listening on ${HOST}:${server.address().port}${PER_MESSAGE_DEFLATE ? ' (permessage-deflate on)' : ''}`));
const stop = () => { clearInterval(heartbeat); for (const ws of everyone) ws.close(1001, 'server_shutdown'); server.close(); setTimeout(() => process.exit(0), 500).unref(); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

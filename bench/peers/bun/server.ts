// The Bun peer: Bun's built-in WebSocket server (uWebSockets inside), written the way Bun's
// docs suggest (`Bun.serve({ websocket })`, one pub/sub topic per lobby, `ws.subscribe`,
// `publish`), speaking the subset of Switchboard's protocol v1 the benchmarks use, exactly as
// bench/peers/ws/server.js does: `welcome` after the upgrade, `health_pong`, `broadcast` (->
// `message` to the lobby's topic, serialized once; `exclude_self` is uWebSockets' own
// `ws.publish`, which skips the sender), `direct`, `presence`. Tokens are dev-mode: the token
// is the user id. Health checks as in the ws peer: every PING_INTERVAL_MS a protocol ping and a
// `health_ping` to every connection, and a connection silent for a whole interval is closed at
// the next tick. uWebSockets' own idle timeout stays at Bun's default (120 s), which the
// heartbeat's answers keep from firing.
import type { ServerWebSocket } from "bun";

const HOST = process.env.HOST || "127.0.0.1";
const PORT = Number(process.env.PORT || 8083);
const PING_INTERVAL_MS = Number(process.env.PING_INTERVAL_MS || 20000);
// Limits raised for the benchmark (the process cap of 20,000 open files binds first).
const MAX_CONNECTIONS = Number(process.env.MAX_CONNECTIONS || 100000);
const MAX_PER_LOBBY = Number(process.env.MAX_PER_LOBBY || 100000);
const LOBBY_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

type Data = { user: string; lobby: string; alive: boolean };
type Ws = ServerWebSocket<Data>;

const lobbies = new Map<string, Set<Ws>>(); // lobby -> members (presence, lobby_full)
const users = new Map<string, Set<Ws>>(); // user id -> connections (direct)
const everyone = new Set<Ws>();
let nextId = 0;

const send = (ws: Ws, obj: unknown) => ws.send(JSON.stringify(obj));
const error = (ws: Ws, code: string, message: string, id?: unknown) =>
  send(ws, id === undefined ? { type: "error", code, message } : { type: "error", code, message, id });

function refuse(ws: Ws, code: number, reason: string) {
  if (code === 4002) send(ws, { type: "goodbye", code, reason, retry_after_ms: 2000 + Math.floor(Math.random() * 8000) });
  ws.close(code, reason);
}

function forget(ws: Ws) {
  if (!everyone.delete(ws)) return;
  const { lobby, user } = ws.data;
  const members = lobbies.get(lobby);
  if (members && members.delete(ws) && members.size === 0) lobbies.delete(lobby);
  const tabs = users.get(user);
  if (tabs && tabs.delete(ws) && tabs.size === 0) users.delete(user);
}

const server = Bun.serve<Data>({
  hostname: HOST,
  port: PORT,
  fetch(req, server) {
    const url = new URL(req.url);
    if (url.pathname === "/healthz") return new Response("ok");
    const m = /^\/ws\/([^/]+)$/.exec(url.pathname);
    if (!m || !LOBBY_RE.test(m[1])) return new Response(null, { status: m ? 400 : 404 });
    const auth = req.headers.get("authorization") || "";
    const token = url.searchParams.get("token") || (auth.toLowerCase().startsWith("bearer ") ? auth.slice(7) : "");
    if (server.upgrade(req, { data: { user: token, lobby: m[1], alive: true } })) return;
    return new Response("upgrade failed", { status: 400 });
  },
  websocket: {
    maxPayloadLength: 65536,
    perMessageDeflate: false,
    open(ws) {
      const { user, lobby } = ws.data;
      if (!user) return ws.close(4001, "unauthorized");
      const members = lobbies.get(lobby);
      if (everyone.size >= MAX_CONNECTIONS) return refuse(ws, 4002, "server_full");
      if (members && members.size >= MAX_PER_LOBBY) return refuse(ws, 4002, "lobby_full");
      (members || lobbies.set(lobby, new Set()).get(lobby)!).add(ws);
      (users.get(user) || users.set(user, new Set()).get(user)!).add(ws);
      everyone.add(ws);
      ws.subscribe(lobby);
      send(ws, {
        type: "welcome", connection_id: `bun-${++nextId}`, user_id: user, lobby,
        ping_interval_ms: PING_INTERVAL_MS, server_time: Date.now(), protocol: 1, presence_events: false,
      });
    },
    pong(ws) {
      ws.data.alive = true;
    },
    message(ws, data) {
      ws.data.alive = true; // any inbound frame is proof of life
      if (typeof data !== "string") return ws.close(1003, "unsupported_data");
      let msg: any;
      try { msg = JSON.parse(data); } catch { return error(ws, "invalid_json", "not JSON"); }
      if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") {
        return error(ws, "invalid_message", "expected an object with a string type");
      }
      const { user, lobby } = ws.data;
      switch (msg.type) {
        case "health_pong":
          return;
        case "broadcast": {
          if (msg.data === undefined) return error(ws, "missing_field", "missing field `data`", msg.id);
          // Serialized once; uWebSockets writes it to every subscriber of the lobby's topic.
          const frame = JSON.stringify({ type: "message", lobby, from: user, data: msg.data });
          if (msg.exclude_self === true) ws.publish(lobby, frame);
          else server.publish(lobby, frame);
          return;
        }
        case "direct": {
          if (msg.data === undefined || msg.to === undefined) return error(ws, "missing_field", "missing field", msg.id);
          const frame = JSON.stringify({ type: "direct", from: user, data: msg.data });
          for (const peer of users.get(String(msg.to)) || []) peer.send(frame);
          return;
        }
        case "presence": {
          const names = new Set<string>();
          for (const peer of lobbies.get(lobby) || []) names.add(peer.data.user);
          return send(ws, { type: "presence", lobby, users: [...names].sort() });
        }
        default:
          return error(ws, "unknown_type", `unknown type ${msg.type}`, msg.id);
      }
    },
    close(ws) {
      forget(ws);
    },
  },
});

// The ws peer's heartbeat: a client silent for a whole interval is terminated at the next tick
// (so a dead peer goes within one to two intervals); the seed's health_ping goes too.
const heartbeat = setInterval(() => {
  const ping = JSON.stringify({ type: "health_ping", timestamp: Date.now() });
  for (const ws of everyone) {
    if (!ws.data.alive) { ws.terminate(); forget(ws); continue; }
    ws.data.alive = false;
    ws.ping();
    ws.send(ping);
  }
}, PING_INTERVAL_MS);

console.log(`listening on ${server.hostname}:${server.port}`);
const stop = () => {
  clearInterval(heartbeat);
  for (const ws of everyone) ws.close(1001, "server_shutdown");
  setTimeout(() => { server.stop(true); process.exit(0); }, 500);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

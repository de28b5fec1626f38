// A complete backend for the standalone server, with nothing but Node's standard library:
// it verifies every call's signature, admits clients by their session cookie (the connect
// proxy), decides joins, answers RPC, and records webhook events (de-duplicated by id).
//
//   SECRET=change-me PORT=9000 node examples/backend/receiver.mjs
//
// and run the server with
//
//   SWITCHBOARD_WEBHOOK__SECRET=change-me \
//   SWITCHBOARD_WEBHOOK__URL=http://127.0.0.1:9000/webhook \
//   SWITCHBOARD_AUTH__CONNECT_URL=http://127.0.0.1:9000/connect \
//   SWITCHBOARD_AUTH__JOIN_URL=http://127.0.0.1:9000/join \
//   SWITCHBOARD_WEBHOOK__RPC_URL=http://127.0.0.1:9000/rpc \
//   SWITCHBOARD_API__KEY=... cargo run --release -p switchboard-server
//
// It prints one JSON line per thing it hears on stdout (`{"listening":PORT}` first), so a
// test (crates/switchboard-server/tests/example_backend.rs) can follow it.
import crypto from "node:crypto";
import http from "node:http";

const SECRET = process.env.SECRET ?? "change-me";
const PORT = Number(process.env.PORT ?? 9000);
const TOLERANCE_S = 300;

/** The sessions this backend knows: cookie value -> who, and which lobbies. */
const SESSIONS = new Map([
  ["s-alice", { user_id: "alice", lobbies: ["room", "team-*", "vip-*"] }],
  ["s-bob", { user_id: "bob", lobbies: null }],
]);
const seen = new Set();

/** `Switchboard-Signature: t=..,v1=..[,v1=..]` over "t.body", within the tolerance. */
function verify(header, body) {
  const parts = (header ?? "").split(",").map((p) => p.split("="));
  const t = parts.find(([k]) => k === "t")?.[1];
  if (!t || Math.abs(Date.now() / 1000 - Number(t)) > TOLERANCE_S) return false;
  const expected = crypto.createHmac("sha256", SECRET).update(`${t}.`).update(body).digest("hex");
  return parts.some(([k, v]) => k === "v1" && v.length === expected.length &&
    crypto.timingSafeEqual(Buffer.from(v), Buffer.from(expected)));
}

function cookie(header, name) {
  for (const part of (header ?? "").split(";")) {
    const [k, v] = part.trim().split("=");
    if (k === name) return v;
  }
  return undefined;
}

const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

/** What each route answers: [status, JSON body or null]. */
const routes = {
  "/webhook": ({ events }) => {
    for (const event of events) {
      if (seen.has(event.id)) continue; // delivery is at least once
      seen.add(event.id);
      say({ event });
    }
    return [200, null];
  },
  "/connect": (attempt) => {
    const session = SESSIONS.get(cookie(attempt.headers.cookie, "session"));
    say({ connect: attempt.transport, admitted: Boolean(session) });
    if (!session) return [401, null];
    const expires_at = Math.floor(Date.now() / 1000) + 3600;
    return [200, { user_id: session.user_id, lobbies: session.lobbies, expires_at }];
  },
  "/join": ({ user_id, lobby }) => {
    const allowed = !lobby.startsWith("vip-") || user_id === "alice";
    say({ join: lobby, user_id, allowed });
    return [allowed ? 204 : 403, null];
  },
  "/rpc": ({ user_id, method, data }) => {
    say({ rpc: method, user_id });
    if (method === "add") return [200, { sum: (data?.a ?? 0) + (data?.b ?? 0) }];
    return [404, { error: { message: `no method ${method}` } }];
  },
};

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > 1 << 20) req.destroy(); // a body this large is not from Switchboard
    else chunks.push(chunk);
  });
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const route = routes[req.url];
    if (req.method !== "POST" || !route) return res.writeHead(404).end();
    if (!verify(req.headers["switchboard-signature"], body)) {
      say({ rejected: req.url });
      return res.writeHead(401).end();
    }
    const [status, answer] = route(JSON.parse(body));
    if (answer === null) return res.writeHead(status).end();
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(answer));
  });
});
server.listen(PORT, "127.0.0.1", () => say({ listening: server.address().port }));

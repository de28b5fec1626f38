// End-to-end in Node 20: the client (dist/, with the ws package injected) against the real server.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { SwitchboardClient } from "../../dist/index.js";
import { api, startServer } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
});

async function server(options) {
  const s = await startServer(options);
  cleanups.push(() => s.stop());
  return s;
}

function client(s, lobby, options) {
  const c = new SwitchboardClient({ url: s.url, lobby, WebSocket, ...options });
  cleanups.push(async () => c.close());
  return c;
}

async function connected(c) {
  const welcome = c.once("welcome", 10_000);
  c.connect();
  return welcome;
}

/** An HS256 JWT (what the server verifies with auth.jwt_secret). */
function jwt(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

describe("Node client against the real server", () => {
  test("broadcast, direct, presence() and join/leave events", async () => {
    const s = await server({ name: "node-basic" });
    const a = client(s, "n-room", { token: "ann" });
    const wa = await connected(a);
    assert.equal(wa.user_id, "ann");
    assert.equal(wa.protocol, 1);
    const joined = a.once("member_joined", 10_000);
    const b = client(s, "n-room", { token: "ben" });
    await connected(b);
    assert.equal((await joined).user_id, "ben");
    assert.deepEqual(await a.presence(), ["ann", "ben"]);

    const got = b.once("message", 10_000);
    a.broadcast({ text: "hi" }, { excludeSelf: true });
    const m = await got;
    assert.deepEqual([m.from, m.data], ["ann", { text: "hi" }]);

    const dm = a.once("direct", 10_000);
    b.direct("ann", "psst");
    assert.deepEqual(await dm, { type: "direct", from: "ben", data: "psst" });

    const err = a.once("error", 10_000);
    a.send({ type: "no_such_type", id: "req-1" });
    const e = await err;
    assert.deepEqual([e.code, e.id], ["unknown_type", "req-1"]);

    const left = a.once("member_left", 10_000);
    b.close();
    assert.equal((await left).user_id, "ben");
  });

  test("4009 kicked by the backend: no reconnect", async () => {
    const s = await server({ name: "node-kick" });
    const c = client(s, "k-room", { token: "kim" });
    await connected(c);
    const gone = c.once("disconnect", 10_000);
    const r = await api(s, "DELETE", "/api/users/kim");
    assert.deepEqual(r.body, { closed: 1 });
    const d = await gone;
    assert.deepEqual([d.code, d.reason, d.willReconnect], [4009, "kicked", false]);
    assert.equal(c.state, "closed");
  });

  test("4010 token_expired: reconnects with a fresh token from getToken()", async () => {
    const secret = "e2e-secret-for-tests-only-0123456789";
    const s = await server({ name: "node-jwt", env: { SWITCHBOARD_AUTH__JWT_SECRET: secret } });
    const tokens = [];
    const c = client(s, "jwt-room", {
      getToken: () => {
        // JWT exp has 1 s resolution: this token expires within 1-2 s.
        const t = jwt(secret, { sub: "erin", exp: Math.floor(Date.now() / 1000) + 2 });
        tokens.push(t);
        return t;
      },
    });
    await connected(c);
    const d = await c.once("disconnect", 10_000);
    assert.deepEqual([d.code, d.reason, d.willReconnect], [4010, "token_expired", true]);
    assert.ok(d.goodbye && d.goodbye.retry_after_ms >= 0 && d.goodbye.retry_after_ms < 1000, JSON.stringify(d.goodbye));
    assert.ok(d.retryInMs >= d.goodbye.retry_after_ms);
    const w = await c.once("welcome", 10_000);
    assert.equal(w.user_id, "erin");
    assert.equal(tokens.length, 2, "getToken called before each connect");
    assert.notEqual(tokens[0], tokens[1]);
  });

  test("4001 unauthorized: no reconnect", async () => {
    const s = await server({ name: "node-401", env: { SWITCHBOARD_AUTH__JWT_SECRET: "another-secret-0123456789abcdef!" } });
    const c = client(s, "x", { token: "not-a-jwt" });
    const gone = c.once("disconnect", 10_000);
    c.connect();
    const d = await gone;
    assert.deepEqual([d.code, d.reason, d.willReconnect], [4001, "unauthorized", false]);
    assert.equal(c.state, "closed");
  });

  test("liveness: a frozen server (SIGSTOP) is detected within 2 ping intervals, then the client gets back", async () => {
    const s = await server({ name: "node-liveness", env: { SWITCHBOARD_HEALTH__PING_INTERVAL_MS: "300" } });
    const c = client(s, "live", { token: "liv", backoff: { initialMs: 100, maxMs: 500, factor: 2 } });
    const w = await connected(c);
    assert.equal(w.ping_interval_ms, 300);
    await c.once("health_ping", 5_000);
    const lost = c.once("disconnect", 10_000);
    const frozenAt = Date.now();
    process.kill(s.pid, "SIGSTOP");
    let d;
    try {
      d = await lost;
    } finally {
      process.kill(s.pid, "SIGCONT");
    }
    assert.deepEqual([d.code, d.reason, d.willReconnect], [4000, "liveness_timeout", true]);
    assert.ok(Date.now() - frozenAt < 5_000);
    const again = await c.once("welcome", 20_000);
    assert.equal(again.user_id, "liv");
    assert.equal(c.state, "open");
  });
});

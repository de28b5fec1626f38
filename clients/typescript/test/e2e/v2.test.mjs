// End-to-end: protocol v2 (one connection in many lobbies, issue 14) against the real server
// binary: in Node (the ws package) and in real headless Chromium (the committed browser bundle).
// Every wait is on an event or on page state, with a timeout. These tests need a server that
// speaks v2 (the `switchboard.v2` subprotocol on `/ws`).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { SwitchboardClient } from "../../dist/index.js";
import { api, launchBrowser, newPage, screenshotPath, startServer } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
});

async function server(options) {
  const s = await startServer(options);
  cleanups.push(() => s.stop());
  return s;
}

/** A v2 client (not connected yet). */
function v2(s, options) {
  const c = new SwitchboardClient({ url: s.url, protocol: 2, WebSocket, ...options });
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

const SECRET = "e2e-v2-secret-for-tests-only-0123456789";

async function broadcast(s, lobby, data) {
  const r = await api(s, "POST", `/api/lobbies/${lobby}/broadcast`, { data });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.delivered;
}

/** Resolves once `predicate()` holds, re-checked on every `event` of `emitter`. */
function until(emitter, event, predicate, timeoutMs = 15_000) {
  return new Promise((resolve, reject) => {
    if (predicate()) return resolve();
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting on "${event}"`));
    }, timeoutMs);
    const off = emitter.on(event, () => {
      if (predicate()) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    return true;
  });
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

describe("protocol v2 in Node against the real server", () => {
  test("one connection in two lobbies: join, member events, presence, broadcast acks with offsets, routing, leave", async () => {
    const s = await server({ name: "v2-basic" });
    const ann = v2(s, { token: "ann" });
    const w = await connected(ann);
    assert.equal(w.protocol, 2);
    assert.equal(w.user_id, "ann");
    assert.equal(w.lobby, undefined, "a v2 welcome has no lobby");
    assert.equal(typeof w.max_lobbies, "number");

    const a = await ann.join("v2-a");
    const b = await ann.join("v2-b");
    assert.equal(a.state, "joined");
    assert.equal(a.joined.offset, 0);
    assert.equal(typeof a.joined.epoch, "string");
    assert.deepEqual(ann.rooms.map((r) => r.lobby), ["v2-a", "v2-b"]);

    const benJoined = a.once("member_joined", 10_000);
    const ben = v2(s, { token: "ben" });
    await connected(ben);
    const benA = await ben.join("v2-a");
    assert.equal((await benJoined).user_id, "ben");
    assert.deepEqual((await a.presence()).sort(), ["ann", "ben"]);
    assert.deepEqual(await b.presence(), ["ann"]);

    // A v1 client in the same lobby sees v2 broadcasts.
    const cat = new SwitchboardClient({ url: s.url, lobby: "v2-a", token: "cat", WebSocket });
    cleanups.push(async () => cat.close());
    const catIn = cat.once("welcome", 10_000);
    cat.connect();
    await catIn;

    const aGot = [];
    const bGot = [];
    a.on("message", (m) => aGot.push(m));
    b.on("message", (m) => bGot.push(m));
    const benGot = benA.once("message", 10_000);
    const catGot = cat.once("message", 10_000);
    const offset = await a.broadcast({ text: "hi" }, { excludeSelf: true });
    assert.equal(offset, 1);
    const m = await benGot;
    assert.deepEqual([m.lobby, m.from, m.data, m.offset], ["v2-a", "ann", { text: "hi" }, 1]);
    assert.deepEqual((await catGot).data, { text: "hi" });
    assert.equal(await benA.broadcast("from ben"), 2);
    await until(a, "message", () => aGot.length === 1);
    assert.deepEqual([aGot[0].from, aGot[0].data, aGot[0].offset], ["ben", "from ben", 2]);

    // The backend's broadcast to v2-b reaches ann's room b only.
    await broadcast(s, "v2-b", "for b");
    await until(b, "message", () => bGot.length === 1);
    assert.deepEqual([bGot[0].lobby, bGot[0].from, bGot[0].data], ["v2-b", null, "for b"]);
    assert.equal(aGot.length, 1);

    // Refusals keep the connection and its lobbies.
    await rejectsWith(ann.join("not a lobby!"), "invalid_lobby");
    await rejectsWith(ann.request({ type: "broadcast", lobby: "v2-elsewhere", data: 1 }), "not_allowed");
    await rejectsWith(ann.request({ type: "broadcast", data: 1 }), "missing_field");
    assert.equal(ann.state, "open");
    assert.equal(a.state, "joined");

    // Direct messages are acked.
    const dm = ben.once("direct", 10_000);
    const ack = await ann.request({ type: "direct", to: "ben", data: "psst" });
    assert.equal(ack.type, "ack");
    assert.deepEqual((await dm).data, "psst");

    // Leaving: ben sees ann go; the room is over; the lobby refuses ann's broadcasts.
    const annLeft = benA.once("member_left", 10_000);
    const leftEvent = ann.once("left", 10_000);
    await a.leave();
    assert.deepEqual(await leftEvent, { type: "left", lobby: "v2-a", reason: "left" });
    assert.equal((await annLeft).user_id, "ann");
    assert.equal(a.state, "left");
    await rejectsWith(a.broadcast("gone"), "left");
    await rejectsWith(ann.request({ type: "broadcast", lobby: "v2-a", data: 1 }), "not_allowed");
    assert.equal(b.state, "joined");
    assert.deepEqual(await b.presence(), ["ann"]);
    // With one lobby left, `lobby` may be left out.
    assert.deepEqual(await ann.presence(), ["ann"]);
  });

  test("limits: too_many_lobbies and lobby_full refuse the join only", async () => {
    const s = await server({
      name: "v2-limits",
      env: { SWITCHBOARD_LIMITS__MAX_LOBBIES_PER_CONNECTION: "2", SWITCHBOARD_LIMITS__MAX_PER_LOBBY: "1" },
    });
    const ann = v2(s, { token: "ann" });
    const w = await connected(ann);
    assert.equal(w.max_lobbies, 2);
    await ann.join("l-1");
    await ann.join("l-2");
    await rejectsWith(ann.join("l-3"), "too_many_lobbies");
    assert.equal(ann.room("l-3"), undefined);

    const ben = v2(s, { token: "ben" });
    await connected(ben);
    await rejectsWith(ben.join("l-1"), "lobby_full");
    const l4 = await ben.join("l-4");
    assert.equal(l4.state, "joined");
    assert.equal(ann.state, "open");
    assert.equal(ben.state, "open");
  });

  test("the connection is cut while the backend broadcasts to two lobbies: each room is rejoined with its own since/epoch and gets exactly what it missed", async () => {
    const s = await server({ name: "v2-rejoin" });
    const sockets = [];
    class RecordingWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        sockets.push(this);
        const send = this.send.bind(this);
        this.sentFrames = [];
        this.send = (data, ...rest) => {
          this.sentFrames.push(JSON.parse(data));
          return send(data, ...rest);
        };
      }
    }
    let gate = null;
    const c = v2(s, {
      WebSocket: RecordingWebSocket,
      backoff: { initialMs: 50, maxMs: 200, factor: 2 },
      getToken: async () => {
        if (gate) await gate.promise;
        return "rita";
      },
    });
    await connected(c);
    assert.equal(sockets[0].protocol, "switchboard.v2");
    const x = await c.join("rj-x");
    const y = await c.join("rj-y");
    const xs = [];
    const ys = [];
    x.on("message", (m) => xs.push(m));
    y.on("message", (m) => ys.push(m));
    for (let i = 1; i <= 3; i++) await broadcast(s, "rj-x", { x: i });
    for (let i = 1; i <= 5; i++) await broadcast(s, "rj-y", { y: i });
    await until(x, "message", () => xs.length === 3);
    await until(y, "message", () => ys.length === 5);
    const [ex, ey] = [x.epoch, y.epoch];

    gate = deferred();
    const lost = c.once("disconnect", 10_000);
    sockets.at(-1).terminate();
    assert.equal((await lost).willReconnect, true);
    assert.equal(x.state, "rejoining");

    for (let i = 4; i <= 23; i++) await broadcast(s, "rj-x", { x: i });
    for (let i = 6; i <= 15; i++) await broadcast(s, "rj-y", { y: i });

    const xRecovered = x.once("recovered", 15_000);
    const yRecovered = y.once("recovered", 15_000);
    gate.resolve();
    assert.deepEqual(await xRecovered, { type: "recovered", lobby: "rj-x", ok: true });
    assert.deepEqual(await yRecovered, { type: "recovered", lobby: "rj-y", ok: true });
    const joins = sockets[1].sentFrames.filter((f) => f.type === "join").map((f) => [f.lobby, f.since, f.epoch]);
    assert.deepEqual(joins, [
      ["rj-x", 3, ex],
      ["rj-y", 5, ey],
    ]);
    assert.deepEqual(xs.map((m) => m.data.x), Array.from({ length: 23 }, (_, i) => i + 1));
    assert.deepEqual(ys.map((m) => m.data.y), Array.from({ length: 15 }, (_, i) => i + 1));
    assert.deepEqual([x.state, x.lastOffset, y.lastOffset], ["joined", 23, 15]);

    // Live traffic after the rejoin, without gap or duplicate.
    await broadcast(s, "rj-x", { x: 24 });
    assert.equal(await y.broadcast({ y: 16 }), 16);
    await until(x, "message", () => xs.length === 24);
    await until(y, "message", () => ys.length === 16);
    assert.deepEqual(xs.map((m) => m.offset), Array.from({ length: 24 }, (_, i) => i + 1));
  });

  test("token refresh with real JWTs: refreshed before the expiry, the connection outlives the first token", async () => {
    const s = await server({ name: "v2-refresh", env: { SWITCHBOARD_AUTH__JWT_SECRET: SECRET } });
    const issued = [];
    const c = v2(s, {
      getToken: () => {
        // The first token expires within 2-3 s; the refreshed ones in a minute.
        const exp = Math.floor(Date.now() / 1000) + (issued.length === 0 ? 3 : 60);
        issued.push(exp);
        return jwt(SECRET, { sub: "erin", exp });
      },
    });
    const disconnects = [];
    c.on("disconnect", (d) => disconnects.push(d));
    const w = await connected(c);
    assert.equal(w.token_expires_at, issued[0] * 1000);
    const room = await c.join("refresh-room");
    const acked = await c.once("ack", 10_000);
    assert.equal(acked.token_expires_at, issued[1] * 1000);
    // Past the first token's expiry (+ 1 s): still connected, still in the lobby.
    await new Promise((r) => setTimeout(r, Math.max(0, issued[0] * 1000 + 1000 - Date.now())));
    assert.deepEqual(disconnects, []);
    assert.equal(c.state, "open");
    assert.equal(await room.broadcast("still here"), 1);
  });

  test("a refreshed token that no longer allows a lobby: that room ends (left not_allowed), the others stay", async () => {
    const s = await server({ name: "v2-refresh-lobbies", env: { SWITCHBOARD_AUTH__JWT_SECRET: SECRET } });
    let calls = 0;
    const c = v2(s, {
      getToken: () => {
        calls += 1;
        const lobbies = calls === 1 ? ["keep", "drop", "team-42:*"] : ["keep", "team-42:*"];
        const exp = Math.floor(Date.now() / 1000) + (calls === 1 ? 3 : 60);
        return jwt(SECRET, { sub: "fay", exp, lobbies });
      },
    });
    await connected(c);
    const keep = await c.join("keep");
    const drop = await c.join("drop");
    const team = await c.join("team-42:general");
    await rejectsWith(c.join("elsewhere"), "not_allowed");
    const dropLeft = drop.once("left", 10_000);
    const clientLeft = c.once("left", 10_000);
    assert.deepEqual(await dropLeft, { type: "left", lobby: "drop", reason: "not_allowed" });
    assert.deepEqual(await clientLeft, { type: "left", lobby: "drop", reason: "not_allowed" });
    assert.deepEqual(c.rooms.map((r) => r.lobby), ["keep", "team-42:general"]);
    assert.equal(keep.state, "joined");
    assert.equal(await team.broadcast("hi"), 1);
    await rejectsWith(c.join("drop"), "not_allowed");
  });

  test("a refresh with another user's token is refused (token_error not_allowed); the connection stays", async () => {
    const s = await server({ name: "v2-refresh-other", env: { SWITCHBOARD_AUTH__JWT_SECRET: SECRET } });
    let calls = 0;
    const c = v2(s, {
      getToken: () => {
        calls += 1;
        const exp = Math.floor(Date.now() / 1000) + 3;
        return jwt(SECRET, { sub: calls === 1 ? "gus" : "mallory", exp });
      },
    });
    const w = await connected(c);
    const room = await c.join("r");
    const e = await c.once("token_error", 10_000);
    assert.equal(e.code, "not_allowed");
    assert.equal(c.state, "open");
    assert.equal(c.welcome.connection_id, w.connection_id);
    assert.equal(await room.broadcast("still me"), 1);
  });

  test("the backend joins the connection to a lobby (a room appears) and removes it (left removed)", async () => {
    const s = await server({ name: "v2-backend-join" });
    const c = v2(s, { token: "hal", backoff: { initialMs: 50, maxMs: 200, factor: 2 } });
    await connected(c);
    const own = await c.join("own");
    const joined = c.once("joined", 10_000);
    const r = await api(s, "POST", "/api/users/hal/lobbies/news");
    assert.deepEqual(r, { status: 200, body: { joined: 1 } });
    const j = await joined;
    assert.equal(j.lobby, "news");
    assert.equal(j.id, undefined);
    const news = c.room("news");
    assert.ok(news, "a room for the lobby the backend joined");
    assert.equal(news.state, "joined");
    const got = news.once("message", 10_000);
    await broadcast(s, "news", "extra, extra");
    assert.equal((await got).data, "extra, extra");
    assert.equal(await news.broadcast("thanks"), 2);

    const left = news.once("left", 10_000);
    const removed = await api(s, "DELETE", "/api/users/hal/lobbies/news");
    assert.deepEqual(removed, { status: 200, body: { removed: 1 } });
    assert.deepEqual(await left, { type: "left", lobby: "news", reason: "removed" });
    assert.equal(c.room("news"), undefined);
    assert.deepEqual(c.rooms, [own]);
    assert.equal(own.state, "joined");
    assert.equal(c.state, "open");
  });

  test("kicked by the backend (4009): every room ends (closed), no reconnect", async () => {
    const s = await server({ name: "v2-kick" });
    const c = v2(s, { token: "kim" });
    await connected(c);
    const a = await c.join("k-a");
    const b = await c.join("k-b");
    const gone = c.once("disconnect", 10_000);
    const r = await api(s, "DELETE", "/api/users/kim");
    assert.deepEqual(r.body, { closed: 1 });
    const d = await gone;
    assert.deepEqual([d.code, d.reason, d.willReconnect], [4009, "kicked", false]);
    assert.deepEqual([a.state, b.state, c.rooms.length], ["left", "left", 0]);
  });
});

describe("protocol v2 in headless Chromium (the committed bundle)", () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test("the demo page with ?protocol=2: a room list, a chat per room, unread counts, leaving one room", async () => {
    const problems = [];
    const s = await server({ name: "v2-demo" });
    const alice = await newPage(browser, problems);
    const bob = await newPage(browser, problems);
    const room = (page, lobby) => page.locator(`#rooms li[data-lobby="${lobby}"]`);
    const chatLine = (page, text) => page.locator("#messages li.chat", { hasText: text });
    const member = (page, user) => page.locator(`#members li[data-user="${user}"]`);
    async function say(page, text) {
      await page.fill("#text", text);
      await page.press("#text", "Enter");
    }

    await alice.goto(`${s.url}/?protocol=2&name=alice&lobby=room-x`);
    await alice.click("#join");
    await alice.locator('#state[data-state="open"]').waitFor();
    await room(alice, "room-x").and(alice.locator('[data-state="joined"]')).waitFor();
    await alice.fill("#lobby", "room-y");
    await alice.click("#join");
    await room(alice, "room-y").and(alice.locator('[data-state="joined"]')).waitFor();
    assert.equal(await alice.evaluate(() => window.switchboardDemo.current), "room-y");
    assert.equal(await alice.evaluate(() => window.switchboardDemo.client.rooms.length), 2);

    await bob.goto(`${s.url}/?protocol=2&name=bob&lobby=room-x`);
    await bob.click("#join");
    await room(bob, "room-x").and(bob.locator('[data-state="joined"]')).waitFor();
    await member(bob, "alice").waitFor();

    await room(alice, "room-x").locator(".pick").click();
    await member(alice, "bob").waitFor();
    await say(bob, "hello room x");
    await chatLine(alice, "hello room x").waitFor();
    await say(alice, "hi bob");
    await chatLine(bob, "hi bob").waitFor();

    // A message for the room not shown: counted as unread, hidden until picked.
    await broadcast(s, "room-y", { text: "news for y" });
    await room(alice, "room-y").locator(".unread", { hasText: "1" }).waitFor();
    assert.equal(await chatLine(alice, "news for y").isVisible(), false);
    await room(alice, "room-y").locator(".pick").click();
    await chatLine(alice, "news for y").waitFor();
    assert.equal(await chatLine(alice, "hello room x").isVisible(), false);
    assert.equal(await room(alice, "room-y").locator(".unread").count(), 0);
    await alice.screenshot({ path: screenshotPath("v2-demo-rooms.png"), fullPage: true });

    // The backend adds alice to a lobby: it shows up in her room list; then removes her.
    assert.deepEqual((await api(s, "POST", "/api/users/alice/lobbies/room-z")).body, { joined: 1 });
    await room(alice, "room-z").and(alice.locator('[data-state="joined"]')).waitFor();
    await alice.locator("#messages li.system", { hasText: "the server added you to room-z" }).waitFor();
    assert.deepEqual((await api(s, "DELETE", "/api/users/alice/lobbies/room-z")).body, { removed: 1 });
    await room(alice, "room-z").waitFor({ state: "detached" });
    await alice.locator("#messages li.system", { hasText: "you left room-z (removed)" }).waitFor();

    // Leaving room-x: bob sees alice go; alice keeps room-y.
    await room(alice, "room-x").locator(".leave-room").click();
    await room(alice, "room-x").waitFor({ state: "detached" });
    await member(bob, "alice").waitFor({ state: "detached" });
    assert.deepEqual(await alice.evaluate(() => window.switchboardDemo.client.rooms.map((r) => r.lobby)), ["room-y"]);
    await alice.context().close();
    await bob.context().close();
    assert.deepEqual(problems, []);
  });

  test("a page in two lobbies chats with a Node client; after a server restart it rejoins both rooms by itself", async () => {
    const problems = [];
    const first = await server({ name: "v2-browser-1" });
    const page = await newPage(browser, problems);
    await page.goto(`${first.url}/`);
    await page.evaluate(async () => {
      const got = (window.v2got = { lobbyA: [], lobbyB: [], recovered: [], joined: [] });
      const c = (window.v2client = new Switchboard.SwitchboardClient({
        protocol: 2,
        token: "pia",
        backoff: { initialMs: 100, maxMs: 500, factor: 2 },
      }));
      c.connect();
      const a = await c.join("br-a");
      const b = await c.join("br-b");
      for (const [room, list] of [
        [a, got.lobbyA],
        [b, got.lobbyB],
      ]) {
        room.on("message", (m) => list.push(m.data));
        room.on("recovered", (r) => got.recovered.push([r.lobby, r.ok]));
        room.on("joined", (j) => got.joined.push([j.lobby, j.rejoin]));
      }
      window.v2rooms = { a, b };
    });
    const welcome = await page.evaluate(() => window.v2client.welcome);
    assert.equal(welcome.protocol, 2);

    const nod = v2(first, { token: "nod" });
    await connected(nod);
    const nodA = await nod.join("br-a");
    const nodGot = nodA.once("message", 10_000);
    const offset = await page.evaluate(() => window.v2rooms.a.broadcast({ text: "from the page" }));
    assert.equal(offset, 1);
    assert.deepEqual((await nodGot).data, { text: "from the page" });
    await nodA.broadcast("from node");
    await broadcast(first, "br-b", "backend to b");
    await page.waitForFunction(() => window.v2got.lobbyA.length === 2 && window.v2got.lobbyB.length === 1);
    assert.deepEqual(await page.evaluate(() => window.v2got.lobbyA), [{ text: "from the page" }, "from node"]);
    assert.deepEqual((await page.evaluate(() => window.v2rooms.a.presence())).sort(), ["nod", "pia"]);

    // The server is killed and restarted on the same port: the page rejoins both rooms; the
    // history is gone (a new epoch), so each room says recovered ok:false.
    await first.stop("SIGKILL");
    await page.waitForFunction(() => window.v2client.state === "reconnecting");
    const second = await server({ name: "v2-browser-2", bind: first.addr });
    await page.waitForFunction(() => window.v2got.recovered.length === 2, null, { timeout: 30_000 });
    assert.deepEqual(
      (await page.evaluate(() => window.v2got.recovered)).sort(),
      [
        ["br-a", false],
        ["br-b", false],
      ],
    );
    assert.deepEqual(
      await page.evaluate(() => [window.v2rooms.a.state, window.v2rooms.b.state]),
      ["joined", "joined"],
    );
    await broadcast(second, "br-a", "after restart a");
    await broadcast(second, "br-b", "after restart b");
    await page.waitForFunction(() => window.v2got.lobbyA.length === 3 && window.v2got.lobbyB.length === 2);
    assert.equal(await page.evaluate(() => window.v2rooms.b.broadcast("page again")), 2);
    await page.screenshot({ path: screenshotPath("v2-browser.png"), fullPage: true });
    await page.context().close();
    assert.deepEqual(problems, []);
  });
});

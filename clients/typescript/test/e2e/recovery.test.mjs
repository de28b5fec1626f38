// End-to-end: recovery after reconnect (issue 8) and the Server-Sent Events transport, against
// the real server binary: in Node (the ws package) and in real headless Chromium (EventSource).
// Every wait is on an event or on page state, with a timeout; no sleeps.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";
import { SwitchboardClient } from "../../dist/index.js";
import { api, launchBrowser, newPage, startServer } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
});

async function server(options) {
  const s = await startServer(options);
  cleanups.push(() => s.stop());
  return s;
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves once `predicate()` holds, re-checked on every `event` of the client. */
function until(client, event, predicate, timeoutMs = 15_000) {
  return new Promise((resolve, reject) => {
    if (predicate()) return resolve();
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting on "${event}"`));
    }, timeoutMs);
    const off = client.on(event, () => {
      if (predicate()) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
  });
}

async function broadcast(s, lobby, data) {
  const r = await api(s, "POST", `/api/lobbies/${lobby}/broadcast`, { data });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.delivered;
}

/**
 * A TCP proxy in front of the server: `cut()` destroys every proxied connection at once (an
 * abrupt network loss: no close frame, no `close` event) and, while `refusing`, new connections
 * are dropped as soon as they arrive. The server itself keeps running, with its history.
 * Records the HTTP request heads that pass, to show what the browser sent.
 */
async function tcpProxy(targetAddr) {
  const [host, port] = [targetAddr.slice(0, targetAddr.lastIndexOf(":")), Number(targetAddr.slice(targetAddr.lastIndexOf(":") + 1))];
  const sockets = new Set();
  const heads = [];
  const proxy = {
    refusing: false,
    heads,
    cut() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
  };
  const srv = net.createServer((down) => {
    if (proxy.refusing) {
      down.destroy();
      return;
    }
    const up = net.connect(port, host);
    sockets.add(down);
    sockets.add(up);
    down.on("data", (chunk) => {
      // Request heads (small requests arrive in one chunk each).
      const text = chunk.toString("latin1");
      if (/^[A-Z]+ \/\S* HTTP\/1\.[01]\r\n/.test(text)) heads.push(text.split("\r\n\r\n")[0]);
    });
    down.pipe(up);
    up.pipe(down);
    const end = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${srv.address().port}`;
  cleanups.push(async () => {
    proxy.cut();
    await new Promise((resolve) => srv.close(resolve));
  });
  return proxy;
}

describe("recovery after reconnect (Node, WebSocket)", () => {
  test("cut abruptly while the backend broadcasts 100 messages: exactly those 100, in order, then live ones; recovered ok", async () => {
    const s = await server({ name: "recovery-100" });
    // Every socket the client opens, so the test can cut one abruptly.
    const sockets = [];
    class RecordingWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        sockets.push(this);
      }
    }
    // The reconnect waits (in getToken, called before every connect) until the 100 are out.
    let gate = null;
    const c = new SwitchboardClient({
      url: s.url,
      lobby: "rec-100",
      WebSocket: RecordingWebSocket,
      backoff: { initialMs: 50, maxMs: 200, factor: 2 },
      getToken: async () => {
        if (gate) await gate.promise;
        return "rita";
      },
    });
    cleanups.push(async () => c.close());
    const got = [];
    c.on("message", (m) => got.push(m));
    const welcome = c.once("welcome", 10_000);
    c.connect();
    const w1 = await welcome;
    assert.equal(typeof w1.epoch, "string");
    assert.equal(w1.offset, 0);

    for (let i = 1; i <= 5; i++) await broadcast(s, "rec-100", { before: i });
    await until(c, "message", () => got.length === 5);
    assert.equal(c.lastOffset, 5);

    gate = deferred();
    const lost = c.once("disconnect", 10_000);
    sockets.at(-1).terminate(); // abrupt: the TCP connection is destroyed, no close frame
    const d = await lost;
    assert.deepEqual([d.code, d.willReconnect, d.transport], [1006, true, "websocket"]);

    for (let i = 1; i <= 100; i++) await broadcast(s, "rec-100", { missed: i });

    const recovered = c.once("recovered", 15_000);
    const reopened = c.once("welcome", 15_000);
    gate.resolve();
    const w2 = await reopened;
    assert.equal(w2.epoch, w1.epoch);
    assert.equal(w2.offset, 105);
    assert.equal(sockets.length, 2);
    assert.match(sockets[1].url, new RegExp(`[?&]since=5&epoch=${encodeURIComponent(w1.epoch)}$`));
    const r = await recovered;
    assert.deepEqual(r, { type: "recovered", ok: true });
    assert.deepEqual(c.lastRecovery, { type: "recovered", ok: true });
    // The replay came before `recovered`: all 100, in order, once each.
    assert.equal(got.length, 105);
    assert.deepEqual(
      got.slice(5).map((m) => m.data),
      Array.from({ length: 100 }, (_, i) => ({ missed: i + 1 })),
    );

    // Then live traffic, without gap or duplicate.
    for (let i = 1; i <= 3; i++) await broadcast(s, "rec-100", { live: i });
    await until(c, "message", () => got.length === 108);
    assert.deepEqual(got.map((m) => m.offset), Array.from({ length: 108 }, (_, i) => i + 1));
    assert.deepEqual(got.slice(105).map((m) => m.data), [{ live: 1 }, { live: 2 }, { live: 3 }]);
    assert.equal(c.lastOffset, 108);
  });

  test("the server restarts (history lost, new epoch): recovered ok:false, then the new epoch's messages", async () => {
    const first = await server({ name: "recovery-restart-1" });
    const c = new SwitchboardClient({
      url: first.url,
      lobby: "rec-restart",
      token: "rob",
      WebSocket,
      backoff: { initialMs: 50, maxMs: 300, factor: 2 },
    });
    cleanups.push(async () => c.close());
    const got = [];
    c.on("message", (m) => got.push(m));
    const welcome = c.once("welcome", 10_000);
    c.connect();
    const w1 = await welcome;
    await broadcast(first, "rec-restart", "old-1");
    await until(c, "message", () => got.length === 1);

    const lost = c.once("disconnect", 10_000);
    await first.stop("SIGKILL");
    await lost;
    const recovered = c.once("recovered", 30_000);
    const second = await server({ name: "recovery-restart-2", bind: first.addr });
    const r = await recovered;
    assert.equal(r.ok, false);
    assert.notEqual(c.epoch, w1.epoch);
    await broadcast(second, "rec-restart", "new-1");
    await until(c, "message", () => got.length === 2);
    assert.deepEqual(got.map((m) => [m.data, m.offset]), [["old-1", 1], ["new-1", 1]]);
  });
});

describe("Server-Sent Events in headless Chromium", () => {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });

  test("transport 'sse': receives broadcasts, sends with POST, recovers via Last-Event-ID after the stream is cut; a restart gives recovered ok:false", async () => {
    const problems = [];
    // Short pings: the health_pongs the page POSTs are what keeps the stream alive.
    const s = await server({
      name: "sse-browser",
      env: { SWITCHBOARD_HEALTH__PING_INTERVAL_MS: "400", SWITCHBOARD_HEALTH__PONG_TIMEOUT_MS: "800" },
    });
    const proxy = await tcpProxy(s.addr);
    const page = await newPage(browser, problems);
    await page.goto(`${proxy.url}/`);
    await page.evaluate(() => {
      const t = { messages: [], recovered: [], disconnects: [], welcomes: [], pings: 0, eventSources: 0, errors: [] };
      window.t = t;
      const Native = window.EventSource;
      class CountingEventSource extends Native {
        constructor(url) {
          super(url);
          t.eventSources++;
        }
      }
      const c = new window.Switchboard.SwitchboardClient({
        lobby: "sse-room",
        token: "sam",
        transport: "sse",
        EventSource: CountingEventSource,
      });
      window.client = c;
      c.on("message", (m) => t.messages.push([m.data, m.offset]));
      c.on("recovered", (r) => t.recovered.push(r.ok));
      c.on("disconnect", (d) => t.disconnects.push([d.code, d.reason, d.willReconnect, d.retryInMs]));
      c.on("welcome", (w) => t.welcomes.push([w.connection_id, w.epoch, w.offset]));
      c.on("health_ping", () => t.pings++);
      c.on("error", (e) => t.errors.push(e));
      c.connect();
    });
    const pageState = () => page.evaluate(() => ({ ...window.t, state: window.client.state, transport: window.client.transport }));
    const waitPage = (fn, arg) => page.waitForFunction(fn, arg, { timeout: 20_000 });
    await waitPage(() => window.client.state === "open");
    assert.equal((await pageState()).transport, "sse");

    // Broadcasts from the backend arrive as message events (with their offsets).
    for (let i = 1; i <= 3; i++) await broadcast(s, "sse-room", { n: i });
    await waitPage(() => window.t.messages.length === 3);

    // Sends go out as POSTs: a WebSocket client in the lobby gets the page's broadcast, and
    // presence() is answered on the stream.
    const ws = new SwitchboardClient({ url: s.url, lobby: "sse-room", token: "wendy", WebSocket, reconnect: false });
    cleanups.push(async () => ws.close());
    const wsWelcome = ws.once("welcome", 10_000);
    ws.connect();
    await wsWelcome;
    const fromPage = ws.once("message", 10_000);
    await page.evaluate(() => window.client.broadcast({ text: "from the SSE page" }));
    const m = await fromPage;
    assert.deepEqual([m.from, m.data, m.offset], ["sam", { text: "from the SSE page" }, 4]);
    assert.deepEqual(await page.evaluate(() => window.client.presence()), ["sam", "wendy"]);
    await waitPage(() => window.t.messages.length === 4);
    // health_ping is answered by POSTed health_pongs: several ping intervals (and more than
    // ping + pong timeout) pass without the server closing the stream as stale.
    await waitPage(() => window.t.pings >= 5);
    assert.deepEqual((await pageState()).disconnects, []);
    const posts = proxy.heads.filter((h) => h.startsWith("POST /sse/sse-room/messages?token=sam "));
    assert.ok(posts.length >= 1, "POSTs went through the proxy");

    // The network drops (every proxied connection destroyed, new ones refused): the stream
    // breaks without a close event; EventSource keeps reconnecting by itself.
    proxy.refusing = true;
    proxy.cut();
    await waitPage(() => window.t.disconnects.length === 1);
    const st = await pageState();
    assert.deepEqual(st.disconnects, [[1006, "stream_lost", true, null]]);
    assert.equal(st.state, "reconnecting");
    // Meanwhile the backend broadcasts 20 messages (offsets 5..24).
    for (let i = 1; i <= 20; i++) await broadcast(s, "sse-room", { missed: i });
    // The network comes back: the browser's own reconnect carries Last-Event-ID; the server
    // replays exactly the 20, then recovered ok:true.
    const headsBefore = proxy.heads.length;
    proxy.refusing = false;
    await waitPage(() => window.t.recovered.length === 1);
    await waitPage(() => window.client.state === "open");
    const back = await pageState();
    assert.deepEqual(back.recovered, [true]);
    assert.equal(back.eventSources, 1, "the same EventSource resumed");
    assert.deepEqual(
      back.messages.map(([, offset]) => offset),
      Array.from({ length: 24 }, (_, i) => i + 1),
    );
    assert.deepEqual(
      back.messages.slice(4).map(([data]) => data),
      Array.from({ length: 20 }, (_, i) => ({ missed: i + 1 })),
    );
    const epoch = back.welcomes[0][1];
    const resume = proxy.heads.slice(headsBefore).find((h) => h.startsWith("GET /sse/sse-room?token=sam "));
    assert.ok(resume, "the resumed stream went through the proxy");
    assert.match(resume, new RegExp(`\\r\\nlast-event-id: ${epoch}:4(\\r\\n|$)`, "i"));
    assert.doesNotMatch(resume.split("\r\n")[0], /since=/);
    assert.deepEqual(await page.evaluate(() => window.client.lastRecovery), { type: "recovered", ok: true });
    // Live traffic follows, without gap or duplicate.
    await broadcast(s, "sse-room", "live");
    await waitPage(() => window.t.messages.length === 25);
    assert.deepEqual((await pageState()).messages[24], ["live", 25]);

    // A server restart is never mistaken for continuity: Last-Event-ID names the old epoch,
    // the new server answers recovered ok:false, and its messages (offset 1 again) arrive.
    await s.stop("SIGKILL");
    await waitPage(() => window.t.disconnects.length === 2);
    const s2 = await server({
      name: "sse-browser-restart",
      bind: s.addr,
      env: { SWITCHBOARD_HEALTH__PING_INTERVAL_MS: "400", SWITCHBOARD_HEALTH__PONG_TIMEOUT_MS: "800" },
    });
    await waitPage(() => window.t.recovered.length === 2);
    await waitPage(() => window.client.state === "open");
    const restarted = await pageState();
    assert.deepEqual(restarted.recovered, [true, false]);
    assert.notEqual(restarted.welcomes.at(-1)[1], epoch, "a new epoch");
    await broadcast(s2, "sse-room", "after restart");
    await waitPage(() => window.t.messages.length === 26);
    assert.deepEqual((await pageState()).messages[25], ["after restart", 1]);
    assert.deepEqual((await pageState()).errors, []);
    await page.context().close();
    assert.deepEqual(problems, []);
  });
});

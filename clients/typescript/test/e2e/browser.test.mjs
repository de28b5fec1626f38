// End-to-end: the demo page and the dashboard in real headless Chromium (Debian's, driven by
// playwright-core) against the real server binary. Every wait is on DOM state or an event.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { SwitchboardClient } from "../../dist/index.js";
import { api, launchBrowser, newPage, screenshotPath, startRedis, startServer } from "./helpers.mjs";

let browser;
const problems = [];
const cleanups = [];

before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  await browser?.close();
});

async function server(options) {
  const s = await startServer(options);
  cleanups.push(() => s.stop());
  return s;
}

/** A Node client (the same TypeScript client, with the ws package) connected to `lobby`. */
async function nodeClient(s, lobby, user) {
  const c = new SwitchboardClient({ url: s.url, lobby, token: user, WebSocket, reconnect: false });
  cleanups.push(async () => c.close());
  const welcome = c.once("welcome", 10_000);
  c.connect();
  await welcome;
  return c;
}

async function join(page, s, name, lobby) {
  await page.goto(`${s.url}/?name=${encodeURIComponent(name)}&lobby=${encodeURIComponent(lobby)}`);
  await page.click("#join");
  await page.locator('#state[data-state="open"]').waitFor();
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const member = (page, user) => page.locator(`#members li[data-user="${user}"]`);
const chatLine = (page, text) => page.locator("#messages li.chat", { hasText: text });

/**
 * A series as the dashboard drew it: its legend item, which carries data-label and, once the
 * series has a value, data-last and data-max (see charts.js). `more` narrows the selector.
 */
const drawn = (page, chart, label, more = "") =>
  page.locator(`#legend-${chart} .legend-item[data-label="${label}"]${more}`);
/** A drawn series whose last value is not zero (absent or "0" do not match). */
const NON_ZERO_LAST = '[data-last]:not([data-last="0"])';
/** History is sampled once a second and the page polls it every 5 s: a bounded wait. */
const CHART_WAIT = { timeout: 20_000 };

/**
 * Waits until the connections chart's last drawn `connections` and `users` values are what
 * /api/stats says (`total_connections`, `users`; the load is steady while this runs), then
 * checks /api/stats still says so. Returns the connection count.
 */
async function chartMatchesStats(page, s) {
  const { total_connections: connections, users } = (await api(s, "GET", "/api/stats")).body;
  await drawn(page, "connections", "connections", `[data-last="${connections}"]`).waitFor(CHART_WAIT);
  await drawn(page, "connections", "users", `[data-last="${users}"]`).waitFor(CHART_WAIT);
  const after = (await api(s, "GET", "/api/stats")).body;
  assert.deepEqual([after.total_connections, after.users], [connections, users], "the load was steady");
  return connections;
}

describe("demo page", () => {
  test("two pages chat in a lobby; presence and join/leave events update the member list", async () => {
    const s = await server({ name: "chat" });
    const alice = await newPage(browser, problems);
    const bob = await newPage(browser, problems);

    await join(alice, s, "alice", "room-1");
    await member(alice, "alice").waitFor();
    assert.equal(await alice.locator("#member-count").textContent(), "1");

    await join(bob, s, "bob", "room-1");
    // bob learns the lobby from presence; alice from member_joined.
    await member(bob, "alice").waitFor();
    await member(bob, "bob").waitFor();
    await member(alice, "bob").waitFor();
    await alice.locator("#messages li.system", { hasText: "bob joined" }).waitFor();
    assert.equal(await alice.locator("#member-count").textContent(), "2");

    await say(bob, "hello from bob");
    await chatLine(alice, "hello from bob").waitFor();
    assert.equal(await chatLine(alice, "hello from bob").locator(".from").textContent(), "bob");
    await say(alice, "hi bob, alice here");
    await chatLine(bob, "hi bob, alice here").waitFor();
    await chatLine(alice, "hi bob, alice here").waitFor(); // broadcasts include the sender

    // A backend message through the HTTP API reaches both.
    const r = await api(s, "POST", "/api/lobbies/room-1/broadcast", { data: { text: "welcome from the backend" } });
    assert.deepEqual(r, { status: 200, body: { delivered: 2 } });
    await chatLine(alice, "welcome from the backend").waitFor();
    await chatLine(bob, "welcome from the backend").waitFor();
    await alice.screenshot({ path: screenshotPath("demo-chat-alice.png"), fullPage: true });

    await bob.click("#leave");
    await member(alice, "bob").waitFor({ state: "detached" });
    await alice.locator("#messages li.system", { hasText: "bob left" }).waitFor();
    assert.equal(await alice.locator("#member-count").textContent(), "1");
    await alice.screenshot({ path: screenshotPath("demo-chat-after-leave.png"), fullPage: true });
    await alice.context().close();
    await bob.context().close();
    assert.deepEqual(problems, []);
  });

  test("the server is killed and restarted on the same port: the page reconnects by itself", async () => {
    const first = await server({ name: "restart-1" });
    const page = await newPage(browser, problems);
    await join(page, first, "carol", "room-r");
    await member(page, "carol").waitFor();

    await first.stop("SIGKILL");
    await page.locator('#state[data-state="reconnecting"]').waitFor();
    await page.locator("#notice:not([hidden])", { hasText: "Connection lost (1006" }).waitFor();
    // Typed while the server is down: queued by the client, sent after the reconnect.
    await say(page, "typed while offline");
    await page.locator("#queued:not([hidden])", { hasText: "1 message(s) waiting" }).waitFor();
    await page.screenshot({ path: screenshotPath("demo-reconnecting.png"), fullPage: true });

    const second = await server({ name: "restart-2", bind: first.addr });
    assert.equal(second.addr, first.addr, "same port");
    await page.locator('#state[data-state="open"]').waitFor({ timeout: 30_000 });
    await page.locator("#notice").waitFor({ state: "hidden" });
    await chatLine(page, "typed while offline").waitFor();
    await member(page, "carol").waitFor();
    // The restarted server lost the lobby's history (a new epoch): the page says so.
    await page.locator("#messages li.system", { hasText: "could not be recovered" }).waitFor();

    const r = await api(second, "POST", "/api/lobbies/room-r/broadcast", { data: { text: "after the restart" } });
    assert.equal(r.body.delivered, 1);
    await chatLine(page, "after the restart").waitFor();
    assert.equal(await chatLine(page, "after the restart").locator(".from").textContent(), "backend");
    await say(page, "and I can still talk");
    await chatLine(page, "and I can still talk").waitFor();
    await page.screenshot({ path: screenshotPath("demo-after-restart.png"), fullPage: true });
    await page.context().close();
    assert.deepEqual(problems, []);
  });

  test("Chromium negotiates permessage-deflate; a long chat line is compressed once for both pages", async () => {
    const s = await server({ name: "deflate" });
    const alice = await newPage(browser, problems);
    const bob = await newPage(browser, problems);
    // The handshake's response headers, as the browser saw them (DevTools protocol).
    const cdp = await alice.context().newCDPSession(alice);
    await cdp.send("Network.enable");
    const handshake = new Promise((resolve) => cdp.once("Network.webSocketHandshakeResponseReceived", resolve));
    await join(alice, s, "alice", "zipped");
    const { response } = await handshake;
    assert.equal(response.status, 101);
    const headers = Object.fromEntries(Object.entries(response.headers).map(([k, v]) => [k.toLowerCase(), v]));
    assert.equal(
      headers["sec-websocket-extensions"],
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    );
    await join(bob, s, "bob", "zipped");
    await member(alice, "bob").waitFor();

    const before = (await api(s, "GET", "/api/stats")).body.messages_deflated;
    // Over compression.min_bytes (256): compressed once, the same bytes sent to both pages.
    const line = `a long line for the compressor: ${"the quick brown fox jumps over the lazy dog ".repeat(12)}end`;
    await say(bob, line);
    await chatLine(alice, "end").waitFor();
    await chatLine(bob, "end").waitFor();
    assert.equal(await chatLine(alice, "a long line").locator(".text").textContent(), line);
    const after = (await api(s, "GET", "/api/stats")).body.messages_deflated;
    assert.equal(after - before, 1, "one compression for two recipients");
    await alice.context().close();
    await bob.context().close();
    assert.deepEqual(problems, []);
  });

  test("4002 lobby_full is shown to the user, and the page gets in once a place frees up", async () => {
    const s = await server({ name: "full", env: { SWITCHBOARD_LIMITS__MAX_PER_LOBBY: "2" } });
    await nodeClient(s, "full-room", "n1");
    const n2 = await nodeClient(s, "full-room", "n2");

    const page = await newPage(browser, problems);
    await page.goto(`${s.url}/?name=dave&lobby=full-room`);
    await page.click("#join");
    const notice = page.locator('#notice[data-kind="full"]');
    await notice.waitFor();
    const text = await notice.textContent();
    assert.match(text, /The lobby “full-room” is full \(4002 lobby_full\)\. Retrying in [\d.]+ s/);
    await page.locator('#state[data-state="reconnecting"]').waitFor();
    assert.equal(await page.locator("#members li").count(), 0);
    await page.screenshot({ path: screenshotPath("demo-lobby-full.png"), fullPage: true });

    // The goodbye's retry_after_ms (2-10 s) is honoured, then the page gets in.
    n2.close();
    await page.locator('#state[data-state="open"]').waitFor({ timeout: 30_000 });
    await member(page, "dave").waitFor();
    await member(page, "n1").waitFor();
    const stats = await api(s, "GET", "/api/stats");
    assert.equal(stats.body.rejections.lobby_full >= 1, true, JSON.stringify(stats.body.rejections));
    await page.context().close();
    assert.deepEqual(problems, []);
  });
});

describe("dashboard", () => {
  test("shows the right connection count, lobbies with member counts, and follows changes live", async () => {
    const s = await server({ name: "dashboard", env: { SWITCHBOARD_HEALTH__PING_INTERVAL_MS: "500" } });
    const dash = await newPage(browser, problems);
    await dash.goto(`${s.url}/dashboard`);
    await dash.locator('#status[data-state="open"]').waitFor();
    await dash.locator("#connections", { hasText: /^0$/ }).waitFor();

    const a = await newPage(browser, problems);
    const b = await newPage(browser, problems);
    await join(a, s, "alice", "lobby-a");
    await join(b, s, "bob", "lobby-a");
    const n1 = await nodeClient(s, "lobby-b", "node-1");
    for (let i = 0; i < 5; i++) n1.broadcast({ text: `tick ${i}` });
    await say(a, "hello dashboard");

    await dash.locator("#connections", { hasText: /^3$/ }).waitFor();
    await dash.locator("#users", { hasText: /^3$/ }).waitFor();
    await dash.locator('#lobbies tr[data-lobby="lobby-a"] td.conns', { hasText: /^2$/ }).waitFor();
    await dash.locator('#lobbies tr[data-lobby="lobby-b"] td.conns', { hasText: /^1$/ }).waitFor();
    await dash.locator("#lobby-count", { hasText: /^2$/ }).waitFor();
    assert.equal(await dash.locator("#capacity").textContent(), "0.03");
    // Ping latency appears once the server measured a round trip (ping interval 500 ms).
    await dash.locator("#latency", { hasText: / ms$/ }).waitFor();
    await dash.locator("#messages-in", { hasText: /^([6-9]|\d\d+)$/ }).waitFor();
    // The last 15 minutes, from /api/history: charts with a legend, values on hover.
    await dash.locator("#chart-connections polyline.series").first().waitFor();
    await dash.locator("#legend-connections .legend-item", { hasText: "connections" }).waitFor();
    await dash.locator("#chart-messages polyline.series").first().waitFor();
    const chart = dash.locator("#chart-connections");
    const box = await chart.boundingBox();
    await dash.mouse.move(box.x + box.width - 12, box.y + box.height / 2);
    await dash.locator('#chart-connections text.tip[visibility="visible"]', { hasText: /connections \d+/ }).waitFor();
    await dash.screenshot({ path: screenshotPath("dashboard.png"), fullPage: true });

    // No reload: the numbers follow.
    await b.context().close();
    await dash.locator("#connections", { hasText: /^2$/ }).waitFor();
    await dash.locator('#lobbies tr[data-lobby="lobby-a"] td.conns', { hasText: /^1$/ }).waitFor();
    n1.close();
    await dash.locator("#connections", { hasText: /^1$/ }).waitFor();
    await dash.locator('#lobbies tr[data-lobby="lobby-b"]').waitFor({ state: "detached" });
    await a.context().close();
    await dash.locator("#connections", { hasText: /^0$/ }).waitFor();
    await dash.context().close();
    assert.deepEqual(problems, []);
  });

  test("the charts draw what /api/stats says, and move as a load connects, chats and leaves", async () => {
    const s = await server({ name: "dashboard-load" });
    const dash = await newPage(browser, problems);
    await dash.goto(`${s.url}/dashboard`);
    await dash.locator('#status[data-state="open"]').waitFor();
    // The load script: Node clients in two lobbies, each sending a broadcast every 100 ms.
    const chatting = new Set();
    const load = async (count, from) => {
      for (let i = from; i < from + count; i++) chatting.add(await nodeClient(s, `load-${i % 2}`, `loader-${i}`));
    };
    const chatter = setInterval(() => {
      for (const c of chatting) c.broadcast({ text: "load" });
    }, 100);
    cleanups.push(async () => clearInterval(chatter));
    await load(6, 0);

    // Charts appear; the last drawn connection count is /api/stats's; messages flow both ways.
    assert.equal(await chartMatchesStats(dash, s), 6);
    await dash.locator("#chart-connections polyline.series[data-label=connections]").waitFor({ state: "attached" });
    await drawn(dash, "messages", "in", NON_ZERO_LAST).waitFor(CHART_WAIT);
    await drawn(dash, "messages", "out", NON_ZERO_LAST).waitFor(CHART_WAIT);
    await dash.locator("#connections", { hasText: /^6$/ }).waitFor();
    await dash.screenshot({ path: screenshotPath("dashboard-load-6.png"), fullPage: true });

    // More connect: the drawn line follows.
    await load(4, 6);
    assert.equal(await chartMatchesStats(dash, s), 10);
    await dash.screenshot({ path: screenshotPath("dashboard-load-10.png"), fullPage: true });

    // Some leave: it follows down, and the peak is still drawn.
    const leaving = [...chatting].slice(0, 7);
    for (const c of leaving) {
      chatting.delete(c);
      c.close();
    }
    // (Closes are asynchronous: the page's own count, from /api/stats, says when all landed.)
    await dash.locator("#connections", { hasText: /^3$/ }).waitFor();
    assert.equal(await chartMatchesStats(dash, s), 3);
    assert.equal(await drawn(dash, "connections", "connections").getAttribute("data-max"), "10");

    // The chatter stops: the drawn rates fall back to zero.
    clearInterval(chatter);
    await drawn(dash, "messages", "in", '[data-last="0"]').waitFor(CHART_WAIT);
    await drawn(dash, "messages", "out", '[data-last="0"]').waitFor(CHART_WAIT);
    assert.equal(await chartMatchesStats(dash, s), 3);
    await dash.screenshot({ path: screenshotPath("dashboard-load-3-quiet.png"), fullPage: true });
    for (const c of chatting) c.close();
    await dash.context().close();
    assert.deepEqual(problems, []);
  });

  test("finds a user's three connections, kicks one (4009, charted as closed: kicked), shows presence and broadcasts", async () => {
    const s = await server({ name: "dashboard-act", env: { SWITCHBOARD_USER_POLICY: "multi" } });
    const n1 = await nodeClient(s, "act-room", "ann");
    const n2 = await nodeClient(s, "act-room", "ann");
    const n3 = await nodeClient(s, "act-room", "ann");
    const ben = await nodeClient(s, "act-room", "ben");
    const dash = await newPage(browser, problems);
    await dash.goto(`${s.url}/dashboard`);
    await dash.locator("#connections", { hasText: /^4$/ }).waitFor();
    // A user: all three of ann's connections, with their lobby, and nobody else's.
    await dash.fill("#find", "ann");
    await dash.press("#find", "Enter");
    await dash.locator("#act-result", { hasText: "3 connection(s) on 1 node(s)." }).waitFor();
    const rows = dash.locator("#found tr");
    assert.equal(await rows.count(), 3);
    const ids = [n1, n2, n3].map((c) => c.welcome.connection_id).sort();
    assert.deepEqual((await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.connection))).sort(), ids);
    for (let i = 0; i < 3; i++) {
      assert.equal(await rows.nth(i).locator("td").nth(2).textContent(), "ann");
      assert.equal(await rows.nth(i).locator("td").nth(3).textContent(), "act-room");
    }
    await dash.screenshot({ path: screenshotPath("dashboard-find-user.png"), fullPage: true });
    // Nothing was closed yet: no "closed: kicked" series.
    await drawn(dash, "churn", "connects").waitFor();
    assert.equal(await drawn(dash, "churn", "closed: kicked").count(), 0);
    // A connection by id, then kicked from its row.
    const id = n1.welcome.connection_id;
    await dash.fill("#find", id);
    await dash.press("#find", "Enter");
    // (The row is there from the search before: wait for this search's answer.)
    await dash.locator("#act-result", { hasText: "1 connection(s) on 1 node(s)." }).waitFor();
    await dash.locator(`#found tr[data-connection="${id}"]`).waitFor();
    assert.equal(await dash.locator("#found tr").count(), 1);
    const kicked = n1.once("disconnect", 10_000);
    await dash.click(`#found tr[data-connection="${id}"] button.kick`);
    const goodbye = await kicked;
    assert.equal(goodbye.code, 4009);
    assert.equal(goodbye.reason, "kicked");
    await dash.locator("#act-result", { hasText: `Kicked ${id}` }).waitFor();
    // The chart of closes by reason draws it: a "closed: kicked" series with a non-zero value.
    await drawn(dash, "churn", "closed: kicked", '[data-max]:not([data-max="0"])').waitFor(CHART_WAIT);
    await dash.locator('#chart-churn polyline.series[data-label="closed: kicked"]').first().waitFor({ state: "attached" });
    await dash.locator("#connections", { hasText: /^3$/ }).waitFor();
    await dash.screenshot({ path: screenshotPath("dashboard-kicked-chart.png"), fullPage: true });
    // Presence and a broadcast to the lobby.
    await dash.fill("#act-lobby", "act-room");
    await dash.click("#show-presence");
    await dash.locator("#act-result", { hasText: "In act-room: ann, ben" }).waitFor();
    const got = ben.once("message", 10_000);
    await dash.fill("#act-message", '{"notice":"maintenance"}');
    await dash.click("#send-broadcast");
    assert.deepEqual((await got).data, { notice: "maintenance" });
    await dash.locator("#act-result", { hasText: "delivered to 3" }).waitFor();
    await dash.screenshot({ path: screenshotPath("dashboard-broadcast.png"), fullPage: true });
    // The whole user: ann's two remaining connections are closed.
    await dash.fill("#find", "ann");
    await dash.press("#find", "Enter");
    await dash.locator("#act-result", { hasText: "2 connection(s) on 1 node(s)." }).waitFor();
    await dash.locator("#kick-user:not([hidden])").waitFor();
    const annClosed = [n2, n3].map((c) => c.once("disconnect", 10_000));
    await dash.click("#kick-user");
    for (const closed of annClosed) assert.equal((await closed).code, 4009);
    await dash.locator("#act-result", { hasText: "Kicked ann: 2 connection(s) closed" }).waitFor();
    await dash.locator("#connections", { hasText: /^1$/ }).waitFor();
    await dash.screenshot({ path: screenshotPath("dashboard-kicked-user.png"), fullPage: true });
    await dash.context().close();
    assert.deepEqual(problems, []);
  });

  test("in a cluster, node A's page finds a user connected to node B, kicks it, and charts node B", async () => {
    const redis = await startRedis();
    cleanups.push(() => redis.stop());
    const cluster = (id) => ({
      SWITCHBOARD_REDIS__URL: redis.url,
      SWITCHBOARD_REDIS__NODE_ID: id,
      SWITCHBOARD_REDIS__HEARTBEAT_MS: "200",
    });
    const a = await server({ name: "dashboard-node-a", env: cluster("ea") });
    const b = await server({ name: "dashboard-node-b", env: cluster("eb") });
    const remy = await nodeClient(b, "far-room", "remy");
    const id = remy.welcome.connection_id;
    const dash = await newPage(browser, problems);
    await dash.goto(`${a.url}/dashboard`);
    await dash.locator('#status[data-state="open"]').waitFor();
    // Found on node B, with the live details node B gave (its lobby, transport, queue).
    await dash.fill("#find", "remy");
    await dash.press("#find", "Enter");
    const row = dash.locator(`#found tr[data-connection="${id}"]`);
    await row.waitFor();
    assert.equal(await row.getAttribute("data-node"), "eb");
    assert.equal(await row.getAttribute("data-live"), "true");
    assert.equal(await row.locator("td").nth(3).textContent(), "far-room");
    assert.equal(await row.locator("td").nth(8).textContent(), "websocket");
    await dash.locator("#act-result", { hasText: "1 connection(s) on 1 node(s)." }).waitFor();
    // Node B's charts, from node A's page: the selector lists both nodes.
    await dash.locator('#history-node option[value="eb"]').waitFor({ state: "attached" });
    await dash.locator("#history-node-label:not([hidden])").waitFor();
    await dash.selectOption("#history-node", "eb");
    // (Flat lines have no height: attached, not "visible" to playwright.)
    await dash.locator("#figure-redis:not([hidden]) polyline.series").first().waitFor({ state: "attached" });
    await dash.locator("#figure-redis-rtt:not([hidden]) polyline.series").first().waitFor({ state: "attached" });
    await dash.locator("#legend-redis .legend-item", { hasText: "errors" }).waitFor();
    assert.equal(await dash.locator("#history-node").inputValue(), "eb");
    await dash.screenshot({ path: screenshotPath("dashboard-cluster.png"), fullPage: true });
    // Kicked from node A's page: closed on node B with 4009.
    const kicked = remy.once("disconnect", 10_000);
    await row.locator("button.kick").click();
    assert.equal((await kicked).code, 4009);
    await dash.locator("#act-result", { hasText: `Kicked ${id}` }).waitFor();
    await dash.context().close();
    assert.deepEqual(problems, []);
  });

  test("with api.key set, asks for the key once and keeps it for the tab", async () => {
    const s = await server({
      name: "dashboard-key",
      env: { SWITCHBOARD_API__KEY: "sekret-key", SWITCHBOARD_PAGES__ENABLED: "true" },
    });
    await nodeClient(s, "keyed", "k1");
    const dash = await newPage(browser, problems);
    await dash.goto(`${s.url}/dashboard`);
    await dash.locator("#key-form:not([hidden])").waitFor();
    await dash.fill("#api-key", "wrong");
    await dash.press("#api-key", "Enter");
    await dash.locator("#key-error", { hasText: "That key was refused." }).waitFor();
    await dash.fill("#api-key", "sekret-key");
    await dash.press("#api-key", "Enter");
    await dash.locator("#connections", { hasText: /^1$/ }).waitFor();
    assert.equal(await dash.locator("#key-form").isHidden(), true);
    await dash.reload();
    await dash.locator('#status[data-state="open"]').waitFor();
    await dash.locator("#connections", { hasText: /^1$/ }).waitFor();
    assert.equal(await dash.locator("#key-form").isHidden(), true, "not asked again");
    await dash.context().close();
    assert.deepEqual(problems, []);
  });
});

describe("server-sent events", () => {
  test("a frame whose JSON holds line breaks arrives in EventSource as one intact event (gzipped)", async () => {
    const s = await server({ name: "sse-lines" });
    const page = await newPage(browser, problems);
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    const stream = new Promise((resolve) =>
      cdp.on("Network.responseReceived", (e) => e.response.url.includes("/sse/feed") && resolve(e.response)),
    );
    await page.goto(`${s.url}/?name=viewer&lobby=feed`);
    await page.evaluate(() => {
      window.got = [];
      const source = new EventSource("/sse/feed?token=viewer");
      source.addEventListener("welcome", () => (window.welcomed = true));
      source.addEventListener("message", (e) => window.got.push(JSON.parse(e.data)));
      window.source = source;
    });
    await page.waitForFunction(() => window.welcomed === true);
    // The browser asked for gzip and got it; each event decodes as it arrives.
    const { headers } = await stream;
    const encoding = Object.entries(headers).find(([k]) => k.toLowerCase() === "content-encoding");
    assert.equal(encoding?.[1], "gzip");
    const ws = new WebSocket(`${s.url.replace("http", "ws")}/ws/feed?token=writer`);
    cleanups.push(async () => ws.close());
    await new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    // Pretty-printed by a client: raw LF, CRLF and CR between the tokens.
    ws.send('{"type":"broadcast","data":{\n  "list": [\r\n    1,\r    2\n  ],\n  "s": "a\\nb"\n}}');
    ws.send('{"type":"broadcast","data":"after"}');
    await page.waitForFunction(() => window.got.length >= 2);
    const got = await page.evaluate(() => window.got.map((m) => m.data));
    assert.deepEqual(got, [{ list: [1, 2], s: "a\nb" }, "after"]);
    await page.evaluate(() => window.source.close());
    await page.context().close();
    assert.deepEqual(problems, []);
  });
});

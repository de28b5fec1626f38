// The Server-Sent Events transport (fake EventSource and fetch) and the `auto` fallback rule.
import { beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  refusalClose,
  SwitchboardClient,
  type ClientOptions,
  type DisconnectEvent,
  type MessageFrame,
} from "../../src/index.js";
import { FakeClock, FakeEventSource, FakeFetch, FakeSocket, flush } from "./fakes.js";

let clock: FakeClock;
let fetcher: FakeFetch;

function client(options: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    url: "ws://sb.test:8080",
    lobby: "room",
    token: "alice",
    transport: "sse",
    EventSource: FakeEventSource,
    fetch: fetcher.fetch,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
}

function disconnects(c: SwitchboardClient): DisconnectEvent[] {
  const seen: DisconnectEvent[] = [];
  c.on("disconnect", (d) => seen.push(d));
  return seen;
}

async function opened(c: SwitchboardClient, welcome: Record<string, unknown> = {}) {
  c.connect();
  await flush();
  const es = FakeEventSource.last();
  es.welcome(welcome);
  return es;
}

/** Lets queued POSTs (one at a time) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await flush();
}

beforeEach(() => {
  clock = new FakeClock();
  fetcher = new FakeFetch();
  FakeEventSource.reset();
  FakeSocket.reset();
});

describe("SSE transport", () => {
  test("streams GET /sse/{lobby}?token=T; frames become the usual events", async () => {
    const c = client({ url: "wss://sb.test", lobby: "a:b" });
    const got: MessageFrame[] = [];
    c.on("message", (m) => got.push(m));
    const members: string[] = [];
    c.on("member_joined", (m) => members.push(m.user_id));
    const es = await opened(c);
    assert.equal(es.url, "https://sb.test/sse/a%3Ab?token=alice");
    assert.equal(c.state, "open");
    assert.equal(c.transport, "sse");
    assert.equal(c.welcome?.connection_id, "sse-1");
    es.serverEvent({ type: "message", lobby: "a:b", from: "bob", data: { text: "hi" }, offset: 1 });
    es.serverEvent({ type: "member_joined", lobby: "a:b", user_id: "carol" });
    assert.deepEqual(got.map((m) => m.data), [{ text: "hi" }]);
    assert.deepEqual(members, ["carol"]);
  });

  test("sends with POST /sse/{lobby}/messages, in order, one request at a time; health_ping gets a POSTed health_pong", async () => {
    const c = client();
    c.broadcast("queued before welcome");
    const es = await opened(c);
    c.broadcast("one", { id: 1 });
    c.direct("bob", "two");
    es.serverEvent({ type: "health_ping", timestamp: 1234 });
    // Only the first request is in flight until it completes.
    assert.equal(fetcher.requests.length, 1);
    await settle();
    assert.deepEqual(
      fetcher.requests.map((r) => [r.method, r.url]),
      Array(4).fill(["POST", "http://sb.test:8080/sse/room/messages?token=alice"]),
    );
    assert.deepEqual(fetcher.posts(), [
      { connection_id: "sse-1", message: { type: "broadcast", data: "queued before welcome" } },
      { connection_id: "sse-1", message: { type: "broadcast", data: "one", id: 1 } },
      { connection_id: "sse-1", message: { type: "direct", to: "bob", data: "two" } },
      { connection_id: "sse-1", message: { type: "health_pong", timestamp: 1234 } },
    ]);
  });

  test("a refused POST is an error event echoing the frame's id", async () => {
    fetcher.respond = () => ({ status: 404, body: { error: { code: "unknown_connection", message: "gone" } } });
    const c = client();
    await opened(c);
    const err = c.once("error");
    c.send({ type: "presence", id: "p-1" });
    const e = await err;
    assert.deepEqual([e.code, e.message, e.id], ["unknown_connection", "gone", "p-1"]);
  });

  test("close event 4009: the stream is closed, no reconnect", async () => {
    const c = client();
    const seen = disconnects(c);
    const es = await opened(c);
    es.serverEvent({ type: "close", code: 4009, reason: "kicked" });
    assert.equal(es.closed, true, "no native reconnect");
    assert.equal(c.state, "closed");
    assert.deepEqual(
      seen.map((d) => [d.code, d.reason, d.willReconnect, d.transport]),
      [[4009, "kicked", false, "sse"]],
    );
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(FakeEventSource.instances.length, 1);
  });

  test("goodbye + close 4004: reconnects after retry_after_ms with since/epoch in the new stream's URL", async () => {
    const c = client();
    const seen = disconnects(c);
    const es = await opened(c, { offset: 0, epoch: "e1" });
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 1, offset: 1 });
    es.serverEvent({ type: "goodbye", code: 4004, reason: "stale", retry_after_ms: 1500 });
    es.serverEvent({ type: "close", code: 4004, reason: "stale" });
    assert.equal(es.closed, true);
    assert.deepEqual([seen[0].code, seen[0].willReconnect, seen[0].retryInMs], [4004, true, 1500]);
    clock.advance(1499);
    await flush();
    assert.equal(FakeEventSource.instances.length, 1);
    clock.advance(1);
    await flush();
    assert.equal(FakeEventSource.last().url, "http://sb.test:8080/sse/room?token=alice&since=1&epoch=e1");
  });

  test("a broken stream resumes natively (Last-Event-ID): same EventSource, disconnect then welcome, recovered", async () => {
    const c = client();
    const seen = disconnects(c);
    const states: string[] = [];
    c.on("state", (s) => states.push(s.state));
    const got: unknown[] = [];
    c.on("message", (m) => got.push(m.data));
    const es = await opened(c, { offset: 0, epoch: "e1" });
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 1, offset: 1 });
    es.serverDrop();
    assert.equal(es.closed, false, "EventSource keeps reconnecting by itself");
    assert.deepEqual(
      seen.map((d) => [d.code, d.reason, d.willReconnect, d.retryInMs]),
      [[1006, "stream_lost", true, null]],
    );
    assert.equal(c.state, "reconnecting");
    c.broadcast("typed while away");
    assert.equal(c.queued, 1);
    // The browser reconnected with Last-Event-ID (e1:1): the server replays what came after
    // it, then recovered.
    es.welcome({ connection_id: "sse-2", offset: 3, epoch: "e1" });
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 2, offset: 2 });
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 3, offset: 3 });
    es.serverEvent({ type: "recovered", ok: true });
    assert.deepEqual(got, [1, 2, 3]);
    assert.equal(c.lastRecovery?.ok, true);
    assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
    assert.equal(FakeEventSource.instances.length, 1);
    await settle();
    assert.deepEqual(fetcher.posts(), [
      { connection_id: "sse-2", message: { type: "broadcast", data: "typed while away" } },
    ]);
  });

  test("a resume with no welcome within connectTimeoutMs: dropped, a new stream with since/epoch after backoff", async () => {
    const c = client({ connectTimeoutMs: 5000 });
    const seen = disconnects(c);
    const es = await opened(c, { offset: 8, epoch: "e1" });
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 9, offset: 9 });
    es.serverDrop();
    clock.advance(5000);
    assert.equal(es.closed, true);
    assert.deepEqual(seen.map((d) => [d.code, d.reason]), [[1006, "stream_lost"], [4000, "connect_timeout"]]);
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(FakeEventSource.instances.length, 2);
    assert.equal(FakeEventSource.last().url, "http://sb.test:8080/sse/room?token=alice&since=9&epoch=e1");
  });

  test("a break before any message (no Last-Event-ID to resume with): a new stream with since/epoch", async () => {
    const c = client();
    const seen = disconnects(c);
    const es = await opened(c, { offset: 4, epoch: "e1" });
    es.serverDrop();
    assert.equal(es.closed, true, "no native resume");
    assert.deepEqual(seen.map((d) => [d.code, d.reason, d.willReconnect]), [[1006, "stream_lost", true]]);
    clock.advance(Math.min(...clock.delays()));
    await flush();
    const es2 = FakeEventSource.last();
    assert.equal(es2.url, "http://sb.test:8080/sse/room?token=alice&since=4&epoch=e1");
    // That stream's URL carries since: a break on it is not resumed natively either (the
    // server would prefer the URL's older since to Last-Event-ID).
    es2.welcome({ offset: 6, epoch: "e1" });
    es2.serverEvent({ type: "message", lobby: "room", from: null, data: 5, offset: 5 });
    es2.serverEvent({ type: "message", lobby: "room", from: null, data: 6, offset: 6 });
    es2.serverEvent({ type: "recovered", ok: true });
    es2.serverDrop();
    assert.equal(es2.closed, true);
    clock.advance(Math.min(...clock.delays()));
    await flush();
    assert.equal(FakeEventSource.last().url, "http://sb.test:8080/sse/room?token=alice&since=6&epoch=e1");
  });

  test("reconnect: false: a broken stream closes for good", async () => {
    const c = client({ reconnect: false });
    const es = await opened(c);
    es.serverEvent({ type: "message", lobby: "room", from: null, data: 1, offset: 1 });
    es.serverDrop();
    assert.equal(es.closed, true);
    assert.equal(c.state, "closed");
  });

  test("refused with 401 before the stream: the status is probed and means 4001, no reconnect", async () => {
    fetcher.respond = () => ({ status: 401, body: { error: { code: "unauthorized", message: "bad token" } } });
    const c = client();
    const seen = disconnects(c);
    c.connect();
    await flush();
    FakeEventSource.last().serverRefuse();
    await settle();
    assert.deepEqual(fetcher.requests.map((r) => [r.method, r.url]), [["GET", "http://sb.test:8080/sse/room?token=alice"]]);
    assert.deepEqual(seen.map((d) => [d.code, d.reason, d.willReconnect]), [[4001, "unauthorized", false]]);
    assert.equal(c.state, "closed");
  });

  test("refused with 503 server_full and Retry-After: retried no sooner", async () => {
    fetcher.respond = () => ({ status: 503, body: { error: { code: "server_full", message: "full" } }, headers: { "retry-after": "3" } });
    const c = client();
    const seen = disconnects(c);
    c.connect();
    await flush();
    FakeEventSource.last().serverRefuse();
    await settle();
    assert.deepEqual(seen.map((d) => [d.code, d.reason, d.willReconnect, d.goodbye?.retry_after_ms]), [[4002, "server_full", true, 3000]]);
    assert.ok((seen[0].retryInMs ?? 0) >= 3000);
  });

  test("refusalClose maps statuses and error codes to close codes", () => {
    assert.deepEqual(refusalClose(401, undefined), { code: 4001, reason: "unauthorized" });
    assert.deepEqual(refusalClose(503, "lobby_full"), { code: 4002, reason: "lobby_full" });
    assert.deepEqual(refusalClose(503, "server_shutdown"), { code: 1001, reason: "server_shutdown" });
    assert.deepEqual(refusalClose(429, undefined), { code: 4008, reason: "rate_limited" });
    assert.deepEqual(refusalClose(500, undefined), { code: 1006, reason: "http_500" });
  });
});

describe("transport: auto", () => {
  function auto(options: Partial<ClientOptions> = {}) {
    return client({ transport: "auto", WebSocket: FakeSocket, ...options });
  }

  test("WebSocket first; after 2 failures before open, Server-Sent Events", async () => {
    const c = auto();
    const seen = disconnects(c);
    c.connect();
    await flush();
    assert.equal(c.transport, "websocket");
    FakeSocket.last().serverClose(1006);
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(FakeSocket.instances.length, 2);
    FakeSocket.last().serverClose(1006);
    assert.equal(c.transport, "sse");
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(FakeSocket.instances.length, 2);
    assert.equal(FakeEventSource.instances.length, 1);
    FakeEventSource.last().welcome();
    assert.equal(c.state, "open");
    assert.deepEqual(seen.map((d) => d.transport), ["websocket", "websocket"]);
  });

  test("a WebSocket constructor that throws: SSE at once", async () => {
    class Throwing {
      constructor() {
        throw new Error("blocked");
      }
    }
    const c = auto({ WebSocket: Throwing as never });
    c.connect();
    await flush();
    assert.equal(c.transport, "sse");
    assert.equal(FakeEventSource.instances.length, 1);
  });

  test("once a WebSocket opened, failures never switch to SSE", async () => {
    const c = auto();
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    for (let i = 0; i < 4; i++) {
      FakeSocket.last().serverClose(1006);
      clock.advance(Math.min(...clock.delays())); // the reconnect timer only
      await flush();
    }
    assert.equal(c.transport, "websocket");
    assert.equal(FakeEventSource.instances.length, 0);
  });

  test("SSE failing too before any welcome (server down): back to WebSocket", async () => {
    const c = auto({ fallbackAfter: 1 });
    c.connect();
    await flush();
    FakeSocket.last().serverClose(1006);
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(c.transport, "sse");
    FakeEventSource.last().serverDrop(); // never welcomed: a failed attempt, not a resume
    await settle();
    assert.equal(FakeEventSource.last().closed, true);
    assert.equal(c.transport, "websocket");
    clock.advance(Math.min(...clock.delays())); // the reconnect timer only
    await flush();
    assert.equal(FakeSocket.instances.length, 2);
  });

  test("transport: websocket never falls back", async () => {
    const c = auto({ transport: "websocket" });
    c.connect();
    await flush();
    for (let i = 0; i < 3; i++) {
      FakeSocket.last().serverClose(1006);
      clock.advance(Math.min(...clock.delays())); // the reconnect timer only
      await flush();
    }
    assert.equal(FakeEventSource.instances.length, 0);
  });

  test("no WebSocket at all but an EventSource: SSE", () => {
    const c = new SwitchboardClient({ url: "http://x", lobby: "l", token: "t", EventSource: FakeEventSource, fetch: fetcher.fetch });
    assert.equal(c.transport, "sse");
  });
});

import { beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { SwitchboardClient, type ClientOptions, type DisconnectEvent } from "../../src/index.js";
import { FakeClock, FakeSocket, flush } from "./fakes.js";

let clock: FakeClock;

function client(options: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    url: "ws://sb.test:8080/",
    lobby: "room",
    token: "alice",
    WebSocket: FakeSocket,
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

beforeEach(() => {
  clock = new FakeClock();
  FakeSocket.reset();
});

describe("connecting", () => {
  test("builds the URL with the encoded lobby and token and offers switchboard.v1", async () => {
    const c = client({ url: "http://sb.test:8080", lobby: "a:b.c", token: "jo é&x" });
    c.connect();
    await flush();
    const s = FakeSocket.last();
    assert.equal(s.url, "ws://sb.test:8080/ws/a%3Ab.c?token=jo%20%C3%A9%26x");
    assert.equal(s.protocols, "switchboard.v1");
    assert.equal(c.state, "connecting");
  });

  test("states: idle -> connecting -> open on welcome, with typed events", async () => {
    const c = client();
    const states: string[] = [];
    c.on("state", (s) => states.push(`${s.previous}->${s.state}`));
    const welcome = c.once("welcome");
    c.connect();
    await flush();
    FakeSocket.last().welcome({ connection_id: "x-7" });
    assert.equal((await welcome).connection_id, "x-7");
    assert.equal(c.state, "open");
    assert.equal(c.welcome?.user_id, "alice");
    assert.deepEqual(states, ["idle->connecting", "connecting->open"]);
  });

  test("requires a WebSocket constructor outside browsers", () => {
    assert.throws(
      () => new SwitchboardClient({ url: "ws://x", lobby: "l", token: "t" }),
      /no global WebSocket/,
    );
  });

  test("emits every server frame type as its own event", async () => {
    const c = client();
    const got: string[] = [];
    for (const t of ["message", "direct", "presence", "member_joined", "member_left", "error", "goodbye"] as const) {
      c.on(t, (f) => got.push(f.type));
    }
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.welcome();
    s.serverSend({ type: "message", lobby: "room", from: "bob", data: { text: "hi" } });
    s.serverSend({ type: "direct", from: null, data: 1 });
    s.serverSend({ type: "presence", lobby: "room", users: ["alice", "bob"] });
    s.serverSend({ type: "member_joined", lobby: "room", user_id: "carol" });
    s.serverSend({ type: "member_left", lobby: "room", user_id: "carol" });
    s.serverSend({ type: "error", code: "missing_field", message: "m", id: 3 });
    s.serverSend({ type: "goodbye", code: 4004, reason: "stale", retry_after_ms: 5 });
    s.onmessage?.({ data: "not json" });
    s.onmessage?.({ data: Buffer.from('{"type":"message","lobby":"room","from":"b","data":2}') });
    assert.deepEqual(got, ["message", "direct", "presence", "member_joined", "member_left", "error", "goodbye", "message"]);
  });
});

describe("health", () => {
  test("answers health_ping at once with health_pong echoing the timestamp", async () => {
    const c = client();
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.welcome();
    s.serverSend({ type: "health_ping", timestamp: 1767225620000 });
    s.serverSend({ type: "health_ping", timestamp: 1767225640123 });
    assert.deepEqual(s.sentOfType("health_pong"), [
      { type: "health_pong", timestamp: 1767225620000 },
      { type: "health_pong", timestamp: 1767225640123 },
    ]);
  });

  test("liveness: no server traffic for 2 x ping_interval_ms drops the connection and reconnects", async () => {
    const c = client({ random: () => 0 });
    const seen = disconnects(c);
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.welcome({ ping_interval_ms: 1000 });
    // Traffic keeps it alive: pings every 1.5 s never let 2 s of silence pass.
    for (let i = 0; i < 5; i++) {
      clock.advance(1500);
      s.serverSend({ type: "health_ping", timestamp: i });
    }
    assert.equal(c.state, "open");
    assert.equal(seen.length, 0);
    clock.advance(1999);
    assert.equal(c.state, "open");
    clock.advance(1);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].code, 4000);
    assert.equal(seen[0].reason, "liveness_timeout");
    assert.equal(seen[0].willReconnect, true);
    assert.deepEqual(s.closedWith, { code: 4000, reason: "liveness_timeout" });
    assert.equal(c.state, "reconnecting");
    clock.advance(0);
    await flush();
    assert.equal(FakeSocket.instances.length, 2, "a new socket was opened");
    // The abandoned socket's late close does not disturb the new one.
    s.serverClose(1006);
    assert.equal(seen.length, 1);
  });

  test("liveness honours a custom factor and a connect timeout catches a silent handshake", async () => {
    const c = client({ livenessFactor: 3, connectTimeoutMs: 5000, random: () => 0 });
    const seen = disconnects(c);
    c.connect();
    await flush();
    FakeSocket.last().serverOpen(); // TCP + upgrade ok, but no welcome ever comes
    clock.advance(4999);
    assert.equal(seen.length, 0);
    clock.advance(1);
    assert.equal(seen[0].reason, "connect_timeout");
    clock.advance(0);
    await flush();
    FakeSocket.last().welcome({ ping_interval_ms: 100 });
    clock.advance(299);
    assert.equal(c.state, "open");
    clock.advance(1);
    assert.equal(seen[1].reason, "liveness_timeout");
  });
});

describe("close codes", () => {
  for (const [code, reason] of [
    [4001, "unauthorized"],
    [4003, "replaced"],
    [4009, "kicked"],
  ] as const) {
    test(`no reconnect after ${code} ${reason}`, async () => {
      const c = client();
      const seen = disconnects(c);
      c.connect();
      await flush();
      FakeSocket.last().welcome();
      FakeSocket.last().serverClose(code, reason);
      assert.equal(c.state, "closed");
      assert.equal(seen[0].willReconnect, false);
      assert.equal(seen[0].reason, reason);
      clock.advance(10 * 60_000);
      await flush();
      assert.equal(FakeSocket.instances.length, 1, "never reconnected");
      assert.equal(clock.delays().length, 0, "no timer left");
    });
  }

  for (const code of [1000, 1006, 1011, 1002, 1003, 1007, 1009]) {
    test(`reconnect with backoff after ${code}`, async () => {
      const c = client({ random: () => 0.5, backoff: { initialMs: 1000, maxMs: 60_000, factor: 2 } });
      const seen = disconnects(c);
      c.connect();
      await flush();
      FakeSocket.last().welcome();
      FakeSocket.last().serverClose(code);
      assert.equal(c.state, "reconnecting");
      assert.equal(seen[0].willReconnect, true);
      assert.equal(seen[0].retryInMs, 500, "half of the first cap with random 0.5");
      clock.advance(499);
      await flush();
      assert.equal(FakeSocket.instances.length, 1);
      clock.advance(1);
      await flush();
      assert.equal(FakeSocket.instances.length, 2);
    });
  }

  test("consecutive failures grow the delay exponentially; a welcome resets it", async () => {
    const c = client({ random: () => 0.999, backoff: { initialMs: 100, maxMs: 1000, factor: 2 } });
    const seen = disconnects(c);
    c.connect();
    await flush();
    for (let i = 0; i < 6; i++) {
      FakeSocket.last().serverClose(1006);
      clock.advance(seen[seen.length - 1].retryInMs!);
      await flush();
    }
    assert.deepEqual(
      seen.map((d) => d.retryInMs),
      [99, 199, 399, 799, 999, 999],
    );
    assert.deepEqual(seen.map((d) => d.attempt), [1, 2, 3, 4, 5, 6]);
    FakeSocket.last().welcome();
    assert.equal(c.attempt, 0);
    FakeSocket.last().serverClose(1006);
    assert.equal(seen[seen.length - 1].retryInMs, 99, "back to the first cap");
  });

  test("4002 lobby_full: waits the goodbye's retry_after_ms, which wins over a shorter backoff", async () => {
    const c = client({ random: () => 0.999 });
    const seen = disconnects(c);
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.serverOpen();
    s.serverSend({ type: "goodbye", code: 4002, reason: "lobby_full", retry_after_ms: 7321 });
    s.serverClose(4002, "lobby_full");
    assert.equal(seen[0].retryInMs, 7321);
    assert.equal(seen[0].info?.meaning, "the per-lobby limit");
    assert.equal(seen[0].goodbye?.retry_after_ms, 7321);
    assert.equal(c.state, "reconnecting");
    clock.advance(7320);
    await flush();
    assert.equal(FakeSocket.instances.length, 1, "not before retry_after_ms");
    clock.advance(1);
    await flush();
    assert.equal(FakeSocket.instances.length, 2);
  });

  test("a backoff longer than retry_after_ms wins (the larger of the two)", async () => {
    const c = client({ random: () => 0.999, backoff: { initialMs: 20_000, maxMs: 60_000, factor: 2 } });
    const seen = disconnects(c);
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.welcome();
    s.serverSend({ type: "goodbye", code: 1001, reason: "server_shutdown", retry_after_ms: 1500 });
    s.serverClose(1001, "server_shutdown");
    assert.equal(seen[0].retryInMs, 19_980, "0.999 x 20000 > 1500");
  });

  test("a goodbye belongs to its own connection only", async () => {
    const c = client({ random: () => 0 });
    const seen = disconnects(c);
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    FakeSocket.last().serverSend({ type: "goodbye", code: 4004, reason: "stale", retry_after_ms: 1200 });
    FakeSocket.last().serverClose(4004, "stale");
    assert.equal(seen[0].retryInMs, 1200);
    clock.advance(1200);
    await flush();
    FakeSocket.last().serverClose(1006);
    assert.equal(seen[1].retryInMs, 0, "no stale goodbye reused");
  });

  test("4010 token_expired: getToken() is called again and the fresh token is used", async () => {
    let n = 0;
    const c = client({
      token: undefined,
      getToken: async () => `tok-${++n}`,
      random: () => 0,
    });
    c.connect();
    await flush();
    assert.match(FakeSocket.last().url, /token=tok-1$/);
    FakeSocket.last().welcome();
    FakeSocket.last().serverSend({ type: "goodbye", code: 4010, reason: "token_expired", retry_after_ms: 300 });
    FakeSocket.last().serverClose(4010, "token_expired");
    assert.equal(c.state, "reconnecting");
    clock.advance(300);
    await flush();
    assert.equal(n, 2, "getToken called before the reconnect");
    assert.match(FakeSocket.last().url, /token=tok-2$/);
    FakeSocket.last().welcome();
    assert.equal(c.state, "open");
  });

  test("getToken() is called before every connect, and a failing getToken is retried", async () => {
    let n = 0;
    const errors: unknown[] = [];
    const c = client({
      token: undefined,
      getToken: () => {
        n++;
        if (n === 2) throw new Error("auth service down");
        return `t${n}`;
      },
      random: () => 0.5,
      backoff: { initialMs: 1000, maxMs: 1000, factor: 2 },
    });
    c.on("token_error", (e) => errors.push(e));
    c.connect();
    await flush();
    FakeSocket.last().serverClose(1006);
    clock.advance(500);
    await flush();
    assert.equal(errors.length, 1);
    assert.equal(FakeSocket.instances.length, 1, "no socket without a token");
    clock.advance(500);
    await flush();
    assert.equal(n, 3);
    assert.match(FakeSocket.last().url, /token=t3$/);
  });

  test("reconnect: false stops after any close", async () => {
    const c = client({ reconnect: false });
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    FakeSocket.last().serverClose(1006);
    assert.equal(c.state, "closed");
  });
});

describe("queue", () => {
  test("frames sent before welcome wait and go out in order after it (not on socket open)", async () => {
    const c = client();
    assert.equal(c.broadcast({ n: 1 }), true, "queued while idle");
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.serverOpen();
    c.direct("bob", { n: 2 }, { id: "d1" });
    c.send({ type: "game_move", x: 3 });
    assert.equal(s.sent.length, 0, "nothing before welcome");
    assert.equal(c.queued, 3);
    s.welcome();
    assert.deepEqual(s.sent, [
      { type: "broadcast", data: { n: 1 } },
      { type: "direct", to: "bob", data: { n: 2 }, id: "d1" },
      { type: "game_move", x: 3 },
    ]);
    assert.equal(c.queued, 0);
    c.broadcast("now", { excludeSelf: true, id: 9 });
    assert.deepEqual(s.sent[3], { type: "broadcast", data: "now", exclude_self: true, id: 9 });
  });

  test("queued frames go out before anything a welcome or state listener sends", async () => {
    const c = client();
    c.broadcast("old");
    c.on("state", (st) => {
      if (st.state === "open") c.broadcast("from state listener");
    });
    c.on("welcome", () => {
      assert.equal(c.queued, 0, "queue already flushed when listeners run");
      c.broadcast("from welcome listener");
    });
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    assert.deepEqual(
      FakeSocket.last().sentOfType("broadcast").map((f) => f.data),
      ["old", "from state listener", "from welcome listener"],
    );
  });

  test("frames sent while reconnecting survive a refused attempt and reach the next connection", async () => {
    const c = client({ random: () => 0 });
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    FakeSocket.last().serverClose(1006);
    c.broadcast("a");
    c.broadcast("b");
    clock.advance(0);
    await flush();
    // Accepted, then refused: nothing may be sent into this socket.
    const refused = FakeSocket.last();
    refused.serverOpen();
    refused.serverSend({ type: "goodbye", code: 4002, reason: "lobby_full", retry_after_ms: 10 });
    refused.serverClose(4002, "lobby_full");
    assert.equal(refused.sent.length, 0);
    clock.advance(10);
    await flush();
    FakeSocket.last().welcome();
    assert.deepEqual(FakeSocket.last().sentOfType("broadcast").map((f) => f.data), ["a", "b"]);
  });

  test("the queue is bounded: beyond maxQueue the newest frames are dropped and reported", async () => {
    const c = client({ maxQueue: 3 });
    const dropped: unknown[] = [];
    c.on("dropped", (d) => dropped.push([d.reason, d.frame.data]));
    const results = [1, 2, 3, 4, 5].map((n) => c.broadcast(n));
    assert.deepEqual(results, [true, true, true, false, false]);
    assert.equal(c.queued, 3);
    assert.deepEqual(dropped, [["queue_full", 4], ["queue_full", 5]]);
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    assert.deepEqual(FakeSocket.last().sentOfType("broadcast").map((f) => f.data), [1, 2, 3]);
  });

  test("health_pong is never queued", async () => {
    const c = client();
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.serverOpen();
    s.serverSend({ type: "health_ping", timestamp: 5 });
    assert.equal(c.queued, 0);
    assert.deepEqual(s.sent, [{ type: "health_pong", timestamp: 5 }]);
  });

  test("presence() resolves with the next presence answer", async () => {
    const c = client();
    c.connect();
    await flush();
    const s = FakeSocket.last();
    const users = c.presence();
    s.welcome();
    assert.deepEqual(s.sent, [{ type: "presence" }]);
    s.serverSend({ type: "presence", lobby: "room", users: ["alice", "bob"] });
    assert.deepEqual(await users, ["alice", "bob"]);
  });

  test("presence() rejects when no answer comes in time", async () => {
    const c = client();
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    const users = c.presence({ timeoutMs: 50 });
    clock.advance(50);
    await assert.rejects(users, /no presence answer/);
  });
});

describe("close()", () => {
  test("closes with 1000, emits the final state and never reconnects", async () => {
    const c = client();
    const seen = disconnects(c);
    c.connect();
    await flush();
    const s = FakeSocket.last();
    s.welcome();
    c.close();
    assert.deepEqual(s.closedWith, { code: 1000, reason: "client_closed" });
    assert.equal(c.state, "closed");
    assert.equal(seen.length, 1);
    assert.equal(seen[0].willReconnect, false);
    s.serverClose(1000, "client_closed"); // the echo of our close: ignored
    assert.equal(seen.length, 1);
    clock.advance(60_000);
    await flush();
    assert.equal(FakeSocket.instances.length, 1);
    assert.equal(clock.delays().length, 0, "every timer cleared");
    assert.equal(c.broadcast("late"), false, "nothing is accepted after close()");
  });

  test("close() during the reconnect delay cancels the retry and drops the queue", async () => {
    const c = client({ random: () => 0.5 });
    const dropped: string[] = [];
    c.on("dropped", (d) => dropped.push(d.reason));
    c.connect();
    await flush();
    FakeSocket.last().welcome();
    FakeSocket.last().serverClose(1006);
    c.broadcast("x");
    c.close();
    clock.advance(60_000);
    await flush();
    assert.equal(FakeSocket.instances.length, 1);
    assert.deepEqual(dropped, ["closed"]);
  });

  test("close() while an async getToken is pending opens no socket; connect() works again", async () => {
    let release!: (t: string) => void;
    const c = client({ token: undefined, getToken: () => new Promise<string>((r) => (release = r)) });
    c.connect();
    c.close();
    release("late");
    await flush();
    assert.equal(FakeSocket.instances.length, 0);
    c.connect();
    release("again");
    await flush();
    assert.equal(FakeSocket.instances.length, 1);
    FakeSocket.last().welcome();
    assert.equal(c.state, "open");
  });
});

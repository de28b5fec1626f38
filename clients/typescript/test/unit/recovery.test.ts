// Recovery after reconnect: offsets, epoch, since/epoch on reconnect, recovered, duplicates.
import { beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { SwitchboardClient, type ClientOptions, type MessageFrame, type RecoveredFrame } from "../../src/index.js";
import { FakeClock, FakeSocket, flush } from "./fakes.js";

let clock: FakeClock;

function client(options: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    url: "ws://sb.test:8080",
    lobby: "room",
    token: "alice",
    WebSocket: FakeSocket,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
}

const msg = (offset: number, data: unknown = offset) => ({ type: "message", lobby: "room", from: null, data, offset });

function messages(c: SwitchboardClient): unknown[] {
  const got: unknown[] = [];
  c.on("message", (m: MessageFrame) => got.push(m.data));
  return got;
}

/** Connects and returns the open socket. */
async function opened(c: SwitchboardClient, welcome: Record<string, unknown> = { offset: 0, epoch: "e1" }) {
  c.connect();
  await flush();
  const s = FakeSocket.last();
  s.welcome(welcome);
  return s;
}

/** Drops the connection (1006) and lets the client reconnect; returns the new socket. */
async function reconnect(s: FakeSocket): Promise<FakeSocket> {
  s.serverClose(1006);
  clock.advance(Math.min(...clock.delays())); // the reconnect timer only
  await flush();
  const next = FakeSocket.last();
  assert.notEqual(next, s, "a new socket was opened");
  return next;
}

beforeEach(() => {
  clock = new FakeClock();
  FakeSocket.reset();
});

describe("recovery", () => {
  test("the first connect has no since/epoch; a reconnect asks from the last offset received", async () => {
    const c = client();
    const s = await opened(c, { offset: 7, epoch: "ep:1/x" });
    assert.equal(s.url, "ws://sb.test:8080/ws/room?token=alice");
    assert.deepEqual([c.epoch, c.lastOffset], ["ep:1/x", 7]);
    s.serverSend(msg(8));
    s.serverSend(msg(9));
    const s2 = await reconnect(s);
    assert.equal(s2.url, "ws://sb.test:8080/ws/room?token=alice&since=9&epoch=ep%3A1%2Fx");
    // And again after the next reconnect, from where the last one got to.
    s2.welcome({ offset: 12, epoch: "ep:1/x" });
    s2.serverSend(msg(10));
    s2.serverSend(msg(11));
    s2.serverSend(msg(12));
    s2.serverSend({ type: "recovered", ok: true });
    const s3 = await reconnect(s2);
    assert.match(s3.url, /&since=12&epoch=/);
  });

  test("a reconnect before any welcome (no epoch yet) has no since", async () => {
    const c = client();
    c.connect();
    await flush();
    const s = FakeSocket.last();
    const s2 = await reconnect(s);
    assert.equal(s2.url, "ws://sb.test:8080/ws/room?token=alice");
  });

  test("a server without epoch in welcome: no since, no duplicate filtering", async () => {
    const c = client();
    const got = messages(c);
    const s = await opened(c, {});
    s.serverSend({ type: "message", lobby: "room", from: null, data: "a" });
    s.serverSend({ type: "message", lobby: "room", from: null, data: "a" });
    assert.deepEqual(got, ["a", "a"]);
    const s2 = await reconnect(s);
    assert.equal(s2.url, "ws://sb.test:8080/ws/room?token=alice");
  });

  test("replayed then live messages arrive once each, in order; recovered event and lastRecovery", async () => {
    const c = client();
    const got = messages(c);
    const recovered: RecoveredFrame[] = [];
    c.on("recovered", (r) => recovered.push(r));
    const s = await opened(c, { offset: 0, epoch: "e1" });
    s.serverSend(msg(1));
    s.serverSend(msg(2));
    assert.equal(c.lastRecovery, null);
    const s2 = await reconnect(s);
    assert.match(s2.url, /since=2&epoch=e1$/);
    s2.welcome({ offset: 5, epoch: "e1" });
    s2.serverSend(msg(3));
    s2.serverSend(msg(4));
    s2.serverSend(msg(5));
    s2.serverSend({ type: "recovered", ok: true });
    s2.serverSend(msg(6));
    assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(recovered, [{ type: "recovered", ok: true }]);
    assert.deepEqual(c.lastRecovery, { type: "recovered", ok: true });
    assert.equal(c.lastOffset, 6);
  });

  test("offsets going back on a live connection (numbering restarted): delivered, tracking forgotten", async () => {
    const c = client();
    const got = messages(c);
    const s = await opened(c, { offset: 40, epoch: "old" });
    s.serverSend(msg(41));
    s.serverSend(msg(42));
    // The lobby's history was lost server-side: numbering starts again at 1.
    s.serverSend(msg(1));
    s.serverSend(msg(2));
    assert.deepEqual(got, [41, 42, 1, 2], "nothing is dropped");
    assert.equal(c.epoch, null, "the old epoch is forgotten");
    const s2 = await reconnect(s);
    assert.equal(s2.url, "ws://sb.test:8080/ws/room?token=alice", "no since for a range that is gone");
  });

  test("a new epoch resets tracking: its messages are delivered, and the next since is in it", async () => {
    const c = client();
    const got = messages(c);
    const s = await opened(c, { offset: 40, epoch: "e1" });
    s.serverSend(msg(41));
    const s2 = await reconnect(s);
    assert.match(s2.url, /since=41&epoch=e1$/);
    // The server restarted: a new epoch, history lost.
    s2.welcome({ offset: 0, epoch: "e2" });
    s2.serverSend({ type: "recovered", ok: false });
    assert.equal(c.lastRecovery?.ok, false);
    s2.serverSend(msg(1, "new-1"));
    s2.serverSend(msg(2, "new-2"));
    assert.deepEqual(got, [41, "new-1", "new-2"]);
    assert.deepEqual([c.epoch, c.lastOffset], ["e2", 2]);
    const s3 = await reconnect(s2);
    assert.match(s3.url, /since=2&epoch=e2$/);
  });

  test("recovered ok:false in the same epoch: the next recovery starts at that welcome's offset", async () => {
    const c = client();
    const s = await opened(c, { offset: 3, epoch: "e1" });
    const s2 = await reconnect(s);
    assert.match(s2.url, /since=3&epoch=e1$/);
    s2.welcome({ offset: 500, epoch: "e1" });
    s2.serverSend({ type: "recovered", ok: false });
    assert.equal(c.lastOffset, 500);
    const s3 = await reconnect(s2);
    assert.match(s3.url, /since=500&epoch=e1$/);
  });

  test("connect() after close() starts afresh: no since, lastRecovery cleared", async () => {
    const c = client();
    const s = await opened(c, { offset: 3, epoch: "e1" });
    const s2 = await reconnect(s);
    s2.welcome({ offset: 3, epoch: "e1" });
    s2.serverSend({ type: "recovered", ok: true });
    c.close();
    assert.equal(c.lastRecovery?.ok, true);
    c.connect();
    await flush();
    assert.equal(FakeSocket.last().url, "ws://sb.test:8080/ws/room?token=alice");
    assert.equal(c.lastRecovery, null);
  });

  test("a reconnect after a goodbye close (4004) asks for recovery too", async () => {
    const c = client();
    const s = await opened(c, { offset: 0, epoch: "e1" });
    s.serverSend(msg(1));
    s.serverSend({ type: "goodbye", code: 4004, reason: "stale", retry_after_ms: 100 });
    const s2 = await reconnect(s);
    assert.match(s2.url, /since=1&epoch=e1$/);
  });
});

// Protocol v2: rooms over one connection, requests matched to answers by id, rejoin after a
// reconnect with each room's since / epoch, and the token refresh schedule.
import { beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  refreshDelay,
  refreshRetryDelay,
  SwitchboardClient,
  SwitchboardError,
  type ClientOptions,
  type Room,
  type RoomLeftEvent,
} from "../../src/index.js";
import { FakeClock, FakeSocket, flush } from "./fakes.js";

let clock: FakeClock;

function client(options: Partial<ClientOptions> = {}): SwitchboardClient {
  return new SwitchboardClient({
    url: "ws://sb.test:8080/",
    protocol: 2,
    token: "alice",
    WebSocket: FakeSocket,
    timers: clock,
    now: () => clock.now,
    random: () => 0,
    ...options,
  });
}

/** The v2 welcome (no lobby fields). */
function welcome(s: FakeSocket, overrides: Record<string, unknown> = {}): void {
  if (s.readyState === 0) s.serverOpen();
  s.serverSend({
    type: "welcome",
    connection_id: "n1-7",
    user_id: "alice",
    ping_interval_ms: 20_000,
    server_time: clock.now,
    protocol: 2,
    max_lobbies: 64,
    ...overrides,
  });
}

async function open(c: SwitchboardClient, overrides: Record<string, unknown> = {}): Promise<FakeSocket> {
  c.connect();
  await flush();
  const s = FakeSocket.last();
  welcome(s, overrides);
  return s;
}

/** The last frame of a type the client sent. */
function lastOf(s: FakeSocket, type: string): Record<string, unknown> {
  const frames = s.sentOfType(type);
  const f = frames[frames.length - 1];
  assert.ok(f, `no ${type} frame was sent`);
  return f;
}

/** Answers the last `join` the client sent with `joined`. */
function answerJoin(s: FakeSocket, lobby: string, offset = 0, epoch = "e1"): void {
  const join = s.sentOfType("join").filter((f) => f.lobby === lobby).pop();
  assert.ok(join, `no join of ${lobby}`);
  s.serverSend({ type: "joined", lobby, offset, epoch, presence_events: true, id: join.id });
}

async function joined(c: SwitchboardClient, s: FakeSocket, lobby: string, offset = 0, epoch = "e1"): Promise<Room> {
  const p = c.join(lobby);
  answerJoin(s, lobby, offset, epoch);
  return p;
}

async function rejects(p: Promise<unknown>, code: string): Promise<SwitchboardError> {
  try {
    await p;
  } catch (error) {
    assert.ok(error instanceof SwitchboardError, `not a SwitchboardError: ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`resolved; expected a rejection with ${code}`);
}

beforeEach(() => {
  clock = new FakeClock();
  FakeSocket.reset();
});

describe("v2: connecting", () => {
  test("connects to /ws (no lobby) offering switchboard.v2", async () => {
    const c = client({ url: "http://sb.test:8080", token: "jo é" });
    c.connect();
    await flush();
    const s = FakeSocket.last();
    assert.equal(s.url, "ws://sb.test:8080/ws?token=jo%20%C3%A9");
    assert.equal(s.protocols, "switchboard.v2");
    welcome(s);
    assert.equal(c.state, "open");
    assert.equal(c.welcome?.max_lobbies, 64);
  });

  test("options: no lobby in v2, no SSE in v2, protocol 1 or 2 only; v1 unchanged", () => {
    assert.throws(() => client({ lobby: "room" }), /use client\.join/);
    assert.throws(() => client({ transport: "sse" }), /WebSocket only/);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    assert.throws(() => client({ protocol: 3 as any }), /1 or 2/);
    const v1 = new SwitchboardClient({ url: "ws://x", lobby: "l", token: "t", WebSocket: FakeSocket, protocol: 1 });
    assert.equal(v1.v2, false);
    assert.throws(() => new SwitchboardClient({ url: "ws://x", token: "t", WebSocket: FakeSocket }), /lobby is required/);
  });

  test("v1 clients have no join() or request()", async () => {
    const v1 = new SwitchboardClient({ url: "ws://x", lobby: "l", token: "t", WebSocket: FakeSocket, timers: clock });
    await rejects(v1.join("room"), "unsupported");
    await rejects(v1.request({ type: "x" }), "unsupported");
  });
});

describe("v2: requests and answers", () => {
  test("join resolves with the room on the joined carrying the join's id", async () => {
    const c = client();
    const s = await open(c);
    const p = c.join("room-2");
    const join = lastOf(s, "join");
    assert.equal(join.lobby, "room-2");
    assert.ok(join.id !== undefined, "the join carries an id");
    assert.equal("since" in join, false, "a first join asks for no recovery");
    assert.equal(c.room("room-2")?.state, "joining");
    s.serverSend({ type: "joined", lobby: "room-2", offset: 41, epoch: "9f2c", presence_events: true, id: join.id });
    const room = await p;
    assert.equal(room.lobby, "room-2");
    assert.equal(room.state, "joined");
    assert.equal(room.epoch, "9f2c");
    assert.equal(room.lastOffset, 41);
    assert.deepEqual(c.rooms, [room]);
    assert.equal(await c.join("room-2"), room, "joining again gives the same room");
    assert.equal(clock.delays().length, 1, "only the liveness timer is left");
  });

  test("a refused join rejects with the server's error code; the room is gone, the connection stays", async () => {
    const c = client();
    const s = await open(c);
    const a = await joined(c, s, "a");
    for (const code of ["lobby_full", "not_allowed", "too_many_lobbies", "invalid_lobby"]) {
      const p = c.join(`x-${code}`);
      const join = lastOf(s, "join");
      s.serverSend({ type: "error", code, message: "no", id: join.id });
      const e = await rejects(p, code);
      assert.equal(e.id, join.id);
      assert.equal(c.room(`x-${code}`), undefined);
    }
    assert.equal(c.state, "open");
    assert.equal(a.state, "joined");
    assert.deepEqual(c.rooms, [a]);
  });

  test("broadcast resolves with the ack's offset and presence with the users, matched by id in any order", async () => {
    const c = client();
    const s = await open(c);
    const room = await joined(c, s, "room-2", 41);
    const b1 = room.broadcast({ text: "one" });
    const b2 = room.broadcast({ text: "two" }, { excludeSelf: true });
    const pr = room.presence();
    const [f1, f2] = s.sentOfType("broadcast");
    const fp = lastOf(s, "presence");
    assert.deepEqual([f1.lobby, f1.data, f1.exclude_self], ["room-2", { text: "one" }, undefined]);
    assert.deepEqual([f2.lobby, f2.exclude_self], ["room-2", true]);
    assert.equal(fp.lobby, "room-2");
    assert.equal(new Set([f1.id, f2.id, fp.id]).size, 3, "distinct ids");
    // Answers out of order; a stray answer of another type with the same id is not the answer.
    s.serverSend({ type: "ack", id: fp.id });
    s.serverSend({ type: "presence", lobby: "room-2", users: ["alice", "bob"], id: fp.id });
    s.serverSend({ type: "ack", id: f2.id, offset: 43 });
    s.serverSend({ type: "ack", id: "unknown", offset: 99 });
    s.serverSend({ type: "ack", id: f1.id, offset: 42 });
    assert.deepEqual(await Promise.all([b1, b2, pr]), [42, 43, ["alice", "bob"]]);
  });

  test("an error with the id rejects that request only", async () => {
    const c = client();
    const s = await open(c);
    const room = await joined(c, s, "r");
    const ok = room.broadcast(1);
    const bad = c.request({ type: "direct", to: "bob", data: 2 });
    const fb = lastOf(s, "broadcast");
    const fd = lastOf(s, "direct");
    s.serverSend({ type: "error", code: "rate_limited", message: "slow down", id: fd.id });
    s.serverSend({ type: "ack", id: fb.id, offset: 1 });
    await rejects(bad, "rate_limited");
    assert.equal(await ok, 1);
  });

  test("request() keeps a caller's id; application messages get their ack", async () => {
    const c = client();
    const s = await open(c);
    const p = c.request({ type: "game_move", to: "e4", id: 77 });
    assert.deepEqual(lastOf(s, "game_move"), { type: "game_move", to: "e4", id: 77 });
    // "77" (a string) is not 77 (a number).
    s.serverSend({ type: "ack", id: "77" });
    s.serverSend({ type: "ack", id: 77 });
    assert.deepEqual(await p, { type: "ack", id: 77 });
    const dup1 = c.request({ type: "x", id: "same" });
    await rejects(c.request({ type: "y", id: "same" }), "duplicate_id");
    s.serverSend({ type: "ack", id: "same" });
    await dup1;
  });

  test("rpc() sends method and data with an id and resolves with rpc_result's data", async () => {
    const c = client();
    const s = await open(c);
    const p = c.rpc("cart.total", { cart: 7 });
    const f = lastOf(s, "rpc");
    assert.deepEqual(f, { type: "rpc", method: "cart.total", data: { cart: 7 }, id: f.id });
    // Neither an ack nor another call's result answers it.
    s.serverSend({ type: "ack", id: f.id });
    s.serverSend({ type: "rpc_result", id: "other", data: 0 });
    s.serverSend({ type: "rpc_result", id: f.id, data: { total: 4200 } });
    assert.deepEqual(await p, { total: 4200 });
    // No data is sent as none; a result without data is null.
    const q = c.rpc("ping");
    const g = lastOf(s, "rpc");
    assert.equal("data" in g, false);
    s.serverSend({ type: "rpc_result", id: g.id, data: null });
    assert.equal(await q, null);
  });

  test("rpc() rejects with the error's code and message; timeouts and v1 reject too", async () => {
    const c = client();
    const s = await open(c);
    const p = c.rpc("cart.total", { cart: 404 });
    s.serverSend({
      type: "error",
      code: "rpc_failed",
      message: "the backend answered HTTP 404: no such cart",
      id: lastOf(s, "rpc").id,
    });
    const e = await rejects(p, "rpc_failed");
    assert.equal(e.message, "the backend answered HTTP 404: no such cart");
    assert.equal(e.id, lastOf(s, "rpc").id);
    const slow = c.rpc("slow", 1, { timeoutMs: 50 });
    clock.advance(50);
    await rejects(slow, "timeout");
    await rejects(c.rpc(""), "invalid_message");
    const v1 = new SwitchboardClient({ url: "ws://x", lobby: "l", token: "t", WebSocket: FakeSocket, timers: clock });
    await rejects(v1.rpc("m"), "unsupported");
  });

  test("no answer in time: rejects with timeout, no timer left behind", async () => {
    const c = client({ requestTimeoutMs: 5000 });
    const s = await open(c);
    const room = await joined(c, s, "r");
    const p = room.presence();
    const q = room.broadcast("x", { timeoutMs: 100 });
    clock.advance(100);
    await rejects(q, "timeout");
    clock.advance(4899);
    s.serverSend({ type: "health_ping", timestamp: 1 });
    clock.advance(1);
    await rejects(p, "timeout");
    // A late answer is ignored.
    s.serverSend({ type: "presence", lobby: "r", users: [], id: lastOf(s, "presence").id });
    assert.equal(clock.delays().length, 1, "only the liveness timer");
  });

  test("a join that times out gives the room up (and leaves it, should the server join late)", async () => {
    const c = client({ requestTimeoutMs: 1000 });
    const s = await open(c);
    const p = c.join("slow");
    clock.advance(1000);
    await rejects(p, "timeout");
    assert.equal(c.room("slow"), undefined);
    assert.deepEqual(lastOf(s, "leave"), { type: "leave", lobby: "slow" });
  });

  test("leave() resolves on the left with its id; the room ends with events on it and the client", async () => {
    const c = client();
    const s = await open(c);
    const room = await joined(c, s, "r");
    const onRoom: RoomLeftEvent[] = [];
    const onClient: RoomLeftEvent[] = [];
    room.on("left", (e) => onRoom.push(e));
    c.on("left", (e) => onClient.push(e));
    const p = room.leave();
    assert.equal(room.state, "left");
    assert.equal(c.room("r"), undefined);
    const leave = lastOf(s, "leave");
    assert.equal(leave.lobby, "r");
    s.serverSend({ type: "left", lobby: "r", reason: "left", id: leave.id });
    await p;
    assert.deepEqual(onRoom, [{ type: "left", lobby: "r", reason: "left" }]);
    assert.deepEqual(onClient, onRoom);
    await rejects(room.broadcast(1), "left");
    await room.leave(); // again: nothing to do
  });

  test("a left without id (kicked / removed / not_allowed) ends the room; its lobby's frames no longer reach it", async () => {
    for (const reason of ["kicked", "removed", "not_allowed"]) {
      FakeSocket.reset();
      const c = client();
      const s = await open(c);
      const room = await joined(c, s, "r");
      const other = await joined(c, s, "o");
      const roomLeft = room.once("left");
      const clientLeft = c.once("left");
      const got: unknown[] = [];
      room.on("message", (m) => got.push(m.data));
      s.serverSend({ type: "left", lobby: "r", reason });
      assert.deepEqual(await roomLeft, { type: "left", lobby: "r", reason });
      assert.deepEqual(await clientLeft, { type: "left", lobby: "r", reason });
      assert.equal(room.state, "left");
      assert.deepEqual(c.rooms, [other]);
      s.serverSend({ type: "message", lobby: "r", from: "bob", data: "late", offset: 1 });
      assert.deepEqual(got, []);
      assert.equal(c.state, "open");
    }
  });

  test("a joined without id (the backend joined this connection) makes a room; a late joined for a lobby given up does not", async () => {
    const c = client();
    let s = await open(c);
    const seen: string[] = [];
    c.on("joined", (j) => seen.push(`${j.lobby}:${c.room(j.lobby)?.state}`));
    s.serverSend({ type: "joined", lobby: "news", offset: 7, epoch: "en", presence_events: true });
    const news = c.room("news");
    assert.ok(news);
    assert.deepEqual([news.state, news.lastOffset, news.epoch], ["joined", 7, "en"]);
    assert.deepEqual(seen, ["news:joined"]);
    s.serverSend({ type: "message", lobby: "news", from: null, data: "hello", offset: 8 });
    assert.equal(news.lastOffset, 8);
    // A late answer to a join that was given up (an id, no room) is not a room.
    s.serverSend({ type: "joined", lobby: "stale", offset: 0, epoch: "e", presence_events: true, id: "sb-999" });
    assert.equal(c.room("stale"), undefined);
    // Rejoined after a reconnect like the others.
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    const join = lastOf(s, "join");
    assert.deepEqual([join.lobby, join.since, join.epoch], ["news", 8, "en"]);
    answerJoin(s, "news", 8, "en");
    // The backend removes the user: the room ends.
    const left = news.once("left");
    s.serverSend({ type: "left", lobby: "news", reason: "removed" });
    assert.deepEqual(await left, { type: "left", lobby: "news", reason: "removed" });
    assert.equal(c.room("news"), undefined);
  });

  test("frames are routed to the room of their lobby; the client sees them all", async () => {
    const c = client();
    const s = await open(c);
    const a = await joined(c, s, "a");
    const b = await joined(c, s, "b");
    const seen: string[] = [];
    a.on("message", (m) => seen.push(`a:${String(m.data)}`));
    b.on("message", (m) => seen.push(`b:${String(m.data)}`));
    a.on("member_joined", (m) => seen.push(`a+${m.user_id}`));
    b.on("member_left", (m) => seen.push(`b-${m.user_id}`));
    c.on("message", (m) => seen.push(`client:${m.lobby}`));
    s.serverSend({ type: "message", lobby: "a", from: "x", data: 1, offset: 1 });
    s.serverSend({ type: "member_joined", lobby: "a", user_id: "carol" });
    s.serverSend({ type: "message", lobby: "b", from: null, data: 2, offset: 7 });
    s.serverSend({ type: "member_left", lobby: "b", user_id: "dan" });
    s.serverSend({ type: "message", lobby: "zzz", from: null, data: 3, offset: 1 });
    assert.deepEqual(seen, ["a:1", "client:a", "a+carol", "b:2", "client:b", "b-dan", "client:zzz"]);
    assert.deepEqual([a.lastOffset, b.lastOffset], [1, 7]);
  });

  test("join() before connecting: the join goes right after welcome; queued frames after its answer", async () => {
    const c = client();
    const p = c.join("early");
    const hello = c.request({ type: "broadcast", lobby: "early", data: "hi" });
    c.connect();
    await flush();
    const s = FakeSocket.last();
    assert.equal(s.sent.length, 0);
    welcome(s);
    // The server may decide the join later (a cluster, a join proxy): the broadcast naming the
    // lobby waits for the answer, or it would be refused as not in the lobby.
    assert.deepEqual(
      s.sent.map((f) => f.type),
      ["join"],
    );
    const late = c.request({ type: "broadcast", lobby: "early", data: "after welcome" });
    answerJoin(s, "early", 3);
    assert.deepEqual(
      s.sent.map((f) => [f.type, f.data]),
      [
        ["join", undefined],
        ["broadcast", "hi"],
        ["broadcast", "after welcome"],
      ],
      "queued frames go in order once the join is answered",
    );
    s.serverSend({ type: "ack", id: lastOf(s, "broadcast").id, offset: 5 });
    assert.equal((await late).offset, 5);
    const room = await p;
    assert.equal(room.lastOffset, 3);
    const first = s.sentOfType("broadcast").find((f) => f.data === "hi");
    s.serverSend({ type: "ack", id: first?.id, offset: 4 });
    assert.equal((await hello).offset, 4);
  });

  test("a lost connection fails the requests already sent (connection_lost); queued ones wait and go after the rejoin", async () => {
    const c = client();
    let s = await open(c);
    const room = await joined(c, s, "r");
    const inFlight = room.broadcast("sent");
    s.serverClose(1006);
    await rejects(inFlight, "connection_lost");
    const queued = room.broadcast("queued");
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    assert.deepEqual(
      s.sent.map((f) => f.type),
      ["join"],
    );
    answerJoin(s, "r");
    assert.deepEqual(
      s.sent.map((f) => f.type),
      ["join", "broadcast"],
    );
    s.serverSend({ type: "ack", id: lastOf(s, "broadcast").id, offset: 1 });
    assert.equal(await queued, 1);
  });

  test("a refused rejoin releases the queued frames too", async () => {
    const c = client();
    let s = await open(c);
    await joined(c, s, "a");
    await joined(c, s, "b");
    s.serverClose(1006);
    const queued = c.request({ type: "app_ping", n: 1 });
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    assert.deepEqual(s.sent.map((f) => f.type), ["join", "join"]);
    const joinB = s.sentOfType("join").find((f) => f.lobby === "b");
    s.serverSend({ type: "error", code: "not_allowed", message: "no", id: joinB?.id });
    assert.deepEqual(s.sent.map((f) => f.type), ["join", "join"], "a is still unanswered");
    answerJoin(s, "a");
    assert.deepEqual(s.sent.map((f) => f.type), ["join", "join", "app_ping"]);
    s.serverSend({ type: "ack", id: lastOf(s, "app_ping").id });
    await queued;
  });

  test("close(): pending requests and joins fail with closed, rooms end, no timer left", async () => {
    const c = client();
    const s = await open(c);
    const room = await joined(c, s, "r");
    const p = room.presence();
    const j = c.join("pending");
    const left = room.once("left");
    c.close();
    await rejects(p, "closed");
    await rejects(j, "closed");
    assert.deepEqual(await left, { type: "left", lobby: "r", reason: "closed" });
    assert.deepEqual(c.rooms, []);
    assert.equal(clock.delays().length, 0);
    await rejects(c.request({ type: "x" }), "closed");
  });

  test("client.presence() in v2 is a request too", async () => {
    const c = client();
    const s = await open(c);
    await joined(c, s, "only");
    const p = c.presence();
    const f = lastOf(s, "presence");
    assert.equal(f.lobby, undefined);
    s.serverSend({ type: "presence", lobby: "only", users: ["alice"], id: f.id });
    assert.deepEqual(await p, ["alice"]);
  });
});

describe("v2: rejoin after a reconnect", () => {
  test("every room is rejoined with its own since / epoch; the replay and recovered reach it, then live traffic", async () => {
    const c = client();
    let s = await open(c);
    const a = await joined(c, s, "a", 10, "ea");
    const b = await joined(c, s, "b", 0, "eb");
    const idle = await joined(c, s, "idle", 5, "ei");
    s.serverSend({ type: "message", lobby: "a", from: "x", data: "a11", offset: 11 });
    s.serverSend({ type: "message", lobby: "a", from: "x", data: "a12", offset: 12 });
    s.serverSend({ type: "message", lobby: "b", from: "x", data: "b1", offset: 1 });
    const states: string[] = [];
    s.serverClose(1006);
    states.push(a.state, b.state, idle.state);
    assert.deepEqual(states, ["rejoining", "rejoining", "rejoining"]);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    const joins = s.sentOfType("join").map(({ id: _id, ...rest }) => rest);
    assert.deepEqual(joins, [
      { type: "join", lobby: "a", since: 12, epoch: "ea" },
      { type: "join", lobby: "b", since: 1, epoch: "eb" },
      { type: "join", lobby: "idle", since: 5, epoch: "ei" },
    ]);
    const got: string[] = [];
    a.on("message", (m) => got.push(String(m.data)));
    const rejoined = a.once("joined");
    const recovered = a.once("recovered");
    answerJoin(s, "a", 14, "ea");
    assert.equal((await rejoined).rejoin, true);
    s.serverSend({ type: "message", lobby: "a", from: "x", data: "a13", offset: 13 });
    s.serverSend({ type: "message", lobby: "a", from: "x", data: "a14", offset: 14 });
    s.serverSend({ type: "recovered", lobby: "a", ok: true });
    s.serverSend({ type: "message", lobby: "a", from: "x", data: "a15", offset: 15 });
    assert.deepEqual(await recovered, { type: "recovered", lobby: "a", ok: true });
    assert.deepEqual(got, ["a13", "a14", "a15"]);
    assert.equal(a.lastOffset, 15);
    assert.equal(a.state, "joined");
    assert.equal(a.lastRecovery?.ok, true);
    answerJoin(s, "b", 1, "eb");
    answerJoin(s, "idle", 5, "ei");
    assert.deepEqual([b.state, b.lastOffset, idle.lastOffset], ["joined", 1, 5]);
  });

  test("an acked exclude_self broadcast right after the last offset seen counts as seen (not asked for again)", async () => {
    const c = client();
    let s = await open(c);
    const room = await joined(c, s, "r", 4, "e");
    const own = room.broadcast("mine", { excludeSelf: true });
    s.serverSend({ type: "ack", id: lastOf(s, "broadcast").id, offset: 5 });
    assert.equal(await own, 5);
    assert.equal(room.lastOffset, 5);
    // Not contiguous (offset 6 not seen yet): left alone.
    const gap = room.broadcast("mine too", { excludeSelf: true });
    s.serverSend({ type: "ack", id: lastOf(s, "broadcast").id, offset: 7 });
    assert.equal(await gap, 7);
    assert.equal(room.lastOffset, 5);
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    assert.equal(lastOf(s, "join").since, 5);
  });

  test("a new epoch restarts the tracking at the joined; recovered ok:false moves it to the joined's offset", async () => {
    const c = client();
    let s = await open(c);
    const room = await joined(c, s, "r", 100, "old");
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    answerJoin(s, "r", 3, "new");
    s.serverSend({ type: "recovered", lobby: "r", ok: false });
    assert.deepEqual([room.epoch, room.lastOffset, room.lastRecovery?.ok], ["new", 3, false]);
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    const join = lastOf(s, "join");
    assert.deepEqual([join.since, join.epoch], [3, "new"]);
    // Same epoch, but the history no longer reaches back: the baseline becomes the joined's.
    answerJoin(s, "r", 50, "new");
    s.serverSend({ type: "recovered", lobby: "r", ok: false });
    assert.equal(room.lastOffset, 50);
  });

  test("a refused rejoin ends the room (rejoin_failed with the code) on the room and the client", async () => {
    const c = client();
    let s = await open(c);
    const room = await joined(c, s, "r", 1, "e");
    const keep = await joined(c, s, "k", 1, "e");
    const ended = room.once("left");
    const clientLeft = c.once("left");
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    const join = s.sentOfType("join").find((f) => f.lobby === "r");
    s.serverSend({ type: "error", code: "not_allowed", message: "no", id: join?.id });
    answerJoin(s, "k", 1, "e");
    const expected = { type: "left", lobby: "r", reason: "rejoin_failed", code: "not_allowed" };
    assert.deepEqual(await ended, expected);
    assert.deepEqual(await clientLeft, expected);
    assert.deepEqual(c.rooms, [keep]);
    assert.equal(keep.state, "joined");
  });

  test("a room left while its rejoin is in flight ends once: the rejoin's late answer changes nothing", async () => {
    const c = client();
    let s = await open(c);
    const room = await joined(c, s, "r", 1, "e");
    const events: RoomLeftEvent[] = [];
    c.on("left", (e) => events.push(e));
    s.serverClose(1006);
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    const join = lastOf(s, "join");
    const leaving = room.leave();
    s.serverSend({ type: "error", code: "not_allowed", message: "no", id: join.id });
    s.serverSend({ type: "left", lobby: "r", reason: "left", id: lastOf(s, "leave").id });
    await leaving;
    assert.deepEqual(events, [{ type: "left", lobby: "r", reason: "left" }]);
    assert.equal(clock.delays().length, 1, "only the liveness timer");
  });

  test("a room joining when the connection drops is joined on the next connection; a room left meanwhile is not", async () => {
    const c = client();
    let s = await open(c);
    const gone = await joined(c, s, "gone");
    const p = c.join("pending");
    s.serverClose(1006);
    await gone.leave(); // not connected: resolves at once
    clock.advance(0);
    await flush();
    s = FakeSocket.last();
    welcome(s);
    assert.deepEqual(
      s.sentOfType("join").map((f) => [f.lobby, f.since]),
      [["pending", undefined]],
    );
    answerJoin(s, "pending", 2);
    assert.equal((await p).state, "joined");
  });

  test("a close that forbids a reconnect (4009) ends every room (closed)", async () => {
    const c = client();
    const s = await open(c);
    const room = await joined(c, s, "r");
    const left = c.once("left");
    s.serverClose(4009, "kicked");
    assert.deepEqual(await left, { type: "left", lobby: "r", reason: "closed" });
    assert.equal(room.state, "left");
    assert.equal(c.state, "closed");
  });
});

describe("v2: token refresh", () => {
  test("refreshDelay: 80 % of the remaining time, never later than 30 s before, at least 1 s", () => {
    assert.equal(refreshDelay(3_600_000), 2_880_000);
    assert.equal(refreshDelay(100_000), 70_000);
    assert.equal(refreshDelay(40_000), 10_000);
    assert.equal(refreshDelay(20_000), 1_000);
    assert.equal(refreshDelay(500), 400);
    assert.equal(refreshDelay(0), 0);
    assert.equal(refreshDelay(-5), 0);
    assert.equal(refreshRetryDelay(60_000), 5_000);
    assert.equal(refreshRetryDelay(3_000), 1_500);
    assert.equal(refreshRetryDelay(100), 1_000);
  });

  test("refreshes before token_expires_at (server clock), then again from the ack's expiry", async () => {
    clock.now = 1_000_000;
    let n = 0;
    const c = client({ token: undefined, getToken: async () => `t${++n}` });
    // The server's clock is 5 s ahead of ours: the schedule follows the server's.
    const s = await open(c, { server_time: 1_005_000, token_expires_at: 1_005_000 + 100_000 });
    assert.equal(n, 1, "getToken for the connect");
    for (const step of [20_000, 20_000, 20_000, 9_999]) {
      clock.advance(step);
      s.serverSend({ type: "health_ping", timestamp: clock.now }); // keeps the connection alive
    }
    await flush();
    assert.equal(s.sentOfType("refresh").length, 0);
    clock.advance(1);
    await flush();
    const r = lastOf(s, "refresh");
    assert.equal(r.token, "t2");
    assert.ok(r.id !== undefined);
    // The ack's new expiry is an hour from the server's now.
    const serverNow = clock.now + 5_000;
    s.serverSend({ type: "ack", id: r.id, token_expires_at: serverNow + 3_600_000 });
    await flush();
    assert.ok(clock.delays().includes(2_880_000), JSON.stringify(clock.delays()));
    for (let t = 0; t < 2_880_000; t += 20_000) {
      clock.advance(20_000);
      s.serverSend({ type: "health_ping", timestamp: t });
    }
    await flush();
    assert.equal(s.sentOfType("refresh").length, 2);
    assert.equal(lastOf(s, "refresh").token, "t3");
  });

  test("no expiry, or a static token: no refresh", async () => {
    const c1 = client({ token: undefined, getToken: () => "t" });
    await open(c1);
    assert.deepEqual(clock.delays(), [40_000], "only the liveness timer");
    c1.close();
    const c2 = client();
    await open(c2, { token_expires_at: clock.now + 60_000 });
    assert.deepEqual(clock.delays(), [40_000]);
  });

  test("a refused refresh is reported (token_error) and retried; a lost connection cancels it", async () => {
    const errors: unknown[] = [];
    let n = 0;
    const c = client({ token: undefined, getToken: () => `t${++n}` });
    c.on("token_error", (e) => errors.push(e));
    const s = await open(c, { token_expires_at: clock.now + 60_000 });
    clock.advance(30_000);
    await flush();
    const r = lastOf(s, "refresh");
    s.serverSend({ type: "error", code: "not_allowed", message: "another user", id: r.id });
    await flush();
    assert.equal(errors.length, 1);
    assert.equal((errors[0] as SwitchboardError).code, "not_allowed");
    // 30 s remain: retry in 5 s.
    clock.advance(5_000);
    await flush();
    assert.equal(s.sentOfType("refresh").length, 2);
    s.serverClose(1006);
    // The refresh in flight fails with the connection, silently; nothing is scheduled but the reconnect.
    await flush();
    assert.equal(errors.length, 1);
    assert.equal(clock.delays().length, 1);
  });
});

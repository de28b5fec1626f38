/**
 * The Switchboard client: one WebSocket connection to one lobby, kept alive across failures.
 *
 * Rules (see README.md and docs/protocol.md):
 * - `getToken()` (or the static `token`) is asked before every connect and reconnect.
 * - `health_ping` is answered at once with `health_pong` echoing its `timestamp`.
 * - After a close: never reconnect after 4001 / 4003 / 4009; otherwise wait an exponential
 *   backoff with full jitter, and at least the `goodbye` frame's `retry_after_ms`; after 4010
 *   the fresh token comes from `getToken()`.
 * - Liveness: no server traffic within `livenessFactor` (2) x `ping_interval_ms` from `welcome`
 *   on means the connection is dead: it is dropped and a reconnect is scheduled.
 * - Outgoing frames sent while not connected wait in a bounded queue, sent after `welcome`.
 * - Recovery: the last message offset and the lobby's epoch are tracked; every automatic
 *   reconnect asks for what was missed (`since` / `epoch`); replayed messages arrive as ordinary
 *   `message` events, then a `recovered` event; a message already seen is never emitted twice.
 * - Transports: WebSocket, or Server-Sent Events (`transport`, and the fallback rule of
 *   `transport: "auto"`, below); both give the same events and close-code handling.
 * - Protocol v2 (`protocol: 2`, WebSocket only): one connection in many lobbies. `join(lobby)`
 *   gives a `Room`; requests carry an `id` and are matched to their answers (`joined`, `left`,
 *   `presence`, `ack`, `rpc_result`, or `error`) with a timeout; after a reconnect every room is
 *   rejoined with its own `since` / `epoch`; a token with an expiry is refreshed before it
 *   expires. `rpc(method, data)` calls the backend and resolves with its result.
 */

import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import {
  CLIENT_LIVENESS_CODE,
  CLIENT_LIVENESS_REASON,
  closeCodeInfo,
  reconnectRule,
  type CloseCodeInfo,
} from "./closeCodes.js";
import { Emitter } from "./emitter.js";
import type {
  AckFrame,
  ClientFrame,
  DirectFrame,
  ErrorFrame,
  FrameId,
  GoodbyeFrame,
  HealthPingFrame,
  JoinedFrame,
  MemberJoinedFrame,
  MemberLeftFrame,
  MessageFrame,
  PresenceFrame,
  RecoveredFrame,
  WelcomeFrame,
} from "./protocol.js";
import { refreshDelay, refreshRetryDelay } from "./refresh.js";
import { Room, SwitchboardError, type RoomHost, type RoomLeftEvent } from "./room.js";
import {
  SseSocket,
  type EventSourceConstructor,
  type FetchLike,
  type TransportCloseEvent,
} from "./sse.js";

/** The part of the standard WebSocket the client uses (browsers' and the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: TransportCloseEvent) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/**
 * - `websocket`: WebSocket only.
 * - `sse`: Server-Sent Events only (`GET /sse/{lobby}` + `POST /sse/{lobby}/messages`).
 * - `auto` (default): WebSocket first; Server-Sent Events when WebSocket cannot connect (see
 *   `fallbackAfter`).
 */
export type TransportOption = "auto" | "websocket" | "sse";
export type TransportKind = "websocket" | "sse";

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Timer functions (injectable so tests can drive time). */
export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/**
 * - `idle`: created, `connect()` not called yet.
 * - `connecting`: the first connection is being opened (until `welcome`).
 * - `open`: `welcome` received; frames flow.
 * - `reconnecting`: the connection was lost; waiting for the retry delay or opening again.
 * - `closed`: `close()` was called, or the server closed with a code that forbids a reconnect.
 */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
}

export interface DisconnectEvent {
  /** The close code (4000 for the client's own liveness / connect timeout). */
  code: number;
  /** The close reason word (`lobby_full`, `liveness_timeout`, `client_closed`...). */
  reason: string;
  wasClean: boolean;
  /** The row of the protocol's close-code table, when the code is in it. */
  info: CloseCodeInfo | undefined;
  /** The `goodbye` frame that preceded the close, if any. */
  goodbye: GoodbyeFrame | null;
  willReconnect: boolean;
  /** The delay before the next attempt, when `willReconnect`. */
  retryInMs: number | null;
  /** The number of the next attempt (1 for the first retry), when `willReconnect`. */
  attempt: number;
  /** The transport of the connection that closed. */
  transport: TransportKind;
}

export interface DroppedEvent {
  frame: ClientFrame;
  reason: "queue_full" | "closed";
}

export interface ClientEvents {
  welcome: WelcomeFrame;
  message: MessageFrame;
  direct: DirectFrame;
  presence: PresenceFrame;
  member_joined: MemberJoinedFrame;
  member_left: MemberLeftFrame;
  /** An `error` frame from the server (the connection stays open). */
  error: ErrorFrame;
  goodbye: GoodbyeFrame;
  /** After a reconnect that asked for missed messages: whether they were all replayed. */
  recovered: RecoveredFrame;
  health_ping: HealthPingFrame;
  /** Every frame from the server, parsed, including types this client does not know. */
  frame: { type: string; [field: string]: unknown };
  state: StateChange;
  disconnect: DisconnectEvent;
  /** A frame that could not be sent nor queued. */
  dropped: DroppedEvent;
  /** `getToken()` threw or rejected, or (v2) a token refresh failed; a retry is scheduled. */
  token_error: unknown;
  /** v2: a lobby was joined (every `joined` frame, rejoins included). */
  joined: JoinedFrame;
  /** v2: a room ended (its `leave()`, the server's `left`, a failed rejoin, `close()`). */
  left: RoomLeftEvent;
  /** v2: every `ack` frame. */
  ack: AckFrame;
}

/** A v2 request waiting for its answer. */
interface PendingRequest {
  frame: ClientFrame;
  /** The answer's type: `joined`, `left`, `presence`, `rpc_result` or `ack` (or `error`, always). */
  expect: string;
  onAnswer(frame: { type: string; [field: string]: unknown }): void;
  onError(error: SwitchboardError): void;
  timer: unknown;
}

interface JoinWaiter {
  resolve(room: Room): void;
  reject(error: SwitchboardError): void;
  timer: unknown;
}

/** The answer a v2 request gets when it succeeds. */
function answerType(type: string): string {
  switch (type) {
    case "join":
      return "joined";
    case "leave":
      return "left";
    case "presence":
      return "presence";
    case "rpc":
      return "rpc_result";
    default:
      return "ack";
  }
}

function idKey(id: FrameId): string {
  return `${typeof id}:${id}`;
}

export interface ClientOptions {
  /**
   * The server's base URL: `ws://host:port`, `wss://...` (or `http(s)://`, converted). Default in
   * browsers: the page's own host. The client connects to `{url}/ws/{lobby}?token=...` (v1) or
   * `{url}/ws?token=...` (v2).
   */
  url?: string;
  /**
   * The protocol: 1 (default: one connection, one lobby, `lobby` required) or 2 (one connection
   * in many lobbies, joined with `join()`; `lobby` must not be given; WebSocket only).
   */
  protocol?: 1 | 2;
  /** v1: the lobby (required). v2: not allowed (use `join()`). */
  lobby?: string;
  /** A static token (in the server's dev mode, the user id). */
  token?: string;
  /** Called before every connect and reconnect; wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default `globalThis.WebSocket` (in Node 20: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Subprotocols offered (default `switchboard.v1`; `[]` for none). */
  protocols?: string | string[];
  /** Reconnect after a lost connection (default true). */
  reconnect?: boolean;
  backoff?: Partial<BackoffOptions>;
  /** Outgoing frames kept while not connected (default 100); more are dropped (newest). */
  maxQueue?: number;
  /** Server silence, in ping intervals, after which the connection is dead (default 2). */
  livenessFactor?: number;
  /** A connection that has no `welcome` within this is dropped and retried (default 15000). */
  connectTimeoutMs?: number;
  /** Default timeout of `presence()` and (v2) of every request and join (default 10000). */
  requestTimeoutMs?: number;
  /** The clock, in ms since the epoch (default `Date.now`; tests). */
  now?: () => number;
  /** Random numbers in [0, 1) for the jitter (tests). */
  random?: () => number;
  timers?: Timers;
  /** `auto` (default), `websocket` or `sse`. */
  transport?: TransportOption;
  /**
   * `transport: "auto"`: after this many WebSocket attempts in a row that fail before the socket
   * opens (the constructor throws, or a close, e.g. 1006, or the connect timeout, before `open`)
   * while no WebSocket of this client ever opened, switch to Server-Sent Events (default 2).
   */
  fallbackAfter?: number;
  /** The EventSource constructor; default `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /** The fetch function for SSE sends; default `globalThis.fetch`. */
  fetch?: FetchLike;
}

const OPEN = 1;
const noop = (): void => {};

const defaultTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

function defaultUrl(): string {
  const location = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (!location || !location.host) {
    throw new Error("switchboard: options.url is required outside a browser page");
  }
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
}

function httpUrl(wsUrl: string): string {
  return wsUrl.replace(/^ws(s?):/i, "http$1:");
}

function normalizeUrl(url: string): string {
  return url.replace(/^http(s?):/i, "ws$1:").replace(/\/+$/, "");
}

export class SwitchboardClient extends Emitter<ClientEvents> {
  readonly lobby: string;
  private readonly options: ClientOptions;
  private readonly baseUrl: string;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly ES: EventSourceConstructor | undefined;
  private readonly fetchFn: FetchLike | undefined;
  private readonly transportOption: TransportOption;
  private _transport: TransportKind = "websocket";
  /** A WebSocket of this client opened once: WebSocket works here, no fallback. */
  private wsWorked = false;
  /** An SSE stream of this client got a `welcome` once. */
  private sseWorked = false;
  /** WebSocket attempts in a row that failed before opening (for `auto`). */
  private wsPreOpenFailures = 0;
  /** The current socket fired `open`. */
  private socketOpened = false;
  /** The next open() is the first one after connect(): no `since`. */
  private firstAttempt = true;
  /** Recovery: the lobby's epoch and the last offset received (or the welcome's baseline). */
  private epochSeen: string | null = null;
  private offsetSeen = 0;
  /** The current connection asked for recovery (since/epoch, or SSE's native resume). */
  private resumed = false;
  private _lastRecovery: RecoveredFrame | null = null;
  private readonly timers: Timers;
  private readonly backoff: BackoffOptions;
  private readonly maxQueue: number;

  private _state: ConnectionState = "idle";
  private socket: WebSocketLike | null = null;
  /** Increases with every socket, so events of an abandoned socket are ignored. */
  private generation = 0;
  private _attempt = 0;
  private _welcome: WelcomeFrame | null = null;
  private goodbye: GoodbyeFrame | null = null;
  private queue: ClientFrame[] = [];
  /**
   * v2: joins sent at the welcome and not answered yet. Until they are, frames wait in the
   * queue: the server may decide a join asynchronously (a cluster, a join proxy), and a frame
   * naming a lobby must not overtake its join.
   */
  private rejoining = new Set<Room>();
  private reconnectTimer: unknown = null;
  private livenessTimer: unknown = null;
  private connectTimer: unknown = null;
  private lastServerTraffic = 0;

  // ---- protocol v2 ----
  /** The client speaks protocol v2. */
  readonly v2: boolean;
  private readonly now: () => number;
  private readonly roomMap = new Map<string, Room>();
  private readonly joinWaiters = new Map<Room, JoinWaiter[]>();
  /** Requests waiting for an answer, by `idKey(id)`. */
  private readonly pending = new Map<string, PendingRequest>();
  private nextId = 0;
  private refreshTimer: unknown = null;
  /** The server's clock minus ours (from `welcome.server_time`). */
  private serverSkew = 0;
  /** The current token's expiry (server clock), or null. */
  private tokenExpiresAt: number | null = null;
  private readonly roomHost: RoomHost = {
    request: (frame, options) => this.request(frame, options),
    leaveRoom: (room, options) => this.leaveRoom(room, options),
  };

  constructor(options: ClientOptions) {
    super();
    if (!options || typeof options !== "object") {
      throw new Error("switchboard: options are required");
    }
    if (options.protocol !== undefined && options.protocol !== 1 && options.protocol !== 2) {
      throw new Error("switchboard: options.protocol is 1 or 2");
    }
    this.v2 = options.protocol === 2;
    if (this.v2) {
      if (options.lobby !== undefined) {
        throw new Error("switchboard: protocol 2 has no options.lobby: use client.join(lobby)");
      }
      if (options.transport === "sse") {
        throw new Error("switchboard: protocol 2 is WebSocket only (transport 'sse' speaks v1)");
      }
    } else if (typeof options.lobby !== "string" || options.lobby === "") {
      throw new Error("switchboard: options.lobby is required");
    }
    if (options.token === undefined && options.getToken === undefined) {
      throw new Error("switchboard: options.token or options.getToken is required");
    }
    this.options = options;
    this.lobby = options.lobby ?? "";
    this.now = options.now ?? (() => Date.now());
    this.baseUrl = normalizeUrl(options.url ?? defaultUrl());
    const WS =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.ES =
      options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    this.fetchFn =
      options.fetch ?? (typeof globalFetch === "function" ? (url, init) => globalFetch(url, init) : undefined);
    this.transportOption = this.v2 ? "websocket" : options.transport ?? "auto";
    if (this.transportOption === "sse") {
      if (!this.ES) throw new Error("switchboard: transport 'sse' needs an EventSource (options.EventSource)");
      this._transport = "sse";
    } else if (!WS) {
      if (this.transportOption === "auto" && this.ES) {
        this._transport = "sse";
      } else {
        throw new Error(
          "switchboard: no global WebSocket; pass options.WebSocket (in Node 20: the ws package)",
        );
      }
    }
    this.WS = WS;
    this.timers = options.timers ?? defaultTimers;
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.maxQueue = Math.max(0, options.maxQueue ?? 100);
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The current connection's `welcome`, or null while not connected. */
  get welcome(): WelcomeFrame | null {
    return this._welcome;
  }

  /** Failed attempts since the last `welcome`. */
  get attempt(): number {
    return this._attempt;
  }

  /** The transport in use (or of the next attempt): `websocket` or `sse`. */
  get transport(): TransportKind {
    return this._transport;
  }

  /**
   * The last `recovered` frame since `connect()` (null if no reconnect asked for recovery yet):
   * `ok: false` means messages were lost and the application should resync.
   */
  get lastRecovery(): RecoveredFrame | null {
    return this._lastRecovery;
  }

  /** The lobby's history epoch (from `welcome`), or null. */
  get epoch(): string | null {
    return this.epochSeen;
  }

  /** The offset of the last message received (or the `welcome`'s, if none since). */
  get lastOffset(): number {
    return this.offsetSeen;
  }

  /** Frames waiting for the connection. */
  get queued(): number {
    return this.queue.length;
  }

  /** Opens the connection (again, after `close()`). No effect while already connecting/open. */
  connect(): void {
    if (this._state !== "idle" && this._state !== "closed") return;
    this._attempt = 0;
    // connect() starts afresh: nothing to recover from an earlier life.
    this.firstAttempt = true;
    this.epochSeen = null;
    this.offsetSeen = 0;
    this._lastRecovery = null;
    this.setState("connecting");
    void this.open();
  }

  /**
   * Closes the connection for good (code 1000); no reconnect follows. Queued frames are dropped.
   * `connect()` may be called again later.
   */
  close(code = 1000, reason = "client_closed"): void {
    this.connectionLost(true);
    if (this._state === "closed" || this._state === "idle") {
      this.clearTimers();
      this.setState("closed");
      return;
    }
    this.clearTimers();
    const socket = this.detach();
    if (socket) {
      try {
        socket.close(code, reason);
      } catch {
        // already closing
      }
    }
    for (const frame of this.queue) this.emit("dropped", { frame, reason: "closed" });
    this.queue = [];
    this._welcome = null;
    this.emit("disconnect", {
      code,
      reason,
      wasClean: true,
      info: undefined,
      goodbye: null,
      willReconnect: false,
      retryInMs: null,
      attempt: 0,
      transport: this._transport,
    });
    this.setState("closed");
  }

  /** Sends a message to the lobby (`exclude_self` skips this connection only). */
  broadcast(data: unknown, options: { excludeSelf?: boolean; id?: FrameId } = {}): boolean {
    const frame: ClientFrame = { type: "broadcast", data };
    if (options.excludeSelf) frame.exclude_self = true;
    if (options.id !== undefined) frame.id = options.id;
    return this.send(frame);
  }

  /** Sends a message to every connection of user `to`. */
  direct(to: string, data: unknown, options: { id?: FrameId } = {}): boolean {
    const frame: ClientFrame = { type: "direct", to, data };
    if (options.id !== undefined) frame.id = options.id;
    return this.send(frame);
  }

  /**
   * Asks for the lobby's users. Resolves with the next `presence` answer (also emitted as the
   * `presence` event); rejects if the request is dropped or no answer comes in time.
   */
  presence(options: { timeoutMs?: number } = {}): Promise<string[]> {
    if (this.v2) {
      // v2: matched by id (the server needs the connection in exactly one lobby; else
      // `missing_field`: use `room.presence()`).
      return this.request({ type: "presence" }, options).then((p) =>
        Array.isArray(p.users) ? (p.users as string[]) : [],
      );
    }
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      let timer: unknown = null;
      const offs: Array<() => void> = [];
      const done = (): void => {
        for (const off of offs) off();
        if (timer !== null) this.timers.clearTimeout(timer);
      };
      const frame: ClientFrame = { type: "presence" };
      offs.push(
        this.on("presence", (p) => {
          done();
          resolve(p.users);
        }),
      );
      offs.push(
        this.on("dropped", (d) => {
          if (d.frame === frame) {
            done();
            reject(new Error(`switchboard: presence request dropped (${d.reason})`));
          }
        }),
      );
      timer = this.timers.setTimeout(() => {
        done();
        reject(new Error(`switchboard: no presence answer within ${timeoutMs} ms`));
      }, timeoutMs);
      if (!this.send(frame)) {
        done();
        reject(new Error("switchboard: presence request could not be sent"));
      }
    });
  }

  /**
   * Sends any client frame (an application message has a `type` of its own). Sent at once when
   * connected, queued otherwise. Returns false when the frame was dropped (closed client, or a
   * full queue).
   */
  send(frame: ClientFrame): boolean {
    if (this._state === "closed") {
      this.emit("dropped", { frame, reason: "closed" });
      return false;
    }
    if (this._state === "open" && this.rejoining.size === 0 && this.socket && this.socket.readyState === OPEN) {
      try {
        this.socket.send(JSON.stringify(frame));
        return true;
      } catch {
        // the socket is failing: queue the frame; its close event follows
      }
    }
    if (this.queue.length >= this.maxQueue) {
      this.emit("dropped", { frame, reason: "queue_full" });
      return false;
    }
    this.queue.push(frame);
    return true;
  }

  // ---- protocol v2: rooms, requests, token refresh ----------------------------------------

  /** v2: the rooms joined or being joined. */
  get rooms(): Room[] {
    return [...this.roomMap.values()];
  }

  /** v2: the room of `lobby`, if joined or being joined. */
  room(lobby: string): Room | undefined {
    return this.roomMap.get(lobby);
  }

  /**
   * v2: joins `lobby`. Resolves with its `Room` once the server answered `joined`; rejects with a
   * `SwitchboardError` whose `code` is the server's (`lobby_full`, `not_allowed`,
   * `too_many_lobbies`, `invalid_lobby`...) or `timeout` / `closed`. Called while not connected,
   * the join is sent after the next `welcome` (the timeout runs from the call). Joining a lobby
   * already joined resolves with the same room.
   */
  join(lobby: string, options: { timeoutMs?: number } = {}): Promise<Room> {
    if (!this.v2) {
      return Promise.reject(new SwitchboardError("unsupported", "switchboard: join() needs protocol 2"));
    }
    if (typeof lobby !== "string" || lobby === "") {
      return Promise.reject(new SwitchboardError("invalid_lobby", "switchboard: join() needs a lobby"));
    }
    let room = this.roomMap.get(lobby);
    if (room && room.state === "joined") return Promise.resolve(room);
    if (!room) {
      room = new Room(this.roomHost, lobby);
      this.roomMap.set(lobby, room);
      if (this.isOpen()) this.sendJoin(room);
    }
    const target = room;
    const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
    return new Promise<Room>((resolve, reject) => {
      const waiter: JoinWaiter = { resolve, reject, timer: null };
      waiter.timer = this.timers.setTimeout(() => {
        const waiters = this.joinWaiters.get(target) ?? [];
        const rest = waiters.filter((w) => w !== waiter);
        if (rest.length > 0) this.joinWaiters.set(target, rest);
        else this.joinWaiters.delete(target);
        const error = new SwitchboardError("timeout", `switchboard: no answer to join ${lobby} within ${timeoutMs} ms`);
        reject(error);
        // Nobody waits for a room that never got in: give it up.
        if (rest.length === 0 && target.state === "joining") this.failRoom(target, error);
      }, timeoutMs);
      const waiters = this.joinWaiters.get(target) ?? [];
      waiters.push(waiter);
      this.joinWaiters.set(target, waiters);
    });
  }

  /**
   * v2: sends `frame` with an `id` (its own, or a fresh one) and resolves with the answer: the
   * `joined` / `left` / `presence` frame for `join` / `leave` / `presence`, the `ack` for
   * anything else (`broadcast`, `direct`, `refresh`, application messages). Rejects with a
   * `SwitchboardError`: the `error` frame's code, or `timeout` (no answer within `timeoutMs`,
   * default `requestTimeoutMs`), `connection_lost` (the connection closed after the frame was
   * sent), `dropped` (the queue was full), `closed`. Queued while not connected.
   */
  request(
    frame: ClientFrame,
    options: { timeoutMs?: number } = {},
  ): Promise<{ type: string; [field: string]: unknown }> {
    if (!this.v2) {
      return Promise.reject(new SwitchboardError("unsupported", "switchboard: request() needs protocol 2"));
    }
    return new Promise((resolve, reject) => {
      this.sendRequest(frame, options.timeoutMs, resolve, reject, false);
    });
  }

  /**
   * v2: calls `method` on the backend with `data` (an `rpc` frame; the server's `webhook.rpc_url`
   * or the embedding app answers it) and resolves with the result (`rpc_result.data`; `null`
   * when the backend sent none). Rejects with a `SwitchboardError` as `request()` does: the
   * server's `code` and `message` (`rpc_failed`: the backend failed or did not answer in time;
   * `rate_limited`: too many of this connection's calls wait; `overloaded`; `unknown_type`: the
   * server answers no rpc), or `timeout`, `connection_lost` (the call may or may not have run:
   * it is not sent again), `dropped`, `closed`. Queued while not connected.
   */
  rpc(method: string, data?: unknown, options: { timeoutMs?: number } = {}): Promise<unknown> {
    if (typeof method !== "string" || method === "") {
      return Promise.reject(new SwitchboardError("invalid_message", "switchboard: rpc() needs a method"));
    }
    const frame: ClientFrame = { type: "rpc", method };
    if (data !== undefined) frame.data = data;
    return this.request(frame, options).then((answer) => answer.data ?? null);
  }

  private sendRequest(
    frame: ClientFrame,
    timeoutMs: number | undefined,
    onAnswer: (frame: { type: string; [field: string]: unknown }) => void,
    onError: (error: SwitchboardError) => void,
    now: boolean,
  ): void {
    const id = frame.id ?? `sb-${++this.nextId}`;
    const sent: ClientFrame = { ...frame, id };
    const key = idKey(id);
    if (this.pending.has(key)) {
      onError(new SwitchboardError("duplicate_id", `switchboard: a request with id ${String(id)} is pending`, id));
      return;
    }
    const ms = timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
    const entry: PendingRequest = { frame: sent, expect: answerType(sent.type), onAnswer, onError, timer: null };
    entry.timer = this.timers.setTimeout(() => {
      if (this.pending.get(key) !== entry) return;
      this.pending.delete(key);
      onError(new SwitchboardError("timeout", `switchboard: no answer to ${sent.type} within ${ms} ms`, id));
    }, ms);
    this.pending.set(key, entry);
    const closed = this._state === "closed";
    const ok = now ? this.sendNow(sent) : this.send(sent);
    if (!ok && this.pending.get(key) === entry) {
      this.settle(key);
      onError(
        closed
          ? new SwitchboardError("closed", "switchboard: the client is closed", id)
          : now
            ? new SwitchboardError("connection_lost", "switchboard: not connected", id)
            : new SwitchboardError("dropped", "switchboard: the outgoing queue is full", id),
      );
    }
  }

  /** Forgets a pending request (its timer too) and returns it. */
  private settle(key: string): PendingRequest | undefined {
    const entry = this.pending.get(key);
    if (!entry) return undefined;
    this.pending.delete(key);
    this.timers.clearTimeout(entry.timer);
    return entry;
  }

  private isOpen(): boolean {
    return this._state === "open" && this.socket !== null && this.socket.readyState === OPEN;
  }

  /** The server's clock now (as estimated from `welcome.server_time`). */
  private serverNow(): number {
    return this.now() + this.serverSkew;
  }

  /** Sends a room's join (with since / epoch once it was joined); answers drive the room. */
  private sendJoin(room: Room, answered: () => void = () => {}): void {
    const rejoin = room.joined !== null;
    this.sendRequest(
      room.joinFrame(),
      undefined,
      () => {
        answered();
        // The room already took the `joined` (onV2Frame): release whoever waits for it.
        const waiters = this.joinWaiters.get(room) ?? [];
        this.joinWaiters.delete(room);
        for (const w of waiters) {
          this.timers.clearTimeout(w.timer);
          w.resolve(room);
        }
      },
      (error) => {
        answered();
        // A lost connection: the room is rejoined after the next welcome.
        if (error.code === "connection_lost" || error.code === "closed") return;
        this.failRoom(room, error, rejoin);
      },
      true,
    );
  }

  /** A join was refused or timed out: the room ends; whoever waits for it gets the error. */
  private failRoom(room: Room, error: SwitchboardError, rejoin = room.joined !== null): void {
    // Ended meanwhile (left, closed): nothing more to say.
    if (room.state === "left") return;
    this.cancelJoin(room);
    if (this.roomMap.get(room.lobby) === room) this.roomMap.delete(room.lobby);
    const waiters = this.joinWaiters.get(room) ?? [];
    this.joinWaiters.delete(room);
    for (const w of waiters) {
      this.timers.clearTimeout(w.timer);
      w.reject(error);
    }
    // A join that may still succeed late on the server: leave at once.
    if (error.code === "timeout" && this.isOpen()) this.sendNow({ type: "leave", lobby: room.lobby });
    if (rejoin) {
      const event: RoomLeftEvent = { type: "left", lobby: room.lobby, reason: "rejoin_failed", code: error.code };
      room.end(event);
      this.emit("left", event);
    } else {
      room.end({ type: "left", lobby: room.lobby, reason: "join_failed", code: error.code });
    }
  }

  /** Forgets a room's join request still waiting for its answer (a late answer is ignored). */
  private cancelJoin(room: Room): void {
    for (const [key, entry] of [...this.pending]) {
      if (entry.frame.type === "join" && entry.frame.lobby === room.lobby) this.settle(key);
    }
    this.rejoinDone(room);
  }

  private leaveRoom(room: Room, options: { timeoutMs?: number }): Promise<void> {
    this.cancelJoin(room);
    if (this.roomMap.get(room.lobby) === room) this.roomMap.delete(room.lobby);
    const waiters = this.joinWaiters.get(room) ?? [];
    this.joinWaiters.delete(room);
    const error = new SwitchboardError("left", `switchboard: room ${room.lobby} was left`);
    for (const w of waiters) {
      this.timers.clearTimeout(w.timer);
      w.reject(error);
    }
    const event: RoomLeftEvent = { type: "left", lobby: room.lobby, reason: "left" };
    room.end(event);
    this.emit("left", event);
    // Not connected: the server forgot the closed connection's lobbies already.
    if (!this.isOpen()) return Promise.resolve();
    return this.request({ type: "leave", lobby: room.lobby }, options).then(
      () => undefined,
      (e: SwitchboardError) => {
        if (e.code === "connection_lost" || e.code === "closed") return;
        throw e;
      },
    );
  }

  /**
   * The connection closed. For good (`close()`, a never-reconnect code): every request fails
   * with `closed` and every room ends (reason `closed`). Otherwise: requests already sent fail
   * with `connection_lost` (queued ones wait for the next connection) and rooms will be rejoined.
   */
  private connectionLost(forGood: boolean): void {
    if (!this.v2) return;
    if (this.refreshTimer !== null) {
      this.timers.clearTimeout(this.refreshTimer);
      this.refreshTimer = null;
    }
    for (const [key, entry] of [...this.pending]) {
      if (!forGood && this.queue.includes(entry.frame)) continue;
      this.settle(key);
      entry.onError(
        forGood
          ? new SwitchboardError("closed", "switchboard: the connection closed for good", entry.frame.id)
          : new SwitchboardError("connection_lost", "switchboard: the connection was lost", entry.frame.id),
      );
    }
    if (forGood) {
      const error = new SwitchboardError("closed", "switchboard: the connection closed for good");
      for (const room of [...this.roomMap.values()]) {
        this.roomMap.delete(room.lobby);
        const waiters = this.joinWaiters.get(room) ?? [];
        this.joinWaiters.delete(room);
        for (const w of waiters) {
          this.timers.clearTimeout(w.timer);
          w.reject(error);
        }
        const wasIn = room.joined !== null;
        const event: RoomLeftEvent = { type: "left", lobby: room.lobby, reason: "closed" };
        room.end(event);
        if (wasIn) this.emit("left", event);
      }
    } else {
      for (const room of this.roomMap.values()) room.connectionLost();
    }
  }

  /** v2 frames: answers matched to requests by id, lobby frames routed to their rooms. */
  private onV2Frame(typed: { type: string; [field: string]: unknown }): void {
    const id = typed.id;
    let entry: PendingRequest | undefined;
    if ((typeof id === "string" || typeof id === "number") && ["joined", "left", "presence", "ack", "rpc_result", "error"].includes(typed.type)) {
      const candidate = this.pending.get(idKey(id));
      if (candidate && (typed.type === "error" || typed.type === candidate.expect)) {
        entry = this.settle(idKey(id));
      }
    }
    const lobby = typeof typed.lobby === "string" ? typed.lobby : undefined;
    const room = lobby !== undefined ? this.roomMap.get(lobby) : undefined;
    switch (typed.type) {
      case "welcome":
        this.onWelcome(typed as unknown as WelcomeFrame);
        break;
      case "health_ping":
        this.sendNow({ type: "health_pong", timestamp: typed.timestamp });
        this.emit("health_ping", typed as unknown as HealthPingFrame);
        break;
      case "joined":
        if (room) {
          room.onJoined(typed as unknown as JoinedFrame);
        } else if (lobby !== undefined && id === undefined) {
          // The backend joined this connection to a lobby (no id: nobody here asked): a room of
          // its own, found with `room(lobby)` from the `joined` event, rejoined like the others.
          const created = new Room(this.roomHost, lobby);
          this.roomMap.set(lobby, created);
          created.onJoined(typed as unknown as JoinedFrame);
        }
        entry?.onAnswer(typed);
        this.emit("joined", typed as unknown as JoinedFrame);
        break;
      case "left":
        if (entry) {
          entry.onAnswer(typed);
        } else if (room) {
          // The server ended the membership (kicked, removed, not_allowed).
          this.roomMap.delete(room.lobby);
          const event: RoomLeftEvent = { type: "left", lobby: room.lobby, reason: String(typed.reason ?? "") };
          const waiters = this.joinWaiters.get(room) ?? [];
          this.joinWaiters.delete(room);
          const error = new SwitchboardError(event.reason || "left", `switchboard: left ${room.lobby} (${event.reason})`);
          for (const w of waiters) {
            this.timers.clearTimeout(w.timer);
            w.reject(error);
          }
          room.end(event);
          this.emit("left", event);
        }
        break;
      case "message":
      case "member_joined":
      case "member_left":
      case "presence":
      case "recovered":
        room?.onFrame(typed);
        if (typed.type === "recovered") this._lastRecovery = typed as unknown as RecoveredFrame;
        entry?.onAnswer(typed);
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        this.emit(typed.type as keyof ClientEvents, typed as any);
        break;
      case "error":
        entry?.onError(
          new SwitchboardError(String(typed.code ?? "error"), String(typed.message ?? typed.code ?? "error"), id as FrameId),
        );
        this.emit("error", typed as unknown as ErrorFrame);
        break;
      case "ack":
        entry?.onAnswer(typed);
        this.emit("ack", typed as unknown as AckFrame);
        break;
      case "rpc_result":
        entry?.onAnswer(typed);
        break;
      case "direct":
      case "goodbye":
        if (typed.type === "goodbye") this.goodbye = typed as unknown as GoodbyeFrame;
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        this.emit(typed.type as keyof ClientEvents, typed as any);
        break;
    }
  }

  /** Schedules the next token refresh for a token expiring at `expiresAt` (server clock). */
  private armRefresh(expiresAt: number, serverNow: number): void {
    this.tokenExpiresAt = expiresAt;
    // A static token cannot be refreshed: the server closes with 4010 at the expiry.
    if (!this.options.getToken) return;
    this.setRefreshTimer(refreshDelay(expiresAt - serverNow));
  }

  private setRefreshTimer(delay: number): void {
    if (this.refreshTimer !== null) this.timers.clearTimeout(this.refreshTimer);
    this.refreshTimer = this.timers.setTimeout(() => {
      this.refreshTimer = null;
      void this.refreshToken();
    }, delay);
  }

  private refreshFailed(error: unknown): void {
    this.emit("token_error", error);
    const remaining = this.tokenExpiresAt === null ? Infinity : this.tokenExpiresAt - this.serverNow();
    this.setRefreshTimer(refreshRetryDelay(remaining));
  }

  /** Gets a fresh token and sends it (`refresh`); the `ack` schedules the next refresh. */
  private async refreshToken(): Promise<void> {
    const generation = this.generation;
    const current = (): boolean => generation === this.generation && this.isOpen();
    let token: string;
    try {
      token = await (this.options.getToken as () => string | Promise<string>)();
    } catch (error) {
      if (current()) this.refreshFailed(error);
      return;
    }
    if (!current()) return;
    let ack: { type: string; [field: string]: unknown };
    try {
      ack = await this.request({ type: "refresh", token });
    } catch (error) {
      if (current()) this.refreshFailed(error);
      return;
    }
    if (!current()) return;
    if (typeof ack.token_expires_at === "number") this.armRefresh(ack.token_expires_at, this.serverNow());
    else this.tokenExpiresAt = null;
  }

  // ---- the connection's life -----------------------------------------------------------

  private setState(state: ConnectionState): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit("state", { state, previous });
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    let token: string;
    try {
      token = this.options.getToken ? await this.options.getToken() : (this.options.token as string);
    } catch (error) {
      if (generation !== this.generation || this._state === "closed") return;
      this.emit("token_error", error);
      this.scheduleReconnect(CLIENT_LIVENESS_CODE, "token_error", false, null);
      return;
    }
    // close() (or another open) happened while the token was being fetched.
    if (generation !== this.generation || this._state === "closed") return;

    // Every automatic reconnect asks for what was missed (not the first connect).
    const resume = !this.firstAttempt && this.epochSeen !== null;
    this.firstAttempt = false;
    const lobby = encodeURIComponent(this.lobby);
    let query = `token=${encodeURIComponent(token)}`;
    if (resume) {
      query += `&since=${this.offsetSeen}&epoch=${encodeURIComponent(this.epochSeen as string)}`;
    }
    let socket: WebSocketLike | null = null;
    if (this._transport === "websocket") {
      const url = this.v2 ? `${this.baseUrl}/ws?${query}` : `${this.baseUrl}/ws/${lobby}?${query}`;
      const protocols = this.options.protocols ?? (this.v2 ? "switchboard.v2" : "switchboard.v1");
      try {
        const WS = this.WS as WebSocketConstructor;
        socket =
          Array.isArray(protocols) && protocols.length === 0 ? new WS(url) : new WS(url, protocols);
      } catch {
        // WebSocket is impossible here (blocked, bad URL...): with `auto`, SSE at once.
        if (this.transportOption === "auto" && this.ES && !this.wsWorked) {
          this._transport = "sse";
          this.wsPreOpenFailures = 0;
        } else {
          this.scheduleReconnect(1006, "connect_failed", false, null);
          return;
        }
      }
    }
    if (!socket) {
      const base = httpUrl(this.baseUrl);
      socket = new SseSocket({
        streamUrl: `${base}/sse/${lobby}?${query}`,
        postUrl: `${base}/sse/${lobby}/messages?token=${encodeURIComponent(token)}`,
        EventSource: this.ES as EventSourceConstructor,
        fetch: this.fetchFn,
        nativeResume: !resume,
      });
    }
    this.socket = socket;
    this.goodbye = null;
    this._welcome = null;
    this.resumed = resume;
    this.socketOpened = false;

    socket.onopen = () => {
      if (generation !== this.generation) return;
      this.socketOpened = true;
      if (this._transport === "websocket") this.wsWorked = true;
    };
    socket.onerror = noop; // a close event always follows an error
    socket.onmessage = (event) => {
      if (generation === this.generation) this.onData(event.data);
    };
    socket.onclose = (event) => {
      if (generation !== this.generation) return;
      if (event.resuming) this.onResuming(generation);
      else this.onClose(event.code, event.reason ?? "", event.wasClean ?? false);
    };

    const connectTimeoutMs = this.options.connectTimeoutMs ?? 15_000;
    this.armConnectTimeout(generation, connectTimeoutMs);
  }

  private armConnectTimeout(generation: number, ms: number): void {
    if (this.connectTimer !== null) this.timers.clearTimeout(this.connectTimer);
    this.connectTimer = this.timers.setTimeout(() => {
      this.connectTimer = null;
      if (generation === this.generation && !this._welcome) {
        this.drop(CLIENT_LIVENESS_CODE, "connect_timeout");
      }
    }, ms);
  }

  /**
   * The SSE stream broke and EventSource reconnects by itself (with `Last-Event-ID`, so the
   * server replays what was missed): reported as a lost connection that will reconnect, but the
   * transport is kept. No `welcome` within `connectTimeoutMs` drops it (a client-level retry
   * with backoff follows).
   */
  private onResuming(generation: number): void {
    if (this.options.reconnect === false) {
      this.drop(1006, "stream_lost");
      return;
    }
    this.clearTimers();
    this._welcome = null;
    this.goodbye = null;
    this.resumed = this.epochSeen !== null;
    this._attempt += 1;
    this.emit("disconnect", {
      code: 1006,
      reason: "stream_lost",
      wasClean: false,
      info: undefined,
      goodbye: null,
      willReconnect: true,
      retryInMs: null,
      attempt: this._attempt,
      transport: this._transport,
    });
    if ((this._state as ConnectionState) === "closed" || generation !== this.generation) return;
    this.setState("reconnecting");
    this.armConnectTimeout(generation, this.options.connectTimeoutMs ?? 15_000);
  }

  private onData(raw: unknown): void {
    let text: string;
    if (typeof raw === "string") text = raw;
    else if (raw instanceof ArrayBuffer) text = new TextDecoder().decode(raw);
    else if (ArrayBuffer.isView(raw)) text = new TextDecoder().decode(raw);
    else return;
    let frame: { type?: unknown; [field: string]: unknown };
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    this.lastServerTraffic = Date.now();
    if (this._welcome) this.armLiveness();
    const typed = frame as { type: string; [field: string]: unknown };
    if (this.v2) {
      this.onV2Frame(typed);
      this.emit("frame", typed);
      return;
    }
    switch (typed.type) {
      case "welcome":
        this.onWelcome(typed as unknown as WelcomeFrame);
        break;
      case "health_ping":
        this.sendNow({ type: "health_pong", timestamp: typed.timestamp });
        this.emit("health_ping", typed as unknown as HealthPingFrame);
        break;
      case "message": {
        const offset = typed.offset;
        if (typeof offset === "number" && this.epochSeen !== null) {
          if (offset > this.offsetSeen) {
            this.offsetSeen = offset;
          } else {
            // The server never repeats an offset (replay and live traffic meet without
            // overlap), so a smaller one means the lobby's numbering restarted under a new
            // epoch (its history was lost, e.g. a cluster's Redis restarted empty). Deliver
            // it, and forget the old epoch: the next reconnect starts afresh instead of asking
            // for a range that no longer exists.
            this.epochSeen = null;
            this.offsetSeen = 0;
          }
        }
        this.emit("message", typed as unknown as MessageFrame);
        break;
      }
      case "recovered": {
        const recovered = typed as unknown as RecoveredFrame;
        this._lastRecovery = recovered;
        const baseline = this._welcome?.offset;
        if (!recovered.ok && typeof baseline === "number" && baseline > this.offsetSeen) {
          // What was missed is lost: the next recovery starts from this connection's start.
          this.offsetSeen = baseline;
        }
        this.emit("recovered", recovered);
        break;
      }
      case "direct":
      case "presence":
      case "member_joined":
      case "member_left":
      case "error":
      case "goodbye":
        if (typed.type === "goodbye") this.goodbye = typed as unknown as GoodbyeFrame;
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        this.emit(typed.type as keyof ClientEvents, typed as any);
        break;
    }
    this.emit("frame", typed);
  }

  private onWelcome(welcome: WelcomeFrame): void {
    if (this.connectTimer !== null) {
      this.timers.clearTimeout(this.connectTimer);
      this.connectTimer = null;
    }
    this._welcome = welcome;
    this._attempt = 0;
    if (this._transport === "sse") this.sseWorked = true;
    this.wsPreOpenFailures = 0;
    if (typeof welcome.epoch === "string") {
      const offset = typeof welcome.offset === "number" ? welcome.offset : 0;
      if (welcome.epoch !== this.epochSeen || !this.resumed) {
        // A new epoch (first connect, or history lost): tracking restarts at the welcome.
        this.epochSeen = welcome.epoch;
        this.offsetSeen = offset;
      }
    } else {
      this.epochSeen = null;
      this.offsetSeen = 0;
    }
    this.armLiveness();
    if (this.v2) {
      // Every room is (re)joined first, each with its own since / epoch; queued frames wait for
      // every answer, so that one naming a lobby reaches it after its join.
      const rooms = [...this.roomMap.values()];
      this.rejoining = new Set(rooms);
      for (const room of rooms) this.sendJoin(room, () => this.rejoinDone(room));
      if (typeof welcome.server_time === "number") this.serverSkew = welcome.server_time - this.now();
      if (typeof welcome.token_expires_at === "number") {
        this.armRefresh(welcome.token_expires_at, typeof welcome.server_time === "number" ? welcome.server_time : this.serverNow());
      } else {
        this.tokenExpiresAt = null;
      }
    }
    // What waited goes first, in order, before any listener can send something newer.
    if (this.rejoining.size === 0) this.flushQueue();
    this.setState("open");
    this.emit("welcome", welcome);
  }

  /** One of the welcome's joins was answered, failed or given up: the last releases the queue. */
  private rejoinDone(room: Room): void {
    if (this.rejoining.delete(room) && this.rejoining.size === 0) this.flushQueue();
  }

  /** Sends the queued frames in order, as far as the socket takes them. */
  private flushQueue(): void {
    const pending = this.queue;
    this.queue = [];
    for (let i = 0; i < pending.length; i++) {
      if (!this.sendNow(pending[i])) {
        this.queue = pending.slice(i);
        break;
      }
    }
  }

  private sendNow(frame: ClientFrame): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN) return false;
    try {
      socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  private armLiveness(): void {
    const interval = this._welcome?.ping_interval_ms;
    if (!interval || !(interval > 0)) return;
    if (this.livenessTimer !== null) this.timers.clearTimeout(this.livenessTimer);
    const factor = this.options.livenessFactor ?? 2;
    this.livenessTimer = this.timers.setTimeout(() => {
      this.livenessTimer = null;
      this.drop(CLIENT_LIVENESS_CODE, CLIENT_LIVENESS_REASON);
    }, interval * factor);
  }

  /** Abandons the current socket (closing it) and handles it as a lost connection. */
  private drop(code: number, reason: string): void {
    const socket = this.detach();
    if (socket) {
      try {
        socket.close(code, reason);
      } catch {
        // ignore
      }
    }
    this.onClose(code, reason, false);
  }

  /** Detaches the current socket's handlers (so it can no longer affect us) and returns it. */
  private detach(): WebSocketLike | null {
    const socket = this.socket;
    this.socket = null;
    this.generation++;
    if (socket) {
      // No-ops rather than null: the `ws` package throws on an unhandled `error` event.
      socket.onopen = noop;
      socket.onmessage = noop;
      socket.onclose = noop;
      socket.onerror = noop;
    }
    return socket;
  }

  private onClose(code: number, reason: string, wasClean: boolean): void {
    if (this.socket) this.detach();
    const transport = this._transport;
    this.chooseTransport();
    const goodbye = this.goodbye;
    this.goodbye = null;
    this.scheduleReconnect(code, reason, wasClean, goodbye, transport);
  }

  /** `transport: "auto"`: the fallback rule (see `ClientOptions.fallbackAfter`). */
  private chooseTransport(): void {
    if (this.transportOption !== "auto" || this._welcome) return;
    if (this._transport === "websocket") {
      if (this.socketOpened || this.wsWorked || !this.ES) return;
      this.wsPreOpenFailures += 1;
      if (this.wsPreOpenFailures >= Math.max(1, this.options.fallbackAfter ?? 2)) {
        this._transport = "sse";
        this.wsPreOpenFailures = 0;
      }
    } else if (!this.sseWorked && this.WS) {
      // SSE failed too, before any welcome: the server may just be down; try WebSocket again.
      this._transport = "websocket";
    }
  }

  private scheduleReconnect(
    code: number,
    reason: string,
    wasClean: boolean,
    goodbye: GoodbyeFrame | null,
    transport: TransportKind = this._transport,
  ): void {
    this.clearTimers();
    this._welcome = null;
    if (this._state === "closed") return;
    const rule = reconnectRule(code);
    this.connectionLost(this.options.reconnect === false || rule === "never");
    const info = closeCodeInfo(code, reason || goodbye?.reason);
    const reasonWord = reason || goodbye?.reason || info?.reason || "";
    if (this.options.reconnect === false || rule === "never") {
      for (const frame of this.queue) this.emit("dropped", { frame, reason: "closed" });
      this.queue = [];
      this.emit("disconnect", {
        code,
        reason: reasonWord,
        wasClean,
        info,
        goodbye,
        willReconnect: false,
        retryInMs: null,
        attempt: this._attempt,
        transport,
      });
      this.setState("closed");
      return;
    }
    this._attempt += 1;
    let delay = backoffDelay(this._attempt, this.backoff, this.options.random);
    if (goodbye && Number.isFinite(goodbye.retry_after_ms)) {
      delay = Math.max(delay, goodbye.retry_after_ms);
    }
    this.emit("disconnect", {
      code,
      reason: reasonWord,
      wasClean,
      info,
      goodbye,
      willReconnect: true,
      retryInMs: delay,
      attempt: this._attempt,
      transport,
    });
    // A listener may have called close().
    if ((this._state as ConnectionState) === "closed") return;
    this.setState("reconnecting");
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      void this.open();
    }, delay);
  }

  private clearTimers(): void {
    for (const key of ["reconnectTimer", "livenessTimer", "connectTimer", "refreshTimer"] as const) {
      if (this[key] !== null) {
        this.timers.clearTimeout(this[key]);
        this[key] = null;
      }
    }
  }

  /** Milliseconds since the last frame from the server (for display). */
  get silenceMs(): number {
    return this.lastServerTraffic === 0 ? 0 : Date.now() - this.lastServerTraffic;
  }
}

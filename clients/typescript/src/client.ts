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
  ClientFrame,
  DirectFrame,
  ErrorFrame,
  FrameId,
  GoodbyeFrame,
  HealthPingFrame,
  MemberJoinedFrame,
  MemberLeftFrame,
  MessageFrame,
  PresenceFrame,
  RecoveredFrame,
  WelcomeFrame,
} from "./protocol.js";
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
  /** `getToken()` threw or rejected; a retry is scheduled. */
  token_error: unknown;
}

export interface ClientOptions {
  /**
   * The server's base URL: `ws://host:port`, `wss://...` (or `http(s)://`, converted). Default in
   * browsers: the page's own host. The client connects to `{url}/ws/{lobby}?token=...`.
   */
  url?: string;
  lobby: string;
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
  /** Default timeout of `presence()` (default 10000). */
  requestTimeoutMs?: number;
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
  private reconnectTimer: unknown = null;
  private livenessTimer: unknown = null;
  private connectTimer: unknown = null;
  private lastServerTraffic = 0;

  constructor(options: ClientOptions) {
    super();
    if (!options || typeof options.lobby !== "string" || options.lobby === "") {
      throw new Error("switchboard: options.lobby is required");
    }
    if (options.token === undefined && options.getToken === undefined) {
      throw new Error("switchboard: options.token or options.getToken is required");
    }
    this.options = options;
    this.lobby = options.lobby;
    this.baseUrl = normalizeUrl(options.url ?? defaultUrl());
    const WS =
      options.WebSocket ??
      (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.ES =
      options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    this.fetchFn =
      options.fetch ?? (typeof globalFetch === "function" ? (url, init) => globalFetch(url, init) : undefined);
    this.transportOption = options.transport ?? "auto";
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
    if (this._state === "open" && this.socket && this.socket.readyState === OPEN) {
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
      const url = `${this.baseUrl}/ws/${lobby}?${query}`;
      const protocols = this.options.protocols ?? "switchboard.v1";
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
    // What waited goes first, in order, before any listener can send something newer.
    const pending = this.queue;
    this.queue = [];
    for (let i = 0; i < pending.length; i++) {
      if (!this.sendNow(pending[i])) {
        this.queue = pending.slice(i);
        break;
      }
    }
    this.setState("open");
    this.emit("welcome", welcome);
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
    for (const key of ["reconnectTimer", "livenessTimer", "connectTimer"] as const) {
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

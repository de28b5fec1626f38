// Switchboard client (protocols v1 and v2), browser build: the global `Switchboard`.
// GENERATED from clients/typescript by `npm run build` (esbuild): do not edit by hand.
"use strict";
var Switchboard = (() => {
  var __defProp = Object.defineProperty;
  var __getOwnPropDesc = Object.getOwnPropertyDescriptor;
  var __getOwnPropNames = Object.getOwnPropertyNames;
  var __hasOwnProp = Object.prototype.hasOwnProperty;
  var __export = (target, all) => {
    for (var name in all)
      __defProp(target, name, { get: all[name], enumerable: true });
  };
  var __copyProps = (to, from, except, desc) => {
    if (from && typeof from === "object" || typeof from === "function") {
      for (let key of __getOwnPropNames(from))
        if (!__hasOwnProp.call(to, key) && key !== except)
          __defProp(to, key, { get: () => from[key], enumerable: !(desc = __getOwnPropDesc(from, key)) || desc.enumerable });
    }
    return to;
  };
  var __toCommonJS = (mod) => __copyProps(__defProp({}, "__esModule", { value: true }), mod);

  // src/browser.ts
  var browser_exports = {};
  __export(browser_exports, {
    CLIENT_LIVENESS_CODE: () => CLIENT_LIVENESS_CODE,
    CLIENT_LIVENESS_REASON: () => CLIENT_LIVENESS_REASON,
    CLOSE_CODES: () => CLOSE_CODES,
    DEFAULT_BACKOFF: () => DEFAULT_BACKOFF,
    Emitter: () => Emitter,
    NO_RECONNECT_CODES: () => NO_RECONNECT_CODES,
    PROTOCOL_VERSION: () => PROTOCOL_VERSION,
    PROTOCOL_VERSIONS: () => PROTOCOL_VERSIONS,
    REFRESH_FRACTION: () => REFRESH_FRACTION,
    REFRESH_MARGIN_MS: () => REFRESH_MARGIN_MS,
    REFRESH_MIN_DELAY_MS: () => REFRESH_MIN_DELAY_MS,
    Room: () => Room,
    SSE_EVENT_TYPES: () => SSE_EVENT_TYPES,
    SseSocket: () => SseSocket,
    SwitchboardClient: () => SwitchboardClient,
    SwitchboardError: () => SwitchboardError,
    backoffCap: () => backoffCap,
    backoffDelay: () => backoffDelay,
    closeCodeInfo: () => closeCodeInfo,
    reconnectRule: () => reconnectRule,
    refreshDelay: () => refreshDelay,
    refreshRetryDelay: () => refreshRetryDelay,
    refusalClose: () => refusalClose
  });

  // src/backoff.ts
  var DEFAULT_BACKOFF = { initialMs: 500, maxMs: 3e4, factor: 2 };
  function backoffCap(attempt, options = DEFAULT_BACKOFF) {
    const n = Math.max(1, Math.floor(attempt));
    const cap = options.initialMs * Math.pow(options.factor, n - 1);
    return Math.min(options.maxMs, Number.isFinite(cap) ? cap : options.maxMs);
  }
  function backoffDelay(attempt, options = DEFAULT_BACKOFF, random = Math.random) {
    const r = Math.min(Math.max(random(), 0), 1);
    const cap = backoffCap(attempt, options);
    return Math.min(Math.floor(r * cap), Math.max(0, Math.ceil(cap) - 1));
  }

  // src/closeCodes.ts
  var CLOSE_CODES = [
    { code: 4001, reason: "unauthorized", retryAfterMs: null, reconnect: "never", meaning: "missing, invalid or expired token; lobby not allowed by the token" },
    { code: 4002, reason: "server_full", retryAfterMs: [2e3, 1e4], reconnect: "after_retry", meaning: "the global connection limit" },
    { code: 4002, reason: "lobby_full", retryAfterMs: [2e3, 1e4], reconnect: "after_retry", meaning: "the per-lobby limit" },
    { code: 4002, reason: "user_limit", retryAfterMs: [2e3, 1e4], reconnect: "after_retry", meaning: "the per-user limit (policy multi), or policy reject with a connection open" },
    { code: 4002, reason: "ip_limit", retryAfterMs: [2e3, 1e4], reconnect: "after_retry", meaning: "the per-IP limit" },
    { code: 4003, reason: "replaced", retryAfterMs: null, reconnect: "never", meaning: "a newer connection of the same user took over (policy replace)" },
    { code: 4004, reason: "stale", retryAfterMs: [0, 2e3], reconnect: "after_retry", meaning: "nothing arrived for ping_interval + pong_timeout" },
    { code: 4008, reason: "rate_limited", retryAfterMs: [1e3, 5e3], reconnect: "after_retry", meaning: "too many messages or connects in" },
    { code: 4008, reason: "slow_consumer", retryAfterMs: [1e3, 5e3], reconnect: "after_retry", meaning: "the outbound queue overflowed" },
    { code: 4009, reason: "kicked", retryAfterMs: null, reconnect: "never", meaning: "disconnected by the backend" },
    { code: 4010, reason: "token_expired", retryAfterMs: [0, 1e3], reconnect: "fresh_token", meaning: "the token's expiry passed" },
    { code: 1001, reason: "server_shutdown", retryAfterMs: [1e3, 1e4], reconnect: "after_retry", meaning: "graceful shutdown (drain), or connecting while the server drains" },
    { code: 1002, reason: "protocol_error", retryAfterMs: null, reconnect: "backoff", meaning: "the client broke the WebSocket protocol" },
    { code: 1003, reason: "unsupported_data", retryAfterMs: null, reconnect: "backoff", meaning: "a binary data frame" },
    { code: 1007, reason: "invalid_utf8", retryAfterMs: null, reconnect: "backoff", meaning: "a text frame that is not valid UTF-8" },
    { code: 1009, reason: "message_too_big", retryAfterMs: null, reconnect: "backoff", meaning: "a frame larger than max_message_bytes" },
    { code: 1013, reason: "backend_unavailable", retryAfterMs: [1e3, 5e3], reconnect: "after_retry", meaning: "the standalone server's connect proxy did not answer in time, answered 5xx, or was busy" }
  ];
  var NO_RECONNECT_CODES = new Set(
    CLOSE_CODES.filter((c) => c.reconnect === "never").map((c) => c.code)
  );
  var CLIENT_LIVENESS_CODE = 4e3;
  var CLIENT_LIVENESS_REASON = "liveness_timeout";
  function closeCodeInfo(code, reason) {
    var _a;
    const rows = CLOSE_CODES.filter((c) => c.code === code);
    return (_a = rows.find((c) => c.reason === reason)) != null ? _a : rows[0];
  }
  function reconnectRule(code) {
    var _a, _b;
    return (_b = (_a = closeCodeInfo(code)) == null ? void 0 : _a.reconnect) != null ? _b : "backoff";
  }

  // src/emitter.ts
  var Emitter = class {
    constructor() {
      this.listeners = /* @__PURE__ */ new Map();
    }
    /** Subscribes; returns a function that unsubscribes. */
    on(event, listener) {
      let set = this.listeners.get(event);
      if (!set) {
        set = /* @__PURE__ */ new Set();
        this.listeners.set(event, set);
      }
      set.add(listener);
      return () => this.off(event, listener);
    }
    off(event, listener) {
      var _a;
      (_a = this.listeners.get(event)) == null ? void 0 : _a.delete(listener);
    }
    /** Resolves with the next such event (rejects after `timeoutMs`, if given). */
    once(event, timeoutMs) {
      return new Promise((resolve, reject) => {
        let timer;
        const off = this.on(event, (value) => {
          off();
          if (timer !== void 0) clearTimeout(timer);
          resolve(value);
        });
        if (timeoutMs !== void 0) {
          timer = setTimeout(() => {
            off();
            reject(new Error(`timed out after ${timeoutMs} ms waiting for "${String(event)}"`));
          }, timeoutMs);
        }
      });
    }
    emit(event, value) {
      const set = this.listeners.get(event);
      if (!set) return;
      for (const listener of [...set]) {
        try {
          listener(value);
        } catch (error) {
          const report = globalThis.reportError;
          if (typeof report === "function") report(error);
          else console.error(error);
        }
      }
    }
  };

  // src/refresh.ts
  var REFRESH_MARGIN_MS = 3e4;
  var REFRESH_FRACTION = 0.8;
  var REFRESH_MIN_DELAY_MS = 1e3;
  function refreshDelay(remainingMs) {
    if (!Number.isFinite(remainingMs) || remainingMs <= 0) return 0;
    const wanted = Math.min(REFRESH_FRACTION * remainingMs, remainingMs - REFRESH_MARGIN_MS);
    const floor = Math.min(REFRESH_MIN_DELAY_MS, REFRESH_FRACTION * remainingMs);
    return Math.floor(Math.max(0, wanted, floor));
  }
  function refreshRetryDelay(remainingMs) {
    const half = Number.isFinite(remainingMs) ? remainingMs / 2 : 5e3;
    return Math.floor(Math.min(5e3, Math.max(1e3, half)));
  }

  // src/room.ts
  var SwitchboardError = class extends Error {
    constructor(code, message, id) {
      super(message);
      this.name = "SwitchboardError";
      this.code = code;
      this.id = id;
    }
  };
  var Room = class extends Emitter {
    /** @internal Created by `SwitchboardClient.join()`. */
    constructor(host, lobby) {
      super();
      this._state = "joining";
      this._epoch = null;
      this._lastOffset = 0;
      this._joined = null;
      this._lastRecovery = null;
      /** The rejoin in flight asked for recovery (`since` / `epoch`). */
      this.resuming = false;
      this.host = host;
      this.lobby = lobby;
    }
    get state() {
      return this._state;
    }
    /** The lobby's history epoch (from the last `joined`), or null before the first. */
    get epoch() {
      return this._epoch;
    }
    /** The offset of the last message seen (or the last `joined`'s, if none since). */
    get lastOffset() {
      return this._lastOffset;
    }
    /** The last `joined` frame. */
    get joined() {
      return this._joined;
    }
    /** The last `recovered` frame of this room, or null. */
    get lastRecovery() {
      return this._lastRecovery;
    }
    /**
     * Broadcasts to the lobby; resolves with the offset the lobby gave the message (from the
     * server's `ack`). Queued while the connection is down (sent after the rejoin).
     */
    async broadcast(data, options = {}) {
      this.assertActive();
      const frame = { type: "broadcast", lobby: this.lobby, data };
      if (options.excludeSelf) frame.exclude_self = true;
      const ack = await this.host.request(frame, { timeoutMs: options.timeoutMs });
      const offset = typeof ack.offset === "number" ? ack.offset : 0;
      if (options.excludeSelf && offset === this._lastOffset + 1 && this._state !== "left") {
        this._lastOffset = offset;
      }
      return offset;
    }
    /** Asks for the lobby's users (resolves with the list; also emitted as `presence`). */
    async presence(options = {}) {
      this.assertActive();
      const answer = await this.host.request({ type: "presence", lobby: this.lobby }, options);
      return Array.isArray(answer.users) ? answer.users : [];
    }
    /**
     * Leaves the lobby. The room ends at once (it is not rejoined after a reconnect, and emits
     * `left` with reason `left`); resolves when the server confirmed (or at once when not
     * connected: the server forgets a closed connection's lobbies).
     */
    leave(options = {}) {
      if (this._state === "left") return Promise.resolve();
      return this.host.leaveRoom(this, options);
    }
    assertActive() {
      if (this._state === "left") {
        throw new SwitchboardError("left", `switchboard: room ${this.lobby} was left`);
      }
    }
    // ---- driven by the client (internal) ----
    /** @internal The join frame for the next (re)join: with `since` / `epoch` once joined. */
    joinFrame() {
      const frame = {
        type: "join",
        lobby: this.lobby
      };
      this.resuming = this._epoch !== null;
      if (this._epoch !== null) {
        frame.since = this._lastOffset;
        frame.epoch = this._epoch;
      }
      return frame;
    }
    /** @internal The connection was lost: rejoin after the next `welcome`. */
    connectionLost() {
      if (this._state === "joined") this._state = "rejoining";
    }
    /** @internal A `joined` for this lobby. */
    onJoined(frame) {
      if (this._state === "left") return;
      const rejoin = this._joined !== null;
      const offset = typeof frame.offset === "number" ? frame.offset : 0;
      if (frame.epoch !== this._epoch || !this.resuming) {
        this._epoch = typeof frame.epoch === "string" ? frame.epoch : null;
        this._lastOffset = offset;
      }
      this.resuming = false;
      this._joined = frame;
      this._state = "joined";
      this.emit("joined", { ...frame, rejoin });
    }
    /** @internal Frames naming this lobby: `message`, `member_joined`, `member_left`, `presence`, `recovered`. */
    onFrame(frame) {
      var _a;
      if (this._state === "left") return;
      switch (frame.type) {
        case "message": {
          const offset = frame.offset;
          if (typeof offset === "number" && this._epoch !== null) {
            if (offset > this._lastOffset) {
              this._lastOffset = offset;
            } else {
              this._epoch = null;
              this._lastOffset = 0;
            }
          }
          this.emit("message", frame);
          break;
        }
        case "recovered": {
          const recovered = frame;
          this._lastRecovery = recovered;
          const baseline = (_a = this._joined) == null ? void 0 : _a.offset;
          if (!recovered.ok && typeof baseline === "number" && baseline > this._lastOffset) {
            this._lastOffset = baseline;
          }
          this.emit("recovered", recovered);
          break;
        }
        case "member_joined":
        case "member_left":
        case "presence":
          this.emit(frame.type, frame);
          break;
      }
    }
    /** @internal The room ended (emits `left` once). */
    end(event) {
      if (this._state === "left") return;
      this._state = "left";
      this.emit("left", event);
    }
  };

  // src/sse.ts
  var SSE_EVENT_TYPES = [
    "welcome",
    "health_ping",
    "direct",
    "presence",
    "member_joined",
    "member_left",
    "error",
    "goodbye",
    "recovered"
  ];
  var CONNECTING = 0;
  var OPEN = 1;
  var CLOSED = 3;
  var ES_CLOSED = 2;
  function refusalClose(status, errorCode) {
    if (errorCode) {
      for (const code of [4001, 4002, 4003, 4004, 4008, 4009, 4010, 1001]) {
        const row = closeCodeInfo(code, errorCode);
        if (row && row.reason === errorCode) return { code: row.code, reason: row.reason };
      }
    }
    if (status === 401) return { code: 4001, reason: errorCode != null ? errorCode : "unauthorized" };
    if (status === 403) return { code: 4001, reason: errorCode != null ? errorCode : "forbidden" };
    if (status === 429) return { code: 4008, reason: errorCode != null ? errorCode : "rate_limited" };
    if (status === 503) return { code: 4002, reason: errorCode != null ? errorCode : "server_full" };
    return { code: 1006, reason: errorCode != null ? errorCode : status ? `http_${status}` : "sse_failed" };
  }
  function errorBody(text) {
    try {
      const body = JSON.parse(text);
      const e = body == null ? void 0 : body.error;
      if (!e || typeof e !== "object") return {};
      return {
        code: typeof e.code === "string" ? e.code : void 0,
        message: typeof e.message === "string" ? e.message : void 0,
        retry_after_ms: typeof e.retry_after_ms === "number" ? e.retry_after_ms : void 0
      };
    } catch {
      return {};
    }
  }
  var SseSocket = class {
    constructor(options) {
      this.readyState = CONNECTING;
      this.protocol = "";
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      /** From the current stream's `welcome`: where POSTs go. */
      this.connectionId = null;
      /** A `welcome` arrived on this EventSource (so a broken stream is resumed, not failed). */
      this.welcomed = false;
      /** A message with an id arrived: EventSource will send `Last-Event-ID` when it resumes. */
      this.sawId = false;
      this.outbox = [];
      this.posting = false;
      this.finished = false;
      this.options = options;
      const es = new options.EventSource(options.streamUrl);
      this.es = es;
      es.onopen = (event) => {
        var _a;
        if (!this.finished) (_a = this.onopen) == null ? void 0 : _a.call(this, event);
      };
      es.onmessage = (event) => {
        if (event.lastEventId) this.sawId = true;
        this.frame("message", event.data);
      };
      for (const type of SSE_EVENT_TYPES) {
        es.addEventListener(type, (event) => {
          if (type === "error" && typeof (event == null ? void 0 : event.data) !== "string") return;
          this.frame(type, event == null ? void 0 : event.data);
        });
      }
      es.addEventListener("close", (event) => this.onCloseEvent(event == null ? void 0 : event.data));
      es.onerror = () => this.onStreamError();
    }
    /** Queues a client frame for POSTing (in order, one request at a time). */
    send(data) {
      if (this.readyState !== OPEN) throw new Error("switchboard: SSE connection not open");
      this.outbox.push(JSON.parse(data));
      void this.pump();
    }
    /** Closes the stream (no native reconnect). The server notices the stream's end. */
    close(_code, _reason) {
      this.finish();
    }
    finish() {
      this.finished = true;
      this.readyState = CLOSED;
      this.outbox = [];
      try {
        this.es.close();
      } catch {
      }
    }
    frame(type, data) {
      var _a;
      if (this.finished || typeof data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object") return;
      let text = data;
      if (typeof frame.type !== "string") {
        frame = { ...frame, type };
        text = JSON.stringify(frame);
      }
      if (frame.type === "message" && typeof frame.offset === "number") this.sawId = true;
      if (frame.type === "welcome" && typeof frame.connection_id === "string") {
        this.connectionId = frame.connection_id;
        this.welcomed = true;
        this.readyState = OPEN;
      }
      (_a = this.onmessage) == null ? void 0 : _a.call(this, { data: text });
    }
    onCloseEvent(data) {
      var _a;
      if (this.finished) return;
      let code = 1006;
      let reason = "";
      if (typeof data === "string") {
        try {
          const parsed = JSON.parse(data);
          if (typeof parsed.code === "number") code = parsed.code;
          if (typeof parsed.reason === "string") reason = parsed.reason;
        } catch {
        }
      }
      this.finish();
      (_a = this.onclose) == null ? void 0 : _a.call(this, { code, reason, wasClean: true });
    }
    onStreamError() {
      var _a, _b, _c;
      if (this.finished) return;
      (_a = this.onerror) == null ? void 0 : _a.call(this, {});
      if (this.es.readyState !== ES_CLOSED && this.welcomed && this.sawId && this.options.nativeResume) {
        this.readyState = CONNECTING;
        this.connectionId = null;
        (_b = this.onclose) == null ? void 0 : _b.call(this, { code: 1006, reason: "stream_lost", wasClean: false, resuming: true });
        return;
      }
      if (this.welcomed) {
        this.finish();
        (_c = this.onclose) == null ? void 0 : _c.call(this, { code: 1006, reason: "stream_lost", wasClean: false });
        return;
      }
      this.finish();
      void this.probe().then((close) => {
        var _a2;
        return (_a2 = this.onclose) == null ? void 0 : _a2.call(this, { ...close, wasClean: false });
      });
    }
    /** Learns why the stream was refused: one GET of the same URL, aborted after the headers. */
    async probe() {
      var _a, _b, _c;
      const fetchFn = this.options.fetch;
      if (!fetchFn) return { code: 1006, reason: "sse_failed" };
      const abort = typeof AbortController === "function" ? new AbortController() : void 0;
      try {
        const res = await fetchFn(this.options.streamUrl, {
          headers: { accept: "text/event-stream" },
          signal: abort == null ? void 0 : abort.signal
        });
        if (res.ok) {
          abort == null ? void 0 : abort.abort();
          return { code: 1006, reason: "sse_failed" };
        }
        const body = errorBody(await res.text());
        const close = refusalClose(res.status, body.code);
        const retryHeader = Number((_b = (_a = res.headers) == null ? void 0 : _a.get("retry-after")) != null ? _b : NaN);
        const retryAfterMs = (_c = body.retry_after_ms) != null ? _c : Number.isFinite(retryHeader) ? Math.round(retryHeader * 1e3) : void 0;
        if (retryAfterMs !== void 0 && this.onmessage) {
          this.onmessage({
            data: JSON.stringify({ type: "goodbye", code: close.code, reason: close.reason, retry_after_ms: retryAfterMs })
          });
        }
        return close;
      } catch {
        return { code: 1006, reason: "sse_failed" };
      }
    }
    async pump() {
      if (this.posting) return;
      this.posting = true;
      try {
        while (this.outbox.length > 0 && !this.finished) {
          const message = this.outbox.shift();
          await this.post(message);
        }
      } finally {
        this.posting = false;
      }
    }
    async post(message) {
      var _a, _b;
      const fetchFn = this.options.fetch;
      const refused = (code, text) => {
        var _a2;
        if (this.finished || message.type === "health_pong") return;
        const frame = { type: "error", code, message: text };
        if (typeof message.id === "string" || typeof message.id === "number") frame.id = message.id;
        (_a2 = this.onmessage) == null ? void 0 : _a2.call(this, { data: JSON.stringify(frame) });
      };
      if (!fetchFn) {
        refused("send_failed", "no fetch function to POST with");
        return;
      }
      try {
        const res = await fetchFn(this.options.postUrl, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ connection_id: this.connectionId, message })
        });
        if (!res.ok) {
          const body = errorBody(await res.text().catch(() => ""));
          refused((_a = body.code) != null ? _a : `http_${res.status}`, (_b = body.message) != null ? _b : `POST refused with HTTP ${res.status}`);
        }
      } catch (error) {
        refused("send_failed", `POST failed: ${String(error)}`);
      }
    }
  };

  // src/client.ts
  function answerType(type) {
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
  function idKey(id) {
    return `${typeof id}:${id}`;
  }
  var OPEN2 = 1;
  var noop = () => {
  };
  var defaultTimers = {
    setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
    clearTimeout: (handle) => globalThis.clearTimeout(handle)
  };
  function defaultUrl() {
    const location = globalThis.location;
    if (!location || !location.host) {
      throw new Error("switchboard: options.url is required outside a browser page");
    }
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
  }
  function httpUrl(wsUrl) {
    return wsUrl.replace(/^ws(s?):/i, "http$1:");
  }
  function normalizeUrl(url) {
    return url.replace(/^http(s?):/i, "ws$1:").replace(/\/+$/, "");
  }
  var SwitchboardClient = class extends Emitter {
    constructor(options) {
      var _a, _b, _c, _d, _e, _f, _g, _h, _i;
      super();
      this._transport = "websocket";
      /** A WebSocket of this client opened once: WebSocket works here, no fallback. */
      this.wsWorked = false;
      /** An SSE stream of this client got a `welcome` once. */
      this.sseWorked = false;
      /** WebSocket attempts in a row that failed before opening (for `auto`). */
      this.wsPreOpenFailures = 0;
      /** The current socket fired `open`. */
      this.socketOpened = false;
      /** The next open() is the first one after connect(): no `since`. */
      this.firstAttempt = true;
      /** Recovery: the lobby's epoch and the last offset received (or the welcome's baseline). */
      this.epochSeen = null;
      this.offsetSeen = 0;
      /** The current connection asked for recovery (since/epoch, or SSE's native resume). */
      this.resumed = false;
      this._lastRecovery = null;
      this._state = "idle";
      this.socket = null;
      /** Increases with every socket, so events of an abandoned socket are ignored. */
      this.generation = 0;
      this._attempt = 0;
      this._welcome = null;
      this.goodbye = null;
      this.queue = [];
      /**
       * v2: joins sent at the welcome and not answered yet. Until they are, frames wait in the
       * queue: the server may decide a join asynchronously (a cluster, a join proxy), and a frame
       * naming a lobby must not overtake its join.
       */
      this.rejoining = /* @__PURE__ */ new Set();
      this.reconnectTimer = null;
      this.livenessTimer = null;
      this.connectTimer = null;
      this.lastServerTraffic = 0;
      this.roomMap = /* @__PURE__ */ new Map();
      this.joinWaiters = /* @__PURE__ */ new Map();
      /** Requests waiting for an answer, by `idKey(id)`. */
      this.pending = /* @__PURE__ */ new Map();
      this.nextId = 0;
      this.refreshTimer = null;
      /** The server's clock minus ours (from `welcome.server_time`). */
      this.serverSkew = 0;
      /** The current token's expiry (server clock), or null. */
      this.tokenExpiresAt = null;
      this.roomHost = {
        request: (frame, options) => this.request(frame, options),
        leaveRoom: (room, options) => this.leaveRoom(room, options)
      };
      if (!options || typeof options !== "object") {
        throw new Error("switchboard: options are required");
      }
      if (options.protocol !== void 0 && options.protocol !== 1 && options.protocol !== 2) {
        throw new Error("switchboard: options.protocol is 1 or 2");
      }
      this.v2 = options.protocol === 2;
      if (this.v2) {
        if (options.lobby !== void 0) {
          throw new Error("switchboard: protocol 2 has no options.lobby: use client.join(lobby)");
        }
        if (options.transport === "sse") {
          throw new Error("switchboard: protocol 2 is WebSocket only (transport 'sse' speaks v1)");
        }
      } else if (typeof options.lobby !== "string" || options.lobby === "") {
        throw new Error("switchboard: options.lobby is required");
      }
      if (options.token === void 0 && options.getToken === void 0) {
        throw new Error("switchboard: options.token or options.getToken is required");
      }
      this.options = options;
      this.lobby = (_a = options.lobby) != null ? _a : "";
      this.now = (_b = options.now) != null ? _b : (() => Date.now());
      this.baseUrl = normalizeUrl((_c = options.url) != null ? _c : defaultUrl());
      const WS = (_d = options.WebSocket) != null ? _d : globalThis.WebSocket;
      this.ES = (_e = options.EventSource) != null ? _e : globalThis.EventSource;
      const globalFetch = globalThis.fetch;
      this.fetchFn = (_f = options.fetch) != null ? _f : typeof globalFetch === "function" ? (url, init) => globalFetch(url, init) : void 0;
      this.transportOption = this.v2 ? "websocket" : (_g = options.transport) != null ? _g : "auto";
      if (this.transportOption === "sse") {
        if (!this.ES) throw new Error("switchboard: transport 'sse' needs an EventSource (options.EventSource)");
        this._transport = "sse";
      } else if (!WS) {
        if (this.transportOption === "auto" && this.ES) {
          this._transport = "sse";
        } else {
          throw new Error(
            "switchboard: no global WebSocket; pass options.WebSocket (in Node 20: the ws package)"
          );
        }
      }
      this.WS = WS;
      this.timers = (_h = options.timers) != null ? _h : defaultTimers;
      this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
      this.maxQueue = Math.max(0, (_i = options.maxQueue) != null ? _i : 100);
    }
    /** The connection state. */
    get state() {
      return this._state;
    }
    /** The current connection's `welcome`, or null while not connected. */
    get welcome() {
      return this._welcome;
    }
    /** Failed attempts since the last `welcome`. */
    get attempt() {
      return this._attempt;
    }
    /** The transport in use (or of the next attempt): `websocket` or `sse`. */
    get transport() {
      return this._transport;
    }
    /**
     * The last `recovered` frame since `connect()` (null if no reconnect asked for recovery yet):
     * `ok: false` means messages were lost and the application should resync.
     */
    get lastRecovery() {
      return this._lastRecovery;
    }
    /** The lobby's history epoch (from `welcome`), or null. */
    get epoch() {
      return this.epochSeen;
    }
    /** The offset of the last message received (or the `welcome`'s, if none since). */
    get lastOffset() {
      return this.offsetSeen;
    }
    /** Frames waiting for the connection. */
    get queued() {
      return this.queue.length;
    }
    /** Opens the connection (again, after `close()`). No effect while already connecting/open. */
    connect() {
      if (this._state !== "idle" && this._state !== "closed") return;
      this._attempt = 0;
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
    close(code = 1e3, reason = "client_closed") {
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
        }
      }
      for (const frame of this.queue) this.emit("dropped", { frame, reason: "closed" });
      this.queue = [];
      this._welcome = null;
      this.emit("disconnect", {
        code,
        reason,
        wasClean: true,
        info: void 0,
        goodbye: null,
        willReconnect: false,
        retryInMs: null,
        attempt: 0,
        transport: this._transport
      });
      this.setState("closed");
    }
    /** Sends a message to the lobby (`exclude_self` skips this connection only). */
    broadcast(data, options = {}) {
      const frame = { type: "broadcast", data };
      if (options.excludeSelf) frame.exclude_self = true;
      if (options.id !== void 0) frame.id = options.id;
      return this.send(frame);
    }
    /** Sends a message to every connection of user `to`. */
    direct(to, data, options = {}) {
      const frame = { type: "direct", to, data };
      if (options.id !== void 0) frame.id = options.id;
      return this.send(frame);
    }
    /**
     * Asks for the lobby's users. Resolves with the next `presence` answer (also emitted as the
     * `presence` event); rejects if the request is dropped or no answer comes in time.
     */
    presence(options = {}) {
      var _a, _b;
      if (this.v2) {
        return this.request({ type: "presence" }, options).then(
          (p) => Array.isArray(p.users) ? p.users : []
        );
      }
      const timeoutMs = (_b = (_a = options.timeoutMs) != null ? _a : this.options.requestTimeoutMs) != null ? _b : 1e4;
      return new Promise((resolve, reject) => {
        let timer = null;
        const offs = [];
        const done = () => {
          for (const off of offs) off();
          if (timer !== null) this.timers.clearTimeout(timer);
        };
        const frame = { type: "presence" };
        offs.push(
          this.on("presence", (p) => {
            done();
            resolve(p.users);
          })
        );
        offs.push(
          this.on("dropped", (d) => {
            if (d.frame === frame) {
              done();
              reject(new Error(`switchboard: presence request dropped (${d.reason})`));
            }
          })
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
    send(frame) {
      if (this._state === "closed") {
        this.emit("dropped", { frame, reason: "closed" });
        return false;
      }
      if (this._state === "open" && this.rejoining.size === 0 && this.socket && this.socket.readyState === OPEN2) {
        try {
          this.socket.send(JSON.stringify(frame));
          return true;
        } catch {
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
    get rooms() {
      return [...this.roomMap.values()];
    }
    /** v2: the room of `lobby`, if joined or being joined. */
    room(lobby) {
      return this.roomMap.get(lobby);
    }
    /**
     * v2: joins `lobby`. Resolves with its `Room` once the server answered `joined`; rejects with a
     * `SwitchboardError` whose `code` is the server's (`lobby_full`, `not_allowed`,
     * `too_many_lobbies`, `invalid_lobby`...) or `timeout` / `closed`. Called while not connected,
     * the join is sent after the next `welcome` (the timeout runs from the call). Joining a lobby
     * already joined resolves with the same room.
     */
    join(lobby, options = {}) {
      var _a, _b;
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
      const timeoutMs = (_b = (_a = options.timeoutMs) != null ? _a : this.options.requestTimeoutMs) != null ? _b : 1e4;
      return new Promise((resolve, reject) => {
        var _a2;
        const waiter = { resolve, reject, timer: null };
        waiter.timer = this.timers.setTimeout(() => {
          var _a3;
          const waiters2 = (_a3 = this.joinWaiters.get(target)) != null ? _a3 : [];
          const rest = waiters2.filter((w) => w !== waiter);
          if (rest.length > 0) this.joinWaiters.set(target, rest);
          else this.joinWaiters.delete(target);
          const error = new SwitchboardError("timeout", `switchboard: no answer to join ${lobby} within ${timeoutMs} ms`);
          reject(error);
          if (rest.length === 0 && target.state === "joining") this.failRoom(target, error);
        }, timeoutMs);
        const waiters = (_a2 = this.joinWaiters.get(target)) != null ? _a2 : [];
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
    request(frame, options = {}) {
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
    rpc(method, data, options = {}) {
      if (typeof method !== "string" || method === "") {
        return Promise.reject(new SwitchboardError("invalid_message", "switchboard: rpc() needs a method"));
      }
      const frame = { type: "rpc", method };
      if (data !== void 0) frame.data = data;
      return this.request(frame, options).then((answer) => {
        var _a;
        return (_a = answer.data) != null ? _a : null;
      });
    }
    sendRequest(frame, timeoutMs, onAnswer, onError, now) {
      var _a, _b;
      const id = (_a = frame.id) != null ? _a : `sb-${++this.nextId}`;
      const sent = { ...frame, id };
      const key = idKey(id);
      if (this.pending.has(key)) {
        onError(new SwitchboardError("duplicate_id", `switchboard: a request with id ${String(id)} is pending`, id));
        return;
      }
      const ms = (_b = timeoutMs != null ? timeoutMs : this.options.requestTimeoutMs) != null ? _b : 1e4;
      const entry = { frame: sent, expect: answerType(sent.type), onAnswer, onError, timer: null };
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
          closed ? new SwitchboardError("closed", "switchboard: the client is closed", id) : now ? new SwitchboardError("connection_lost", "switchboard: not connected", id) : new SwitchboardError("dropped", "switchboard: the outgoing queue is full", id)
        );
      }
    }
    /** Forgets a pending request (its timer too) and returns it. */
    settle(key) {
      const entry = this.pending.get(key);
      if (!entry) return void 0;
      this.pending.delete(key);
      this.timers.clearTimeout(entry.timer);
      return entry;
    }
    isOpen() {
      return this._state === "open" && this.socket !== null && this.socket.readyState === OPEN2;
    }
    /** The server's clock now (as estimated from `welcome.server_time`). */
    serverNow() {
      return this.now() + this.serverSkew;
    }
    /** Sends a room's join (with since / epoch once it was joined); answers drive the room. */
    sendJoin(room, answered = () => {
    }) {
      const rejoin = room.joined !== null;
      this.sendRequest(
        room.joinFrame(),
        void 0,
        () => {
          var _a;
          answered();
          const waiters = (_a = this.joinWaiters.get(room)) != null ? _a : [];
          this.joinWaiters.delete(room);
          for (const w of waiters) {
            this.timers.clearTimeout(w.timer);
            w.resolve(room);
          }
        },
        (error) => {
          answered();
          if (error.code === "connection_lost" || error.code === "closed") return;
          this.failRoom(room, error, rejoin);
        },
        true
      );
    }
    /** A join was refused or timed out: the room ends; whoever waits for it gets the error. */
    failRoom(room, error, rejoin = room.joined !== null) {
      var _a;
      if (room.state === "left") return;
      this.cancelJoin(room);
      if (this.roomMap.get(room.lobby) === room) this.roomMap.delete(room.lobby);
      const waiters = (_a = this.joinWaiters.get(room)) != null ? _a : [];
      this.joinWaiters.delete(room);
      for (const w of waiters) {
        this.timers.clearTimeout(w.timer);
        w.reject(error);
      }
      if (error.code === "timeout" && this.isOpen()) this.sendNow({ type: "leave", lobby: room.lobby });
      if (rejoin) {
        const event = { type: "left", lobby: room.lobby, reason: "rejoin_failed", code: error.code };
        room.end(event);
        this.emit("left", event);
      } else {
        room.end({ type: "left", lobby: room.lobby, reason: "join_failed", code: error.code });
      }
    }
    /** Forgets a room's join request still waiting for its answer (a late answer is ignored). */
    cancelJoin(room) {
      for (const [key, entry] of [...this.pending]) {
        if (entry.frame.type === "join" && entry.frame.lobby === room.lobby) this.settle(key);
      }
      this.rejoinDone(room);
    }
    leaveRoom(room, options) {
      var _a;
      this.cancelJoin(room);
      if (this.roomMap.get(room.lobby) === room) this.roomMap.delete(room.lobby);
      const waiters = (_a = this.joinWaiters.get(room)) != null ? _a : [];
      this.joinWaiters.delete(room);
      const error = new SwitchboardError("left", `switchboard: room ${room.lobby} was left`);
      for (const w of waiters) {
        this.timers.clearTimeout(w.timer);
        w.reject(error);
      }
      const event = { type: "left", lobby: room.lobby, reason: "left" };
      room.end(event);
      this.emit("left", event);
      if (!this.isOpen()) return Promise.resolve();
      return this.request({ type: "leave", lobby: room.lobby }, options).then(
        () => void 0,
        (e) => {
          if (e.code === "connection_lost" || e.code === "closed") return;
          throw e;
        }
      );
    }
    /**
     * The connection closed. For good (`close()`, a never-reconnect code): every request fails
     * with `closed` and every room ends (reason `closed`). Otherwise: requests already sent fail
     * with `connection_lost` (queued ones wait for the next connection) and rooms will be rejoined.
     */
    connectionLost(forGood) {
      var _a;
      if (!this.v2) return;
      if (this.refreshTimer !== null) {
        this.timers.clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
      }
      for (const [key, entry] of [...this.pending]) {
        if (!forGood && this.queue.includes(entry.frame)) continue;
        this.settle(key);
        entry.onError(
          forGood ? new SwitchboardError("closed", "switchboard: the connection closed for good", entry.frame.id) : new SwitchboardError("connection_lost", "switchboard: the connection was lost", entry.frame.id)
        );
      }
      if (forGood) {
        const error = new SwitchboardError("closed", "switchboard: the connection closed for good");
        for (const room of [...this.roomMap.values()]) {
          this.roomMap.delete(room.lobby);
          const waiters = (_a = this.joinWaiters.get(room)) != null ? _a : [];
          this.joinWaiters.delete(room);
          for (const w of waiters) {
            this.timers.clearTimeout(w.timer);
            w.reject(error);
          }
          const wasIn = room.joined !== null;
          const event = { type: "left", lobby: room.lobby, reason: "closed" };
          room.end(event);
          if (wasIn) this.emit("left", event);
        }
      } else {
        for (const room of this.roomMap.values()) room.connectionLost();
      }
    }
    /** v2 frames: answers matched to requests by id, lobby frames routed to their rooms. */
    onV2Frame(typed) {
      var _a, _b, _c, _d, _e;
      const id = typed.id;
      let entry;
      if ((typeof id === "string" || typeof id === "number") && ["joined", "left", "presence", "ack", "rpc_result", "error"].includes(typed.type)) {
        const candidate = this.pending.get(idKey(id));
        if (candidate && (typed.type === "error" || typed.type === candidate.expect)) {
          entry = this.settle(idKey(id));
        }
      }
      const lobby = typeof typed.lobby === "string" ? typed.lobby : void 0;
      const room = lobby !== void 0 ? this.roomMap.get(lobby) : void 0;
      switch (typed.type) {
        case "welcome":
          this.onWelcome(typed);
          break;
        case "health_ping":
          this.sendNow({ type: "health_pong", timestamp: typed.timestamp });
          this.emit("health_ping", typed);
          break;
        case "joined":
          if (room) {
            room.onJoined(typed);
          } else if (lobby !== void 0 && id === void 0) {
            const created = new Room(this.roomHost, lobby);
            this.roomMap.set(lobby, created);
            created.onJoined(typed);
          }
          entry == null ? void 0 : entry.onAnswer(typed);
          this.emit("joined", typed);
          break;
        case "left":
          if (entry) {
            entry.onAnswer(typed);
          } else if (room) {
            this.roomMap.delete(room.lobby);
            const event = { type: "left", lobby: room.lobby, reason: String((_a = typed.reason) != null ? _a : "") };
            const waiters = (_b = this.joinWaiters.get(room)) != null ? _b : [];
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
          room == null ? void 0 : room.onFrame(typed);
          if (typed.type === "recovered") this._lastRecovery = typed;
          entry == null ? void 0 : entry.onAnswer(typed);
          this.emit(typed.type, typed);
          break;
        case "error":
          entry == null ? void 0 : entry.onError(
            new SwitchboardError(String((_c = typed.code) != null ? _c : "error"), String((_e = (_d = typed.message) != null ? _d : typed.code) != null ? _e : "error"), id)
          );
          this.emit("error", typed);
          break;
        case "ack":
          entry == null ? void 0 : entry.onAnswer(typed);
          this.emit("ack", typed);
          break;
        case "rpc_result":
          entry == null ? void 0 : entry.onAnswer(typed);
          break;
        case "direct":
        case "goodbye":
          if (typed.type === "goodbye") this.goodbye = typed;
          this.emit(typed.type, typed);
          break;
      }
    }
    /** Schedules the next token refresh for a token expiring at `expiresAt` (server clock). */
    armRefresh(expiresAt, serverNow) {
      this.tokenExpiresAt = expiresAt;
      if (!this.options.getToken) return;
      this.setRefreshTimer(refreshDelay(expiresAt - serverNow));
    }
    setRefreshTimer(delay) {
      if (this.refreshTimer !== null) this.timers.clearTimeout(this.refreshTimer);
      this.refreshTimer = this.timers.setTimeout(() => {
        this.refreshTimer = null;
        void this.refreshToken();
      }, delay);
    }
    refreshFailed(error) {
      this.emit("token_error", error);
      const remaining = this.tokenExpiresAt === null ? Infinity : this.tokenExpiresAt - this.serverNow();
      this.setRefreshTimer(refreshRetryDelay(remaining));
    }
    /** Gets a fresh token and sends it (`refresh`); the `ack` schedules the next refresh. */
    async refreshToken() {
      const generation = this.generation;
      const current = () => generation === this.generation && this.isOpen();
      let token;
      try {
        token = await this.options.getToken();
      } catch (error) {
        if (current()) this.refreshFailed(error);
        return;
      }
      if (!current()) return;
      let ack;
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
    setState(state) {
      if (state === this._state) return;
      const previous = this._state;
      this._state = state;
      this.emit("state", { state, previous });
    }
    async open() {
      var _a, _b;
      const generation = ++this.generation;
      let token;
      try {
        token = this.options.getToken ? await this.options.getToken() : this.options.token;
      } catch (error) {
        if (generation !== this.generation || this._state === "closed") return;
        this.emit("token_error", error);
        this.scheduleReconnect(CLIENT_LIVENESS_CODE, "token_error", false, null);
        return;
      }
      if (generation !== this.generation || this._state === "closed") return;
      const resume = !this.firstAttempt && this.epochSeen !== null;
      this.firstAttempt = false;
      const lobby = encodeURIComponent(this.lobby);
      let query = `token=${encodeURIComponent(token)}`;
      if (resume) {
        query += `&since=${this.offsetSeen}&epoch=${encodeURIComponent(this.epochSeen)}`;
      }
      let socket = null;
      if (this._transport === "websocket") {
        const url = this.v2 ? `${this.baseUrl}/ws?${query}` : `${this.baseUrl}/ws/${lobby}?${query}`;
        const protocols = (_a = this.options.protocols) != null ? _a : this.v2 ? "switchboard.v2" : "switchboard.v1";
        try {
          const WS = this.WS;
          socket = Array.isArray(protocols) && protocols.length === 0 ? new WS(url) : new WS(url, protocols);
        } catch {
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
          EventSource: this.ES,
          fetch: this.fetchFn,
          nativeResume: !resume
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
      socket.onerror = noop;
      socket.onmessage = (event) => {
        if (generation === this.generation) this.onData(event.data);
      };
      socket.onclose = (event) => {
        var _a2, _b2;
        if (generation !== this.generation) return;
        if (event.resuming) this.onResuming(generation);
        else this.onClose(event.code, (_a2 = event.reason) != null ? _a2 : "", (_b2 = event.wasClean) != null ? _b2 : false);
      };
      const connectTimeoutMs = (_b = this.options.connectTimeoutMs) != null ? _b : 15e3;
      this.armConnectTimeout(generation, connectTimeoutMs);
    }
    armConnectTimeout(generation, ms) {
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
    onResuming(generation) {
      var _a;
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
        info: void 0,
        goodbye: null,
        willReconnect: true,
        retryInMs: null,
        attempt: this._attempt,
        transport: this._transport
      });
      if (this._state === "closed" || generation !== this.generation) return;
      this.setState("reconnecting");
      this.armConnectTimeout(generation, (_a = this.options.connectTimeoutMs) != null ? _a : 15e3);
    }
    onData(raw) {
      var _a;
      let text;
      if (typeof raw === "string") text = raw;
      else if (raw instanceof ArrayBuffer) text = new TextDecoder().decode(raw);
      else if (ArrayBuffer.isView(raw)) text = new TextDecoder().decode(raw);
      else return;
      let frame;
      try {
        frame = JSON.parse(text);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
      this.lastServerTraffic = Date.now();
      if (this._welcome) this.armLiveness();
      const typed = frame;
      if (this.v2) {
        this.onV2Frame(typed);
        this.emit("frame", typed);
        return;
      }
      switch (typed.type) {
        case "welcome":
          this.onWelcome(typed);
          break;
        case "health_ping":
          this.sendNow({ type: "health_pong", timestamp: typed.timestamp });
          this.emit("health_ping", typed);
          break;
        case "message": {
          const offset = typed.offset;
          if (typeof offset === "number" && this.epochSeen !== null) {
            if (offset > this.offsetSeen) {
              this.offsetSeen = offset;
            } else {
              this.epochSeen = null;
              this.offsetSeen = 0;
            }
          }
          this.emit("message", typed);
          break;
        }
        case "recovered": {
          const recovered = typed;
          this._lastRecovery = recovered;
          const baseline = (_a = this._welcome) == null ? void 0 : _a.offset;
          if (!recovered.ok && typeof baseline === "number" && baseline > this.offsetSeen) {
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
          if (typed.type === "goodbye") this.goodbye = typed;
          this.emit(typed.type, typed);
          break;
      }
      this.emit("frame", typed);
    }
    onWelcome(welcome) {
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
          this.epochSeen = welcome.epoch;
          this.offsetSeen = offset;
        }
      } else {
        this.epochSeen = null;
        this.offsetSeen = 0;
      }
      this.armLiveness();
      if (this.v2) {
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
      if (this.rejoining.size === 0) this.flushQueue();
      this.setState("open");
      this.emit("welcome", welcome);
    }
    /** One of the welcome's joins was answered, failed or given up: the last releases the queue. */
    rejoinDone(room) {
      if (this.rejoining.delete(room) && this.rejoining.size === 0) this.flushQueue();
    }
    /** Sends the queued frames in order, as far as the socket takes them. */
    flushQueue() {
      const pending = this.queue;
      this.queue = [];
      for (let i = 0; i < pending.length; i++) {
        if (!this.sendNow(pending[i])) {
          this.queue = pending.slice(i);
          break;
        }
      }
    }
    sendNow(frame) {
      const socket = this.socket;
      if (!socket || socket.readyState !== OPEN2) return false;
      try {
        socket.send(JSON.stringify(frame));
        return true;
      } catch {
        return false;
      }
    }
    armLiveness() {
      var _a, _b;
      const interval = (_a = this._welcome) == null ? void 0 : _a.ping_interval_ms;
      if (!interval || !(interval > 0)) return;
      if (this.livenessTimer !== null) this.timers.clearTimeout(this.livenessTimer);
      const factor = (_b = this.options.livenessFactor) != null ? _b : 2;
      this.livenessTimer = this.timers.setTimeout(() => {
        this.livenessTimer = null;
        this.drop(CLIENT_LIVENESS_CODE, CLIENT_LIVENESS_REASON);
      }, interval * factor);
    }
    /** Abandons the current socket (closing it) and handles it as a lost connection. */
    drop(code, reason) {
      const socket = this.detach();
      if (socket) {
        try {
          socket.close(code, reason);
        } catch {
        }
      }
      this.onClose(code, reason, false);
    }
    /** Detaches the current socket's handlers (so it can no longer affect us) and returns it. */
    detach() {
      const socket = this.socket;
      this.socket = null;
      this.generation++;
      if (socket) {
        socket.onopen = noop;
        socket.onmessage = noop;
        socket.onclose = noop;
        socket.onerror = noop;
      }
      return socket;
    }
    onClose(code, reason, wasClean) {
      if (this.socket) this.detach();
      const transport = this._transport;
      this.chooseTransport();
      const goodbye = this.goodbye;
      this.goodbye = null;
      this.scheduleReconnect(code, reason, wasClean, goodbye, transport);
    }
    /** `transport: "auto"`: the fallback rule (see `ClientOptions.fallbackAfter`). */
    chooseTransport() {
      var _a;
      if (this.transportOption !== "auto" || this._welcome) return;
      if (this._transport === "websocket") {
        if (this.socketOpened || this.wsWorked || !this.ES) return;
        this.wsPreOpenFailures += 1;
        if (this.wsPreOpenFailures >= Math.max(1, (_a = this.options.fallbackAfter) != null ? _a : 2)) {
          this._transport = "sse";
          this.wsPreOpenFailures = 0;
        }
      } else if (!this.sseWorked && this.WS) {
        this._transport = "websocket";
      }
    }
    scheduleReconnect(code, reason, wasClean, goodbye, transport = this._transport) {
      this.clearTimers();
      this._welcome = null;
      if (this._state === "closed") return;
      const rule = reconnectRule(code);
      this.connectionLost(this.options.reconnect === false || rule === "never");
      const info = closeCodeInfo(code, reason || (goodbye == null ? void 0 : goodbye.reason));
      const reasonWord = reason || (goodbye == null ? void 0 : goodbye.reason) || (info == null ? void 0 : info.reason) || "";
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
          transport
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
        transport
      });
      if (this._state === "closed") return;
      this.setState("reconnecting");
      this.reconnectTimer = this.timers.setTimeout(() => {
        this.reconnectTimer = null;
        void this.open();
      }, delay);
    }
    clearTimers() {
      for (const key of ["reconnectTimer", "livenessTimer", "connectTimer", "refreshTimer"]) {
        if (this[key] !== null) {
          this.timers.clearTimeout(this[key]);
          this[key] = null;
        }
      }
    }
    /** Milliseconds since the last frame from the server (for display). */
    get silenceMs() {
      return this.lastServerTraffic === 0 ? 0 : Date.now() - this.lastServerTraffic;
    }
  };

  // src/index.ts
  var PROTOCOL_VERSION = 1;
  var PROTOCOL_VERSIONS = [1, 2];
  return __toCommonJS(browser_exports);
})();

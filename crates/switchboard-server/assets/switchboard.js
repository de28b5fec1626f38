// Switchboard client (protocol v1), browser build: the global `Switchboard`.
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
    SwitchboardClient: () => SwitchboardClient,
    backoffCap: () => backoffCap,
    backoffDelay: () => backoffDelay,
    closeCodeInfo: () => closeCodeInfo,
    reconnectRule: () => reconnectRule
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
    { code: 1009, reason: "message_too_big", retryAfterMs: null, reconnect: "backoff", meaning: "a frame larger than max_message_bytes" }
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

  // src/client.ts
  var OPEN = 1;
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
  function normalizeUrl(url) {
    return url.replace(/^http(s?):/i, "ws$1:").replace(/\/+$/, "");
  }
  var SwitchboardClient = class extends Emitter {
    constructor(options) {
      var _a, _b, _c, _d;
      super();
      this._state = "idle";
      this.socket = null;
      /** Increases with every socket, so events of an abandoned socket are ignored. */
      this.generation = 0;
      this._attempt = 0;
      this._welcome = null;
      this.goodbye = null;
      this.queue = [];
      this.reconnectTimer = null;
      this.livenessTimer = null;
      this.connectTimer = null;
      this.lastServerTraffic = 0;
      if (!options || typeof options.lobby !== "string" || options.lobby === "") {
        throw new Error("switchboard: options.lobby is required");
      }
      if (options.token === void 0 && options.getToken === void 0) {
        throw new Error("switchboard: options.token or options.getToken is required");
      }
      this.options = options;
      this.lobby = options.lobby;
      this.baseUrl = normalizeUrl((_a = options.url) != null ? _a : defaultUrl());
      const WS = (_b = options.WebSocket) != null ? _b : globalThis.WebSocket;
      if (!WS) {
        throw new Error(
          "switchboard: no global WebSocket; pass options.WebSocket (in Node 20: the ws package)"
        );
      }
      this.WS = WS;
      this.timers = (_c = options.timers) != null ? _c : defaultTimers;
      this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
      this.maxQueue = Math.max(0, (_d = options.maxQueue) != null ? _d : 100);
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
    /** Frames waiting for the connection. */
    get queued() {
      return this.queue.length;
    }
    /** Opens the connection (again, after `close()`). No effect while already connecting/open. */
    connect() {
      if (this._state !== "idle" && this._state !== "closed") return;
      this._attempt = 0;
      this.setState("connecting");
      void this.open();
    }
    /**
     * Closes the connection for good (code 1000); no reconnect follows. Queued frames are dropped.
     * `connect()` may be called again later.
     */
    close(code = 1e3, reason = "client_closed") {
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
        attempt: 0
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
      if (this._state === "open" && this.socket && this.socket.readyState === OPEN) {
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
      const url = `${this.baseUrl}/ws/${encodeURIComponent(this.lobby)}?token=${encodeURIComponent(token)}`;
      const protocols = (_a = this.options.protocols) != null ? _a : "switchboard.v1";
      let socket;
      try {
        socket = Array.isArray(protocols) && protocols.length === 0 ? new this.WS(url) : new this.WS(url, protocols);
      } catch {
        this.scheduleReconnect(1006, "connect_failed", false, null);
        return;
      }
      this.socket = socket;
      this.goodbye = null;
      this._welcome = null;
      socket.onopen = noop;
      socket.onerror = noop;
      socket.onmessage = (event) => {
        if (generation === this.generation) this.onData(event.data);
      };
      socket.onclose = (event) => {
        var _a2, _b2;
        if (generation !== this.generation) return;
        this.onClose(event.code, (_a2 = event.reason) != null ? _a2 : "", (_b2 = event.wasClean) != null ? _b2 : false);
      };
      const connectTimeoutMs = (_b = this.options.connectTimeoutMs) != null ? _b : 15e3;
      this.connectTimer = this.timers.setTimeout(() => {
        this.connectTimer = null;
        if (generation === this.generation && !this._welcome) {
          this.drop(CLIENT_LIVENESS_CODE, "connect_timeout");
        }
      }, connectTimeoutMs);
    }
    onData(raw) {
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
      switch (typed.type) {
        case "welcome":
          this.onWelcome(typed);
          break;
        case "health_ping":
          this.sendNow({ type: "health_pong", timestamp: typed.timestamp });
          this.emit("health_ping", typed);
          break;
        case "message":
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
      this.armLiveness();
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
    sendNow(frame) {
      const socket = this.socket;
      if (!socket || socket.readyState !== OPEN) return false;
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
      const goodbye = this.goodbye;
      this.goodbye = null;
      this.scheduleReconnect(code, reason, wasClean, goodbye);
    }
    scheduleReconnect(code, reason, wasClean, goodbye) {
      this.clearTimers();
      this._welcome = null;
      if (this._state === "closed") return;
      const rule = reconnectRule(code);
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
          attempt: this._attempt
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
        attempt: this._attempt
      });
      if (this._state === "closed") return;
      this.setState("reconnecting");
      this.reconnectTimer = this.timers.setTimeout(() => {
        this.reconnectTimer = null;
        void this.open();
      }, delay);
    }
    clearTimers() {
      for (const key of ["reconnectTimer", "livenessTimer", "connectTimer"]) {
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
  return __toCommonJS(browser_exports);
})();

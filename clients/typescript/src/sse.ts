/**
 * The Server-Sent Events transport (DESIGN.md, "Recovery and SSE"), shaped like a WebSocket so
 * the client's state machine, events and close-code rules are the same for both transports.
 *
 * - Stream: `GET {base}/sse/{lobby}?token=T` through `EventSource`. Each event's name is the
 *   frame's type and its data the JSON frame; messages carry `id: EPOCH:OFFSET`, so when the
 *   stream breaks (no `close` event) the browser reconnects by itself with `Last-Event-ID` and
 *   the server replays what was missed (then a `recovered` frame). Such a break is reported as a
 *   close with `resuming: true`: the client shows it as a lost connection but lets EventSource
 *   resume (see client.ts). Only when that resume can recover: the stream got a message with an
 *   id (the server puts ids on messages only, so before the first one there is no
 *   `Last-Event-ID`), and its URL carries no `since` / `epoch` (the server prefers them to
 *   `Last-Event-ID`, and they are older). Otherwise a break is an ordinary close (1006) and the
 *   client reconnects with a new stream whose URL carries `since` / `epoch`.
 * - A close is an event `close` with `{"code","reason"}`: the stream is closed for good here (no
 *   native reconnect) and reported like a WebSocket close with that code.
 * - A refusal before the stream starts is an HTTP status, which EventSource cannot read: the
 *   status is then probed with one `fetch` of the same URL (aborted right after the headers) and
 *   mapped to the close code the WebSocket endpoint would have used (see `refusalClose`).
 * - Sends: `POST {base}/sse/{lobby}/messages?token=T` with `{"connection_id","message"}`, one at
 *   a time, in order (parallel requests could overtake each other). A refused POST is reported
 *   as an `error` frame (the body's `error.code`), echoing the frame's `id`.
 */

import { closeCodeInfo } from "./closeCodes.js";
import type { ClientFrame } from "./protocol.js";

/** The part of the standard `EventSource` the client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown; lastEventId?: string }) => void) | null;
  addEventListener(type: string, listener: (event: { data?: unknown; lastEventId?: string }) => void): void;
  close(): void;
}

export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** The part of `fetch` the client uses (the global one, or an injected one in tests). */
export type FetchLike = (
  url: string,
  init?: {
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    signal?: AbortSignal;
  },
) => Promise<{
  status: number;
  ok: boolean;
  headers?: { get(name: string): string | null };
  text(): Promise<string>;
}>;

/** Close event of the transports; `resuming`: the transport reconnects by itself (SSE). */
export interface TransportCloseEvent {
  code: number;
  reason: string;
  wasClean?: boolean;
  resuming?: boolean;
}

/** Server frame types the SSE stream may carry (EventSource only delivers named events listened to). */
export const SSE_EVENT_TYPES = [
  "welcome",
  "health_ping",
  "direct",
  "presence",
  "member_joined",
  "member_left",
  "error",
  "goodbye",
  "recovered",
] as const;

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;
const ES_CLOSED = 2;

/**
 * The close code an HTTP refusal of the stream stands for: the body's `error.code`, when it is a
 * reason word of the close-code table (`unauthorized`, `server_full`, `lobby_full`,
 * `rate_limited`, `server_shutdown`...), gives that row's code; otherwise 401 means 4001
 * `unauthorized` and 403 (a refused `Origin`) 4001 `forbidden` (neither is retried), 429 means
 * 4008 `rate_limited`, 503 means 4002 `server_full`; anything else 1006 (retried with backoff).
 */
export function refusalClose(status: number, errorCode: string | undefined): { code: number; reason: string } {
  if (errorCode) {
    for (const code of [4001, 4002, 4003, 4004, 4008, 4009, 4010, 1001]) {
      const row = closeCodeInfo(code, errorCode);
      if (row && row.reason === errorCode) return { code: row.code, reason: row.reason };
    }
  }
  if (status === 401) return { code: 4001, reason: errorCode ?? "unauthorized" };
  if (status === 403) return { code: 4001, reason: errorCode ?? "forbidden" };
  if (status === 429) return { code: 4008, reason: errorCode ?? "rate_limited" };
  if (status === 503) return { code: 4002, reason: errorCode ?? "server_full" };
  return { code: 1006, reason: errorCode ?? (status ? `http_${status}` : "sse_failed") };
}

function errorBody(text: string): { code?: string; message?: string; retry_after_ms?: number } {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; retry_after_ms?: unknown } };
    const e = body?.error;
    if (!e || typeof e !== "object") return {};
    return {
      code: typeof e.code === "string" ? e.code : undefined,
      message: typeof e.message === "string" ? e.message : undefined,
      retry_after_ms: typeof e.retry_after_ms === "number" ? e.retry_after_ms : undefined,
    };
  } catch {
    return {};
  }
}

export interface SseSocketOptions {
  /** `http(s)://host/sse/{lobby}?token=...` (plus `since` / `epoch` on a reconnect). */
  streamUrl: string;
  /** `http(s)://host/sse/{lobby}/messages?token=...`. */
  postUrl: string;
  EventSource: EventSourceConstructor;
  fetch: FetchLike | undefined;
  /** The stream URL has no `since` / `epoch`: a native resume may rely on `Last-Event-ID`. */
  nativeResume: boolean;
}

/** One SSE connection, with the shape of a WebSocket (see the module comment). */
export class SseSocket {
  readyState = CONNECTING;
  readonly protocol = "";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: TransportCloseEvent) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  /** From the current stream's `welcome`: where POSTs go. */
  connectionId: string | null = null;
  private readonly es: EventSourceLike;
  private readonly options: SseSocketOptions;
  /** A `welcome` arrived on this EventSource (so a broken stream is resumed, not failed). */
  private welcomed = false;
  /** A message with an id arrived: EventSource will send `Last-Event-ID` when it resumes. */
  private sawId = false;
  private outbox: ClientFrame[] = [];
  private posting = false;
  private finished = false;

  constructor(options: SseSocketOptions) {
    this.options = options;
    const es = new options.EventSource(options.streamUrl);
    this.es = es;
    es.onopen = (event) => {
      if (!this.finished) this.onopen?.(event);
    };
    // `message` frames come as the default event type.
    es.onmessage = (event) => {
      if (event.lastEventId) this.sawId = true;
      this.frame("message", event.data);
    };
    for (const type of SSE_EVENT_TYPES) {
      es.addEventListener(type, (event) => {
        // EventSource's own `error` (a plain Event, no data) shares its name with the server's
        // `error` frames (MessageEvents with data).
        if (type === "error" && typeof event?.data !== "string") return;
        this.frame(type, event?.data);
      });
    }
    es.addEventListener("close", (event) => this.onCloseEvent(event?.data));
    es.onerror = () => this.onStreamError();
  }

  /** Queues a client frame for POSTing (in order, one request at a time). */
  send(data: string): void {
    if (this.readyState !== OPEN) throw new Error("switchboard: SSE connection not open");
    this.outbox.push(JSON.parse(data) as ClientFrame);
    void this.pump();
  }

  /** Closes the stream (no native reconnect). The server notices the stream's end. */
  close(_code?: number, _reason?: string): void {
    this.finish();
  }

  private finish(): void {
    this.finished = true;
    this.readyState = CLOSED;
    this.outbox = [];
    try {
      this.es.close();
    } catch {
      // ignore
    }
  }

  private frame(type: string, data: unknown): void {
    if (this.finished || typeof data !== "string") return;
    let frame: { type?: unknown; [field: string]: unknown };
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
    this.onmessage?.({ data: text });
  }

  private onCloseEvent(data: unknown): void {
    if (this.finished) return;
    let code = 1006;
    let reason = "";
    if (typeof data === "string") {
      try {
        const parsed = JSON.parse(data) as { code?: unknown; reason?: unknown };
        if (typeof parsed.code === "number") code = parsed.code;
        if (typeof parsed.reason === "string") reason = parsed.reason;
      } catch {
        // keep 1006
      }
    }
    this.finish();
    this.onclose?.({ code, reason, wasClean: true });
  }

  private onStreamError(): void {
    if (this.finished) return;
    this.onerror?.({});
    if (this.es.readyState !== ES_CLOSED && this.welcomed && this.sawId && this.options.nativeResume) {
      // The stream broke; EventSource reconnects by itself with Last-Event-ID.
      this.readyState = CONNECTING;
      this.connectionId = null;
      this.onclose?.({ code: 1006, reason: "stream_lost", wasClean: false, resuming: true });
      return;
    }
    if (this.welcomed) {
      // A break that a native resume would not recover: the client reconnects itself.
      this.finish();
      this.onclose?.({ code: 1006, reason: "stream_lost", wasClean: false });
      return;
    }
    // Never got going (refused with an HTTP status, or no server): give up on this one and let
    // the client decide (with the status, when it can be learnt).
    this.finish();
    void this.probe().then((close) => this.onclose?.({ ...close, wasClean: false }));
  }

  /** Learns why the stream was refused: one GET of the same URL, aborted after the headers. */
  private async probe(): Promise<{ code: number; reason: string }> {
    const fetchFn = this.options.fetch;
    if (!fetchFn) return { code: 1006, reason: "sse_failed" };
    const abort = typeof AbortController === "function" ? new AbortController() : undefined;
    try {
      const res = await fetchFn(this.options.streamUrl, {
        headers: { accept: "text/event-stream" },
        signal: abort?.signal,
      });
      if (res.ok) {
        abort?.abort();
        return { code: 1006, reason: "sse_failed" };
      }
      const body = errorBody(await res.text());
      const close = refusalClose(res.status, body.code);
      const retryHeader = Number(res.headers?.get("retry-after") ?? NaN);
      const retryAfterMs =
        body.retry_after_ms ?? (Number.isFinite(retryHeader) ? Math.round(retryHeader * 1000) : undefined);
      if (retryAfterMs !== undefined && this.onmessage) {
        // What a goodbye would have said on a WebSocket.
        this.onmessage({
          data: JSON.stringify({ type: "goodbye", code: close.code, reason: close.reason, retry_after_ms: retryAfterMs }),
        });
      }
      return close;
    } catch {
      return { code: 1006, reason: "sse_failed" };
    }
  }

  private async pump(): Promise<void> {
    if (this.posting) return;
    this.posting = true;
    try {
      while (this.outbox.length > 0 && !this.finished) {
        const message = this.outbox.shift() as ClientFrame;
        await this.post(message);
      }
    } finally {
      this.posting = false;
    }
  }

  private async post(message: ClientFrame): Promise<void> {
    const fetchFn = this.options.fetch;
    const refused = (code: string, text: string): void => {
      if (this.finished || message.type === "health_pong") return;
      const frame: Record<string, unknown> = { type: "error", code, message: text };
      if (typeof message.id === "string" || typeof message.id === "number") frame.id = message.id;
      this.onmessage?.({ data: JSON.stringify(frame) });
    };
    if (!fetchFn) {
      refused("send_failed", "no fetch function to POST with");
      return;
    }
    try {
      const res = await fetchFn(this.options.postUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ connection_id: this.connectionId, message }),
      });
      if (!res.ok) {
        const body = errorBody(await res.text().catch(() => ""));
        refused(body.code ?? `http_${res.status}`, body.message ?? `POST refused with HTTP ${res.status}`);
      }
    } catch (error) {
      refused("send_failed", `POST failed: ${String(error)}`);
    }
  }
}

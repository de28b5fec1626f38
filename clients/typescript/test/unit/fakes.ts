// Test doubles: a scripted WebSocket and a manual clock.
import type { Timers, WebSocketLike } from "../../src/client.js";

export class FakeClock implements Timers {
  now = 0;
  private seq = 0;
  private pending = new Map<number, { at: number; callback: () => void }>();

  setTimeout(callback: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.pending.set(id, { at: this.now + Math.max(0, ms), callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.pending.delete(handle as number);
  }

  /** Timers still pending, with their delays from now. */
  delays(): number[] {
    return [...this.pending.values()].map((t) => t.at - this.now).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms`, firing due timers in order. */
  advance(ms: number): void {
    const target = this.now + ms;
    for (;;) {
      let next: [number, { at: number; callback: () => void }] | undefined;
      for (const entry of this.pending) {
        if (entry[1].at <= target && (!next || entry[1].at < next[1].at)) next = entry;
      }
      if (!next) break;
      this.pending.delete(next[0]);
      this.now = next[1].at;
      next[1].callback();
    }
    this.now = target;
  }
}

export class FakeSocket implements WebSocketLike {
  static instances: FakeSocket[] = [];
  readyState = 0;
  protocol = "";
  sent: Array<Record<string, unknown>> = [];
  closedWith: { code?: number; reason?: string } | null = null;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string; wasClean?: boolean }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.instances.push(this);
  }

  static reset(): void {
    FakeSocket.instances = [];
  }

  static last(): FakeSocket {
    const s = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (!s) throw new Error("no socket was opened");
    return s;
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data));
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 2;
  }

  // ---- the server's side ----
  serverOpen(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  serverSend(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  welcome(overrides: Record<string, unknown> = {}): void {
    if (this.readyState === 0) this.serverOpen();
    this.serverSend({
      type: "welcome",
      connection_id: "n-1",
      user_id: "alice",
      lobby: "room",
      ping_interval_ms: 1000,
      server_time: 0,
      protocol: 1,
      presence_events: true,
      ...overrides,
    });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** Frames of a type the client sent. */
  sentOfType(type: string): Array<Record<string, unknown>> {
    return this.sent.filter((f) => f.type === type);
  }
}

/** Lets pending promise callbacks (an async getToken) run. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

type EsListener = (event: { data?: unknown; lastEventId?: string }) => void;

/** A scripted EventSource: the test plays the server's stream. */
export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  readyState = 0;
  closed = false;
  onopen: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown; lastEventId?: string }) => void) | null = null;
  private listeners = new Map<string, EsListener[]>();

  constructor(readonly url: string) {
    FakeEventSource.instances.push(this);
  }

  static reset(): void {
    FakeEventSource.instances = [];
  }

  static last(): FakeEventSource {
    const s = FakeEventSource.instances[FakeEventSource.instances.length - 1];
    if (!s) throw new Error("no EventSource was opened");
    return s;
  }

  addEventListener(type: string, listener: EsListener): void {
    const list = this.listeners.get(type) ?? [];
    list.push(listener);
    this.listeners.set(type, list);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }

  // ---- the server's side ----
  serverOpen(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** One SSE event: `event:` = the frame's type, `data:` = the JSON frame. */
  serverEvent(frame: { type: string; [k: string]: unknown }): void {
    if (this.closed) return;
    const event = { data: JSON.stringify(frame), lastEventId: "" };
    if (frame.type === "message") this.onmessage?.(event);
    else for (const l of this.listeners.get(frame.type) ?? []) l(event);
  }

  welcome(overrides: Record<string, unknown> = {}): void {
    if (this.readyState === 0) this.serverOpen();
    this.serverEvent({
      type: "welcome",
      connection_id: "sse-1",
      user_id: "alice",
      lobby: "room",
      ping_interval_ms: 1000,
      server_time: 0,
      protocol: 1,
      presence_events: true,
      offset: 0,
      epoch: "e1",
      ...overrides,
    });
  }

  /** The stream broke: EventSource reconnects by itself (readyState CONNECTING). */
  serverDrop(): void {
    this.readyState = 0;
    for (const l of this.listeners.get("error") ?? []) l({});
    this.onerror?.({});
  }

  /** The request failed for good (an HTTP status): readyState CLOSED. */
  serverRefuse(): void {
    this.readyState = 2;
    for (const l of this.listeners.get("error") ?? []) l({});
    this.onerror?.({});
  }
}

/** A fake fetch recording requests; answers with `respond` (default 200 `{}`). */
export class FakeFetch {
  requests: Array<{ url: string; method: string; body: unknown }> = [];
  respond: (url: string, method: string) => { status: number; body?: unknown; headers?: Record<string, string> } = () => ({
    status: 200,
    body: {},
  });
  private waiters: Array<() => void> = [];

  readonly fetch = async (
    url: string,
    init: { method?: string; body?: string } = {},
  ): Promise<{ status: number; ok: boolean; headers: { get(n: string): string | null }; text(): Promise<string> }> => {
    const method = init.method ?? "GET";
    this.requests.push({ url, method, body: init.body === undefined ? undefined : JSON.parse(init.body) });
    for (const w of this.waiters.splice(0)) w();
    await Promise.resolve();
    const r = this.respond(url, method);
    const headers = r.headers ?? {};
    return {
      status: r.status,
      ok: r.status >= 200 && r.status < 300,
      headers: { get: (n: string) => headers[n.toLowerCase()] ?? null },
      text: async () => (r.body === undefined ? "" : JSON.stringify(r.body)),
    };
  };

  posts(): Array<Record<string, unknown>> {
    return this.requests.filter((r) => r.method === "POST").map((r) => r.body as Record<string, unknown>);
  }
}

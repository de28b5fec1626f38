/**
 * The close-code table of protocol v1, mirroring `docs/protocol.md` ("Close codes") row by row.
 * This module is the client's single source of truth for what a close means and whether (and
 * how) to reconnect after it.
 */

/** What the client does after a close. */
export type ReconnectRule =
  /** Never reconnect (4001 unauthorized, 4003 replaced, 4009 kicked). */
  | "never"
  /** Reconnect after the goodbye's `retry_after_ms` (and at least the backoff delay). */
  | "after_retry"
  /** Reconnect with a fresh token (`getToken()` is called again), after `retry_after_ms`. */
  | "fresh_token"
  /** Reconnect with exponential backoff and full jitter. */
  | "backoff";

export interface CloseCodeInfo {
  code: number;
  /** The close frame's reason word. */
  reason: string;
  /** The `goodbye.retry_after_ms` range [min, max) in ms, when the server sends a goodbye. */
  retryAfterMs: readonly [number, number] | null;
  reconnect: ReconnectRule;
  meaning: string;
}

export const CLOSE_CODES: readonly CloseCodeInfo[] = [
  { code: 4001, reason: "unauthorized", retryAfterMs: null, reconnect: "never", meaning: "missing, invalid or expired token; lobby not allowed by the token" },
  { code: 4002, reason: "server_full", retryAfterMs: [2000, 10000], reconnect: "after_retry", meaning: "the global connection limit" },
  { code: 4002, reason: "lobby_full", retryAfterMs: [2000, 10000], reconnect: "after_retry", meaning: "the per-lobby limit" },
  { code: 4002, reason: "user_limit", retryAfterMs: [2000, 10000], reconnect: "after_retry", meaning: "the per-user limit (policy multi), or policy reject with a connection open" },
  { code: 4002, reason: "ip_limit", retryAfterMs: [2000, 10000], reconnect: "after_retry", meaning: "the per-IP limit" },
  { code: 4003, reason: "replaced", retryAfterMs: null, reconnect: "never", meaning: "a newer connection of the same user took over (policy replace)" },
  { code: 4004, reason: "stale", retryAfterMs: [0, 2000], reconnect: "after_retry", meaning: "nothing arrived for ping_interval + pong_timeout" },
  { code: 4008, reason: "rate_limited", retryAfterMs: [1000, 5000], reconnect: "after_retry", meaning: "too many messages or connects in" },
  { code: 4008, reason: "slow_consumer", retryAfterMs: [1000, 5000], reconnect: "after_retry", meaning: "the outbound queue overflowed" },
  { code: 4009, reason: "kicked", retryAfterMs: null, reconnect: "never", meaning: "disconnected by the backend" },
  { code: 4010, reason: "token_expired", retryAfterMs: [0, 1000], reconnect: "fresh_token", meaning: "the token's expiry passed" },
  { code: 1001, reason: "server_shutdown", retryAfterMs: [1000, 10000], reconnect: "after_retry", meaning: "graceful shutdown (drain), or connecting while the server drains" },
  { code: 1002, reason: "protocol_error", retryAfterMs: null, reconnect: "backoff", meaning: "the client broke the WebSocket protocol" },
  { code: 1003, reason: "unsupported_data", retryAfterMs: null, reconnect: "backoff", meaning: "a binary data frame" },
  { code: 1007, reason: "invalid_utf8", retryAfterMs: null, reconnect: "backoff", meaning: "a text frame that is not valid UTF-8" },
  { code: 1009, reason: "message_too_big", retryAfterMs: null, reconnect: "backoff", meaning: "a frame larger than max_message_bytes" },
  { code: 1013, reason: "backend_unavailable", retryAfterMs: [1000, 5000], reconnect: "after_retry", meaning: "the standalone server's connect proxy did not answer in time, answered 5xx, or was busy" },
];

/** Codes after which a client never reconnects. */
export const NO_RECONNECT_CODES: ReadonlySet<number> = new Set(
  CLOSE_CODES.filter((c) => c.reconnect === "never").map((c) => c.code),
);

/**
 * The code the client itself closes with when the server went silent for twice its ping
 * interval (private-use range; the server never sends it).
 */
export const CLIENT_LIVENESS_CODE = 4000;
export const CLIENT_LIVENESS_REASON = "liveness_timeout";

/** The row for a close, by code and (when the code has several) reason word. */
export function closeCodeInfo(code: number, reason?: string): CloseCodeInfo | undefined {
  const rows = CLOSE_CODES.filter((c) => c.code === code);
  return rows.find((c) => c.reason === reason) ?? rows[0];
}

/**
 * What to do after a close with this code. Codes not in the table (1000 normal, 1006 abnormal,
 * 1011 server error, the client's own liveness close...) are retried with backoff.
 */
export function reconnectRule(code: number): ReconnectRule {
  return closeCodeInfo(code)?.reconnect ?? "backoff";
}

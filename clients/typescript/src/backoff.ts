/** Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"). */

export interface BackoffOptions {
  /** The cap of the first retry, in ms (default 500). */
  initialMs: number;
  /** The largest cap, in ms (default 30000). */
  maxMs: number;
  /** The cap grows by this factor per attempt (default 2). */
  factor: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000, factor: 2 };

/** The cap of retry number `attempt` (1-based): min(maxMs, initialMs * factor^(attempt-1)). */
export function backoffCap(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const n = Math.max(1, Math.floor(attempt));
  const cap = options.initialMs * Math.pow(options.factor, n - 1);
  return Math.min(options.maxMs, Number.isFinite(cap) ? cap : options.maxMs);
}

/**
 * The delay before retry number `attempt`: uniform in [0, cap) ("full jitter"), so that clients
 * dropped together do not come back together. `random` returns a number in [0, 1).
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const r = Math.min(Math.max(random(), 0), 1);
  const cap = backoffCap(attempt, options);
  return Math.min(Math.floor(r * cap), Math.max(0, Math.ceil(cap) - 1));
}

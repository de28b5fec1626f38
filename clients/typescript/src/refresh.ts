/**
 * Protocol v2 token refresh timing: when `welcome` (or a refresh's `ack`) carries
 * `token_expires_at`, the client asks `getToken()` for a fresh token and sends
 * `{"type":"refresh","token":...,"id":...}` before the old one expires.
 */

/** Refresh no later than this long before the expiry. */
export const REFRESH_MARGIN_MS = 30_000;
/** Of the time remaining, refresh after this fraction (when that is earlier than the margin). */
export const REFRESH_FRACTION = 0.8;
/** Never refresh again sooner than this (a token that keeps coming back short-lived). */
export const REFRESH_MIN_DELAY_MS = 1_000;

/**
 * The delay before refreshing a token that expires in `remainingMs`: 80 % of the remaining
 * time, but never later than 30 s before the expiry; at least 1 s (or 80 % of the remaining time
 * when less than that is left), never negative.
 */
export function refreshDelay(remainingMs: number): number {
  if (!Number.isFinite(remainingMs) || remainingMs <= 0) return 0;
  const wanted = Math.min(REFRESH_FRACTION * remainingMs, remainingMs - REFRESH_MARGIN_MS);
  const floor = Math.min(REFRESH_MIN_DELAY_MS, REFRESH_FRACTION * remainingMs);
  return Math.floor(Math.max(0, wanted, floor));
}

/**
 * After a failed refresh (getToken threw, the server refused, no answer): try again after half
 * of the remaining time, between 1 s and 5 s. (If the token expires meanwhile, the server closes
 * with 4010 and the reconnect gets a fresh token anyway.)
 */
export function refreshRetryDelay(remainingMs: number): number {
  const half = Number.isFinite(remainingMs) ? remainingMs / 2 : 5_000;
  return Math.floor(Math.min(5_000, Math.max(1_000, half)));
}

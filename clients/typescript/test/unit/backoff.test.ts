import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffCap, backoffDelay, DEFAULT_BACKOFF } from "../../src/backoff.js";

test("backoff cap doubles from initialMs and saturates at maxMs", () => {
  const o = { initialMs: 500, maxMs: 30_000, factor: 2 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6, 7, 8, 20, 1000].map((n) => backoffCap(n, o)),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000],
  );
  assert.equal(backoffCap(0, o), 500, "attempt 0 is treated as the first");
  assert.equal(backoffCap(1e9, o), 30000, "no overflow to Infinity/NaN");
});

test("full jitter: every delay is in [0, cap) and the extremes are reached", () => {
  for (let attempt = 1; attempt <= 12; attempt++) {
    const cap = backoffCap(attempt, DEFAULT_BACKOFF);
    assert.equal(backoffDelay(attempt, DEFAULT_BACKOFF, () => 0), 0);
    const top = backoffDelay(attempt, DEFAULT_BACKOFF, () => 0.999999999);
    assert.ok(top < cap && top >= cap - 1, `attempt ${attempt}: ${top} vs cap ${cap}`);
    assert.equal(backoffDelay(attempt, DEFAULT_BACKOFF, () => 0.5), Math.floor(cap / 2));
    // Even a broken random source stays in bounds.
    assert.ok(backoffDelay(attempt, DEFAULT_BACKOFF, () => 1) < cap);
    assert.equal(backoffDelay(attempt, DEFAULT_BACKOFF, () => -3), 0);
  }
});

test("full jitter with Math.random stays in bounds and spreads", () => {
  const seen = new Set<number>();
  for (let i = 0; i < 2000; i++) {
    const d = backoffDelay(4, DEFAULT_BACKOFF);
    assert.ok(Number.isInteger(d) && d >= 0 && d < 4000, String(d));
    seen.add(Math.floor(d / 400));
  }
  assert.equal(seen.size, 10, "delays cover the whole [0, cap) range");
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CLOSE_CODES, closeCodeInfo, NO_RECONNECT_CODES, reconnectRule } from "../../src/closeCodes.js";

test("never reconnect after 4001, 4003, 4009 only", () => {
  assert.deepEqual([...NO_RECONNECT_CODES].sort(), [4001, 4003, 4009]);
  assert.equal(reconnectRule(4001), "never");
  assert.equal(reconnectRule(4003), "never");
  assert.equal(reconnectRule(4009), "never");
  assert.equal(reconnectRule(4010), "fresh_token");
  for (const code of [4002, 4004, 4008, 1001]) assert.equal(reconnectRule(code), "after_retry");
  for (const code of [1000, 1002, 1003, 1006, 1007, 1009, 1011, 4000, 4999]) {
    assert.equal(reconnectRule(code), "backoff", String(code));
  }
});

test("close-code lookup by code and reason", () => {
  assert.equal(closeCodeInfo(4002, "lobby_full")?.meaning, "the per-lobby limit");
  assert.deepEqual(closeCodeInfo(4002, "ip_limit")?.retryAfterMs, [2000, 10000]);
  assert.equal(closeCodeInfo(4002)?.reason, "server_full", "first row when the reason is unknown");
  assert.equal(closeCodeInfo(1006), undefined);
});

// The table mirrors docs/protocol.md: every row there is here, with the same range and rule.
test("the table mirrors docs/protocol.md's close-code table", () => {
  const here = dirname(fileURLToPath(import.meta.url));
  // build-test/test/unit -> repository root
  const doc = readFileSync(join(here, "..", "..", "..", "..", "..", "docs", "protocol.md"), "utf8");
  const rows = doc
    .split("\n")
    .map((line) => line.match(/^\| (\d{4}) \| `([a-z_0-9]+)` \| ([^|]+) \| ([^|]+) \|/))
    .filter((m): m is RegExpMatchArray => m !== null);
  assert.ok(rows.length >= 15, `found ${rows.length} rows in docs/protocol.md`);
  assert.equal(rows.length, CLOSE_CODES.length, "same number of rows");
  for (const [, code, reason, range, rule] of rows) {
    const info = CLOSE_CODES.find((c) => c.code === Number(code) && c.reason === reason);
    assert.ok(info, `${code} ${reason} is in the client's table`);
    const m = range.match(/(\d+)-(\d+)/);
    assert.deepEqual(info.retryAfterMs, m ? [Number(m[1]), Number(m[2])] : null, `${code} ${reason} range`);
    const expected = /never/.test(rule)
      ? "never"
      : /fresh token/.test(rule)
        ? "fresh_token"
        : /retry_after_ms/.test(rule)
          ? "after_retry"
          : "backoff";
    assert.equal(info.reconnect, expected, `${code} ${reason} rule`);
  }
});

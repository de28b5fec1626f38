// API publishes per second from Node's fetch (keep-alive): one after the other, then 32 at a
// time: node publish.mjs HTTP_URL KEY CALLS.
const [http, key, calls] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const body = JSON.stringify({ data: { text: "x".repeat(80) } });
const publish = async () => {
  const response = await fetch(`${http}/api/lobbies/bench-pub/broadcast`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body,
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  await response.json();
};
await publish();
let start = performance.now();
for (let i = 0; i < calls; i++) await publish();
const sequential = calls / ((performance.now() - start) / 1000);
let remaining = calls;
const worker = async () => {
  while (remaining > 0) {
    remaining -= 1;
    await publish();
  }
};
start = performance.now();
await Promise.all(Array.from({ length: 32 }, worker));
const concurrent = calls / ((performance.now() - start) / 1000);
process.stdout.write(JSON.stringify({ sequential, concurrent_32: concurrent }) + "\n");

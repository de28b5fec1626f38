// API publishes per second from Node's fetch (keep-alive): one after the other, then 4 and 32
// at a time: node publish.mjs HTTP_URL KEY CALLS.
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
const concurrently = async (n) => {
  let remaining = calls;
  const worker = async () => {
    while (remaining > 0) {
      remaining -= 1;
      await publish();
    }
  };
  const begin = performance.now();
  await Promise.all(Array.from({ length: n }, worker));
  return calls / ((performance.now() - begin) / 1000);
};
const concurrent_4 = await concurrently(4);
const concurrent_32 = await concurrently(32);
process.stdout.write(JSON.stringify({ sequential, concurrent_4, concurrent_32 }) + "\n");

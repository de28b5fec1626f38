// Messages per second one TypeScript client (protocol 2, in Node with `ws`) receives.
// Needs clients/typescript built (`npm ci && npm run build` there): node receive.mjs URL LOBBY N.
// Prints {"ready":true} once joined, then {"per_second":..} after N messages.
import { createRequire } from "node:module";

const ts = new URL("../../typescript/", import.meta.url);
const WebSocket = createRequire(new URL("package.json", ts))("ws");
const { SwitchboardClient } = await import(new URL("dist/index.js", ts).href);

const [url, lobby, n] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const client = new SwitchboardClient({ url, protocol: 2, token: "node-receiver", WebSocket });
client.connect();
const room = await client.join(lobby);
let count = 0;
let first = 0;
room.on("message", () => {
  count += 1;
  if (count === 1) first = performance.now();
  if (count === n) {
    const seconds = (performance.now() - first) / 1000;
    process.stdout.write(JSON.stringify({ per_second: (n - 1) / seconds }) + "\n");
    client.close();
    process.exit(0);
  }
});
process.stdout.write(JSON.stringify({ ready: true }) + "\n");

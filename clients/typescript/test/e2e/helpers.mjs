// Shared helpers of the end-to-end tests: the real server binary and Debian's Chromium.
import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, createWriteStream } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { once } from "node:events";
import { createServer, connect } from "node:net";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const packageRoot = join(here, "..", "..");
export const repoRoot = join(packageRoot, "..", "..");
export const outputDir = join(packageRoot, "test-output");
export const binary =
  process.env.SWITCHBOARD_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(repoRoot, "target"), "debug", "switchboard");
export const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Flags that work headless as root on Debian's Chromium (see shared notes). */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-features=LocalNetworkAccessChecks",
];

mkdirSync(outputDir, { recursive: true });

/** Builds the server if it is missing (scripts/test-client.sh builds it first anyway). */
export function ensureBinary() {
  if (existsSync(binary)) return;
  execFileSync("cargo", ["build", "--bin", "switchboard"], { cwd: repoRoot, stdio: "inherit" });
}

let serverSeq = 0;

/**
 * Starts the real server; resolves once it printed `listening on ADDR`. `bind` defaults to
 * 127.0.0.1:0 (a free port); pass the address of a previous run to restart on the same port.
 * No configuration but `env`: dev mode (`--dev`, unless `env` sets a JWT secret), pages on.
 */
export async function startServer({ env = {}, bind = "127.0.0.1:0", name = "server" } = {}) {
  ensureBinary();
  const cleanEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("SWITCHBOARD_")),
  );
  const logPath = join(outputDir, `${name}-${++serverSeq}.log`);
  const log = createWriteStream(logPath);
  const args = env.SWITCHBOARD_AUTH__JWT_SECRET ? [] : ["--dev"];
  const proc = spawn(binary, args, {
    env: { ...cleanEnv, RUST_LOG: "info", SWITCHBOARD_BIND: bind, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stderr.pipe(log);
  const exited = once(proc, "exit");
  const addr = await new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => reject(new Error(`server did not start in 20 s (log: ${logPath})`)), 20_000);
    const onData = (chunk) => {
      buffered += chunk;
      const line = buffered.split("\n")[0];
      if (buffered.includes("\n")) {
        clearTimeout(timer);
        proc.stdout.off("data", onData);
        proc.stdout.resume();
        const m = line.match(/^listening on (\S+)$/);
        if (m) resolve(m[1]);
        else reject(new Error(`unexpected first line: ${line}`));
      }
    };
    proc.stdout.setEncoding("utf8");
    proc.stdout.on("data", onData);
    proc.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening; log: ${logPath}`));
    });
  });
  let stopped = false;
  return {
    addr,
    url: `http://${addr}`,
    pid: proc.pid,
    logPath,
    /** Stops it (SIGKILL by default: a crash, no goodbye) and waits for the exit. */
    async stop(signal = "SIGKILL") {
      if (!stopped && proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, signal);
      }
      stopped = true;
      await exited;
    },
  };
}

export async function launchBrowser() {
  if (!existsSync(chromiumPath)) {
    throw new Error(`${chromiumPath} is missing: apt-get install -y chromium (scripts/test-client.sh does)`);
  }
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: CHROMIUM_FLAGS,
    timeout: 60_000,
  });
}

/** A new page whose console errors and page errors are collected (and fail the test later). */
export async function newPage(browser, problems) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  return page;
}

export async function api(server, method, path, body, headers = {}) {
  const res = await fetch(server.url + path, {
    method,
    headers: { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

export function screenshotPath(name) {
  return join(outputDir, name);
}

/** A free loopback port (the kernel's pick; released before use). */
async function freePort() {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const { port } = probe.address();
  probe.close();
  await once(probe, "close");
  return port;
}

/**
 * A real `redis-server` on a free loopback port, without persistence, for cluster tests;
 * ready once the port accepts connections (polled: redis-server gives no other signal here).
 * `stop()` kills it by its PID.
 */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: "ignore" },
  );
  const exited = once(proc, "exit");
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = connect(port, "127.0.0.1");
      s.once("connect", () => { s.destroy(); resolve(true); });
      s.once("error", () => resolve(false));
    });
    if (ok) break;
    if (Date.now() > deadline || proc.exitCode !== null) {
      proc.kill("SIGKILL");
      throw new Error("redis-server did not start (is it installed? scripts/test.sh installs it)");
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) process.kill(proc.pid, "SIGKILL");
      await exited;
    },
  };
}

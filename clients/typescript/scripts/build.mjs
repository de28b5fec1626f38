// Builds the client.
//   node scripts/build.mjs           dist/ (ESM + .d.ts, for Node and bundlers) and the browser
//                                    bundle crates/switchboard-server/assets/switchboard.js
//   node scripts/build.mjs --check   fails if the committed browser bundle differs from a fresh build
//   node scripts/build.mjs --tests   compiles src/ and test/unit/ to build-test/ for `node --test`
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(root, "..", "..");
const bundlePath = join(repo, "crates", "switchboard-server", "assets", "switchboard.js");
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
const args = new Set(process.argv.slice(2));

function run(cmd, cmdArgs) {
  try {
    execFileSync(process.execPath, [cmd, ...cmdArgs], { cwd: root, stdio: "inherit" });
  } catch {
    console.error(`build failed: ${relative(root, cmd)} ${cmdArgs.join(" ")}`);
    process.exit(1);
  }
}

async function bundle() {
  const result = await esbuild.build({
    entryPoints: [join(root, "src", "browser.ts")],
    bundle: true,
    format: "iife",
    globalName: "Switchboard",
    platform: "browser",
    target: ["es2019"],
    minify: false,
    legalComments: "none",
    charset: "utf8",
    write: false,
    // Source-path comments relative to the package, whatever the caller's cwd: reproducible.
    absWorkingDir: root,
    banner: {
      js:
        "// Switchboard client (protocols v1 and v2), browser build: the global `Switchboard`.\n" +
        "// GENERATED from clients/typescript by `npm run build` (esbuild): do not edit by hand.",
    },
  });
  return result.outputFiles[0].text;
}

if (args.has("--tests")) {
  rmSync(join(root, "build-test"), { recursive: true, force: true });
  run(tsc, ["-p", "tsconfig.test.json"]);
  // build-test/ is ESM like the package.
  writeFileSync(join(root, "build-test", "package.json"), '{ "type": "module" }\n');
} else if (args.has("--check")) {
  const fresh = await bundle();
  let committed = "";
  try {
    committed = readFileSync(bundlePath, "utf8");
  } catch {
    // missing: differs
  }
  if (fresh !== committed) {
    console.error(
      `${relative(repo, bundlePath)} differs from a fresh build of clients/typescript: ` +
        "run `npm run build` in clients/typescript and commit the result",
    );
    process.exit(1);
  }
  console.log(`${relative(repo, bundlePath)} matches a fresh build`);
} else {
  rmSync(join(root, "dist"), { recursive: true, force: true });
  run(tsc, ["-p", "tsconfig.json"]);
  const code = await bundle();
  writeFileSync(bundlePath, code);
  console.log(`wrote dist/ and ${relative(repo, bundlePath)} (${code.length} bytes)`);
}

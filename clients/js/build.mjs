// The browser build: dist/rhizomorph-client.mjs, one ES module made from src/ with esbuild's
// WebAssembly build (an npm package; nothing is downloaded at build time).
//
// hypha-rpc is not bundled: the build imports it from "./hypha-rpc-websocket.mjs", the ES
// module build hypha-rpc ships in its dist/, expected beside this file. The rhizomorph gateway
// serves both under /lib/ (rhizomorph/gateway/http.py), so a page that loads
// /lib/rhizomorph-client.mjs and one that loads /lib/hypha-rpc-websocket.mjs share one copy.
//
//   node build.mjs [--outfile dist/rhizomorph-client.mjs]

import { build } from "esbuild-wasm";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const at = process.argv.indexOf("--outfile");
const outfile = at > 0 ? process.argv[at + 1] : join(here, "dist", "rhizomorph-client.mjs");

const hyphaBeside = {
  name: "hypha-rpc-beside",
  setup(b) {
    b.onResolve({ filter: /^hypha-rpc$/ }, () => ({ path: "./hypha-rpc-websocket.mjs", external: true }));
  },
};

const result = await build({
  entryPoints: [join(here, "src", "index.js")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  outfile,
  plugins: [hyphaBeside],
  legalComments: "none",
  logLevel: "warning",
  banner: { js: "// rhizomorph-client browser build (clients/js, built by build.mjs): imports ./hypha-rpc-websocket.mjs" },
});
if (result.errors.length) process.exit(1);
console.log(`built ${outfile}`);

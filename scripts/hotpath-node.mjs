// Runs the hot-path harness (examples/hotpath.rs, a WASI command) on V8,
// through Node: `node [V8 flags] scripts/hotpath-node.mjs MODULE [harness args]`.
// Node's V8 is not Envoy's, but its tiers (Liftoff, TurboFan) are the same
// kind: --no-liftoff is what Envoy's V8 runs with, --liftoff-only the
// baseline tier alone.
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const [module, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: "preview1", args: ["hotpath", ...args], env: {}, returnOnExit: true });
// CPU time of the process, in ns (Node has no per-thread clock; its
// compiler threads are idle once the module runs).
const cpuNs = () => {
  const { user, system } = process.cpuUsage();
  return BigInt(user + system) * 1000n;
};
const compiled = await WebAssembly.compile(readFileSync(module));
const instance = await WebAssembly.instantiate(compiled, { ...wasi.getImportObject(), hotpath: { cpu_ns: cpuNs } });
process.exitCode = wasi.start(instance);

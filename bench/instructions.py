#!/usr/bin/env python3
"""Instructions per request of Envoy's worker thread, counted by callgrind
(`make bench-instructions`, run by scripts/bench-instructions).

Wall-clock figures on a shared 2-core machine move by 10-20 % between runs;
an instruction count does not (it moves by well under 1 %), so this is the
A/B for a change of the filter. It runs the same variants as bench.py, each
Envoy (one worker) under `valgrind --tool=callgrind`, sends a warm-up, zeroes
the counters, sends N sequential requests and reads the worker thread's
total, less the same time's total with no request (the clock's work, which
valgrind's slow Envoy would spread over few requests):

  baseline   no filter                      floor-1   one do-nothing wasm filter
  floor      keygate's shape, do-nothing    hit       keygate, a cached key
  floor-2keys / hit-2keys   the same with two provider keys (upstream filter)
  floor-io   keygate's shape, the filters making a hit's host calls and nothing else
  floor-io-min  the same with one minimal set of those calls
  malformed / unknown       refusals (malformed tokens; an unknown token, cached)
  hit-b      KEYGATE_WASM_B, a cached key (an A/B of two builds)

Environment: INSTR_N (requests measured, default 400), INSTR_WARM (default
600), INSTR_ONLY (comma-separated variants), INSTR_BODY_KIB (the chat body's
size, default 1), INSTR_KEEP=1 (keep the dumps,
for callgrind_annotate), KEYGATE_WASM, KEYGATE_WASM_B.
Prints a table and writes bench/results/instructions.json.
"""

import glob
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

N = int(os.environ.get("INSTR_N", "400"))
WARM = int(os.environ.get("INSTR_WARM", "600"))
ONLY = [v for v in os.environ.get("INSTR_ONLY", "").split(",") if v]
BODY_KIB = int(os.environ.get("INSTR_BODY_KIB", "1"))


def send(port, token, body, n, want):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        conn.request("POST", B.CHAT, body=body, headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != want:
            raise RuntimeError(f"answered {r.status}, expected {want}")
    conn.close()


def worker_ir(out, pid, dump):
    """The dump's busiest thread (Envoy's one worker) and its instruction count."""
    best = 0
    for f in glob.glob(str(out / f"cg.{pid}*")):
        with open(f) as fh:
            text = fh.read()
        if f"Trigger: dump {dump}\n" not in text:
            continue
        for line in text.splitlines():
            if line.startswith(("summary:", "totals:")):
                best = max(best, int(line.split()[1]))
                break
    return best


def dump(out, pid, name):
    """Dumps (and zeroes) the counters; the worker thread's instructions since."""
    subprocess.run(["callgrind_control", "-d", name, str(pid)], check=True, capture_output=True)
    B.wait_until(lambda: worker_ir(out, pid, name) > 0, 60, f"{name} dump")
    return worker_ir(out, pid, name)


def main():
    if not shutil.which("valgrind"):
        sys.exit("bench-instructions: valgrind is required (scripts/bench-instructions installs it)")
    if B.WORK.exists():
        shutil.rmtree(B.WORK)
    B.WORK.mkdir(parents=True)
    out = Path(tempfile.mkdtemp(prefix="keygate-callgrind-"))
    store = None
    results, idle_per_s = {}, {}
    try:
        body = B.sized_body(BODY_KIB)
        up = B.start(["taskset", "-c", "1", str(B.UPSTREAM_BIN), "0"], "upstream", stdout=subprocess.PIPE)
        upstream_port = int(up.stdout.readline().decode().strip().rsplit(":", 1)[1])
        store = B.Store().start()
        hit, two_keys = B.provision(store, upstream_port)
        unknown = B.well_formed_unknown_token()
        kg = B.ROOT / "envoy" / "envoy.yaml"
        floor = {"KEYGATE_WASM": str(B.FLOOR_WASM)}
        # Polls and flushes as in production; the longest cache lifetime (a
        # lookup now and then lands in a measurement, as in production).
        quiet = {"KEYGATE_CACHE_TTL_MS": "5000"}
        variants = [
            # name, template, env, edit, [(kind, token, status)]
            ("baseline", B.BENCH / "envoy-baseline.yaml", {}, None, [("baseline", hit, 200)]),
            ("floor-1", B.BENCH / "envoy-baseline.yaml", floor, B.one_filter, [("floor-1", hit, 200)]),
            ("floor", kg, floor, B.floor_route("keygate_direct_http"), [("floor", hit, 200)]),
            ("floor-2keys", kg, floor, B.floor_route("keygate_upstream_http"), [("floor-2keys", hit, 200)]),
            ("floor-io", kg, floor, B.floor_io_route("keygate_direct_http"), [("floor-io", hit, 200)]),
            ("floor-io-min", kg, floor, B.floor_io_route("keygate_direct_http", least=True), [("floor-io-min", hit, 200)]),
            ("keygate", kg, quiet, None, [("hit", hit, 200), ("hit-2keys", two_keys, 200),
                                         ("malformed", "kg-nope", 401), ("unknown", unknown, 401)]),
        ]
        if B.WASM_B:
            variants.append(("keygate-b", kg, {**quiet, "KEYGATE_WASM": str(B.WASM_B)}, None, [("hit-b", hit, 200)]))
        for name, template, env, edit, kinds in variants:
            kinds = [k for k in kinds if not ONLY or k[0] in ONLY]
            if not kinds:
                continue
            wrap = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/cg.%p",
                    "--smc-check=all-non-file", "--dump-instr=no", "--compress-strings=no"]
            e = B.Envoy(name, template, env=env, edit=edit, wrap=wrap).start(store, upstream_port)
            for kind, token, status in kinds:
                send(e.port, token, body, WARM, status)
                subprocess.run(["callgrind_control", "-z", str(e.pid)], check=True, capture_output=True)
                t0 = time.monotonic()
                send(e.port, token, body, N, status)
                took = time.monotonic() - t0
                ir = dump(out, e.pid, kind)
                # Work by the clock (the filter's tick: metrics, usage
                # flushes, the change feed) lands on however many requests
                # valgrind's slow Envoy serves meanwhile: as long again with
                # no request tells it apart.
                time.sleep(took)
                idle = dump(out, e.pid, f"{kind}-idle")
                results[kind] = (ir - idle) / N
                idle_per_s[kind] = idle / took
                B.log(f"{kind:12s} {results[kind]:>10,.0f} instructions per request "
                      f"({ir / N:,.0f} with the clock's work; idle {idle / took:,.0f} per second over {took:.1f} s)")
            e.proc.terminate()
            e.proc.wait(timeout=120)
    finally:
        B.stop_all()
        if store:
            shutil.rmtree(store.cleanup_dir, ignore_errors=True)
        if os.environ.get("INSTR_KEEP"):
            print(f"callgrind dumps kept in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)

    def row(name, ref=None):
        v = results.get(name)
        if v is None:
            return None
        extra = f"  {v - results[ref]:>+10,.0f} vs {ref}" if ref in results else ""
        return f"| {name} | {v:,.0f} |{extra} |"
    lines = ["| variant | instructions per request | above |", "|---|---:|---|"]
    for name, ref in [("baseline", None), ("floor-1", "baseline"), ("floor", "baseline"), ("floor-io", "floor"),
                      ("floor-io-min", "floor"),
                      ("hit", "floor"), ("hit-b", "floor"), ("floor-2keys", "baseline"), ("hit-2keys", "floor-2keys"),
                      ("malformed", "floor-1"), ("unknown", "floor-1")]:
        r = row(name, ref)
        if r:
            lines.append(r)
    print("\n".join(lines))
    (B.RESULTS / "instructions.json").write_text(json.dumps(
        {"n": N, "warm": WARM, "wasm": str(B.WASM), "wasm_b": str(B.WASM_B) if B.WASM_B else None,
         "instructions_per_request": results, "idle_instructions_per_second": idle_per_s}, indent=2) + "\n")


if __name__ == "__main__":
    main()

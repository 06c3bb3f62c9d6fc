#!/usr/bin/env python3
"""Does keygate get faster as Envoy's wasm runtime warms up? (bench/where-time-goes.md)

Starts the mock provider (bench/upstream), a stand-in key store (in this
process: every token is an active key with one provider key) and, for each
variant, a fresh Envoy (envoy/envoy.yaml, one worker on core 0) that it then
measures from its start:

  - seconds to /ready, and Envoy's CPU seconds by then (module load/compile);
  - the latency of its first requests, one at a time (the first one waits for
    the store lookup);
  - the mean latency per bucket of the next requests (one keep-alive client);
  - then Envoy CPU per request and throughput in successive 1 s wrk windows
    (64 connections, as the benchmark).

A speed-up over time would show V8 tiering up (Liftoff -> TurboFan).

Variants: baseline (bench/envoy-baseline.yaml: no filter, for reference), v8
(as shipped), v8 with vm_config.allow_precompiled, and the other runtime names
(wasmtime, wamr: a variant whose Envoy does not start is reported as such).

    .venv/bin/python bench/tierup.py [--windows 12] [--variants v8,v8-precompiled,wasmtime]
"""
import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "scripts" / "render-envoy"
WASM = Path(os.environ.get("KEYGATE_WASM") or ROOT / "target/wasm32-wasip1/release/keygate_filter.wasm").resolve()
UPSTREAM_BIN = ROOT / "bench/upstream/target/release/bench-upstream"
GATEWAY_TOKEN = "tierup-gateway-" + os.urandom(6).hex()
CLK_TCK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT / "bench"))
from bench import chat_body, envoy_binary  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token():
    body = "kg-" + os.urandom(20).hex()
    return body + hashlib.sha256(body.encode()).hexdigest()[:8]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def store(upstream_port):
    """The key store's lookup API, as far as a cached key needs it."""
    answer = json.dumps({
        "schema": 1, "version": 1, "status": "active", "key": {"id": "ak_tierup"},
        "providers": [{"id": "openai", "format": "openai", "auth": "bearer",
                       "baseUrl": f"http://127.0.0.1:{upstream_port}/v1", "models": ["gpt-*"],
                       "routes": [{"keys": [{"id": "pk_a", "value": "sk-tierup"}]}]}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, body):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/v1/lookup/"):
                self.reply(answer)
            elif self.path.startswith("/v1/changes"):
                self.reply(b'{"version":1}')
            else:
                self.reply(b"{}")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.reply(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def envoy_config(work, variant, store_port, upstream_port):
    env = {**os.environ, "KEYGATE_GATEWAY_PORT": str(free_port()), "KEYGATE_ENVOY_ADMIN_PORT": str(free_port()),
           "KEYGATE_LOOKUP_PORT": str(store_port), "KEYGATE_WASM": str(WASM), "KEYGATE_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "BENCH_UPSTREAM_PORT": str(upstream_port)}
    out = work / f"envoy-{variant}.yaml"
    template = ROOT / ("bench/envoy-baseline.yaml" if variant == "baseline" else "envoy/envoy.yaml")
    subprocess.run([sys.executable, str(RENDER), str(template), str(out)], env=env, check=True)
    text = out.read_text()
    runtime = "v8" if variant.startswith("v8") else variant
    text = text.replace("runtime: envoy.wasm.runtime.v8", f"runtime: envoy.wasm.runtime.{runtime}")
    if variant == "v8-precompiled":
        # (A module without a precompiled section compiles as usual.)
        text = text.replace("runtime: envoy.wasm.runtime.v8", "runtime: envoy.wasm.runtime.v8\n                  allow_precompiled: true")
    out.write_text(text)
    return out, env


def request(conn, body, auth):
    for attempt in (1, 2):
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", body,
                         {"authorization": auth, "content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status, time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            # A keep-alive connection Envoy closed: once more on a new one.
            conn.close()
            if attempt == 2:
                raise
    return None, 0.0


def wrk_window(port, seconds, auth, body_file):
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = io.open("{body_file}", "rb"):read("*a")\n'
        f'wrk.headers["authorization"] = "{auth}"\n'
        'wrk.headers["content-type"] = "application/json"\n')
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(m.group(1)) if m else 0, int(bad.group(1)) if bad else 0


def run_variant(variant, work, store_port, upstream_port, args, body):
    config, env = envoy_config(work, variant, store_port, upstream_port)
    port, admin = int(env["KEYGATE_GATEWAY_PORT"]), int(env["KEYGATE_ENVOY_ADMIN_PORT"])
    log = open(work / f"envoy-{variant}.log", "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", "0", envoy_binary(), "-c", str(config), "--concurrency", "1",
                             "--base-id", str(port), "-l", "warning", "--component-log-level", "wasm:warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    res = {"variant": variant}
    try:
        ready = None
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    ready = time.monotonic() - t0
                    break
            except OSError:
                pass
            time.sleep(0.02)
        if ready is None:
            lines = (work / f"envoy-{variant}.log").read_text(errors="replace").strip().splitlines()
            res["error"] = "Envoy did not start: " + " | ".join(ln.split("] ", 3)[-1] for ln in lines if "][error]" in ln or "][critical]" in ln or "compiled without" in ln)[:600]
            return res
        res["ready_s"] = ready
        res["ready_cpu_s"] = cpu_seconds(proc.pid)
        time.sleep(1.5)  # the store cluster's first health check
        auth = "Bearer " + token()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        first = [request(conn, body, auth) for _ in range(args.first)]
        res["first_ms"] = [round(s * 1000, 2) for _, s in first]
        res["first_status"] = sorted({st for st, _ in first})
        buckets = []
        for _ in range(args.buckets):
            lat = [request(conn, body, auth)[1] for _ in range(args.bucket_size)]
            buckets.append(statistics.mean(lat) * 1e6)
        res["bucket_us"] = [round(b) for b in buckets]
        conn.close()
        body_file = work / "body.json"
        body_file.write_bytes(body)
        windows = []
        for _ in range(args.windows):
            c0 = cpu_seconds(proc.pid)
            n, bad = wrk_window(port, 1, auth, body_file)
            c1 = cpu_seconds(proc.pid)
            windows.append({"rps": n, "cpu_us_per_req": round((c1 - c0) * 1e6 / max(n, 1), 1), "non2xx": bad})
        res["windows"] = windows
        return res
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="baseline,v8,v8-precompiled,wasmtime,wamr")
    ap.add_argument("--first", type=int, default=10)
    ap.add_argument("--buckets", type=int, default=10)
    ap.add_argument("--bucket-size", type=int, default=200)
    ap.add_argument("--windows", type=int, default=10)
    args = ap.parse_args()
    if not WASM.exists():
        sys.exit(f"no {WASM}: make wasm")
    if not UPSTREAM_BIN.exists():
        subprocess.run(["cargo", "build", "--release", "--manifest-path", str(ROOT / "bench/upstream/Cargo.toml")],
                       check=True)
    if not shutil.which("wrk"):
        sys.exit("no wrk: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="tierup-"))
    up = subprocess.Popen(["taskset", "-c", "1", str(UPSTREAM_BIN), "0"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        upstream_port = int(up.stdout.readline().decode().strip().rsplit(":", 1)[1])
        st = store(upstream_port)
        body = chat_body()
        for variant in args.variants.split(","):
            res = run_variant(variant, work, st.server_address[1], upstream_port, args, body)
            print(json.dumps(res), flush=True)
    finally:
        up.terminate()
        up.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

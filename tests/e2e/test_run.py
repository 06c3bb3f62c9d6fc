"""`make run`'s script beside another gateway on the same host (two
checkouts, or `make run` while the tests run): each Envoy picks its own
base id, so neither fails on Envoy's shared-memory domain socket."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from harness import ROOT, free_port, http, wait_until


def start_run(tmp: Path):
    ports = {k: free_port() for k in ("KEYGATE_API_PORT", "KEYGATE_LOOKUP_PORT", "KEYGATE_GATEWAY_PORT", "KEYGATE_ENVOY_ADMIN_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "KEYGATE_DATA_DIR": str(tmp / "data"),
           "KEYGATE_ENVOY_CONCURRENCY": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("KEYGATE_GATEWAY_TOKEN", None)
    env.pop("KEYGATE_ADMIN_TOKEN", None)
    log = open(tmp / "run.log", "ab")
    proc = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    return proc, ports


def test_two_gateways_run_side_by_side(tmp_path):
    runs = []
    try:
        for i in range(2):
            (tmp_path / str(i)).mkdir()
            runs.append(start_run(tmp_path / str(i)))
        for i, (proc, ports) in enumerate(runs):
            admin = f"http://127.0.0.1:{ports['KEYGATE_ENVOY_ADMIN_PORT']}/ready"
            wait_until(lambda: proc.poll() is None and http("GET", admin, timeout=1)[0] == 200, timeout=40,
                       what=f"gateway {i} ready")
        for proc, ports in runs:
            status, doc, _ = http("GET", f"http://127.0.0.1:{ports['KEYGATE_GATEWAY_PORT']}/v1/models")
            assert (status, doc["error"]["code"]) == (401, "missing_access_key")
    finally:
        for proc, _ in runs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)

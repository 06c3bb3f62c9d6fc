"""examples/ and the compose demo's scripts, run for real: the store, the mock
provider started by deploy/compose/mock-provider.py, provisioning by
deploy/compose/demo-setup.py, Envoy with the filter; then each example client
as a subprocess, as a user would run it."""

import os
import re
import subprocess
import sys

import pytest

from deploytools import ROOT, STORE_BIN, WASM

E2E = ROOT / "tests" / "e2e"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from harness import Envoy, Store, free_port, http, wait_until
    if not (STORE_BIN.exists() and WASM.exists()):
        pytest.fail("the store and the filter must be built: run `make build`")
    base = tmp_path_factory.mktemp("demo")
    procs = []
    store = Store(base / "data").start()
    procs.append(store)
    port = free_port()
    mock_log = open(base / "mock.log", "ab")
    mock = subprocess.Popen([sys.executable, str(ROOT / "deploy/compose/mock-provider.py"), "--host", "127.0.0.1",
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(E2E)},
                            stdout=mock_log, stderr=mock_log)
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{port}/v1/models", timeout=1)[0] == 200, what="mock provider")
        setup = subprocess.run([sys.executable, str(ROOT / "deploy/compose/demo-setup.py")], capture_output=True,
                               text=True, timeout=60, env={**os.environ, "KEYGATE_API_URL": store.api,
                                                           "KEYGATE_ADMIN_TOKEN": store.admin_token,
                                                           "MOCK_PROVIDER_URL": f"http://127.0.0.1:{port}"})
        assert setup.returncode == 0, setup.stderr
        token = re.search(r"^KEYGATE_ACCESS_KEY=(\S+)$", setup.stdout, re.M).group(1)
        # Running it again is harmless (no duplicate provider keys).
        again = subprocess.run([sys.executable, str(ROOT / "deploy/compose/demo-setup.py")], capture_output=True,
                               text=True, timeout=60, env={**os.environ, "KEYGATE_API_URL": store.api,
                                                           "KEYGATE_ADMIN_TOKEN": store.admin_token,
                                                           "MOCK_PROVIDER_URL": f"http://127.0.0.1:{port}"})
        assert again.returncode == 0, again.stderr
        keys = store.ok("GET", "/provider-keys?limit=100")["providerKeys"]
        assert len([k for k in keys if k["name"].startswith("demo ")]) == 2
        envoy = Envoy(base / "envoy", store.lookup_port, store.gateway_token, concurrency=1).start()
        procs.append(envoy)
        yield {"KEYGATE_URL": envoy.url, "KEYGATE_ACCESS_KEY": token}
    finally:
        for p in reversed(procs):
            p.stop()
        mock.terminate()
        mock.wait(timeout=10)


def run_example(args, demo):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "KEYGATE_"))}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(args, env={**env, **demo}, capture_output=True, text=True, timeout=60, cwd=str(ROOT))


@pytest.mark.parametrize("example", ["openai_client.py", "anthropic_client.py", "curl.sh"])
def test_example_prints_the_reply(demo, example):
    path = ROOT / "examples" / example
    args = [sys.executable, str(path)] if example.endswith(".py") else ["bash", str(path)]
    proc = run_example(args, demo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "hello from mock", proc.stdout + proc.stderr


def test_curl_example_fails_on_a_wrong_key(demo):
    proc = run_example(["bash", str(ROOT / "examples" / "curl.sh")], {**demo, "KEYGATE_ACCESS_KEY": "kg-wrong"})
    assert proc.returncode != 0
    assert "error" in proc.stderr

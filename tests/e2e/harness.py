"""Processes for end-to-end tests: the real key store binary, the real Envoy
with the real filter, all on 127.0.0.1 with free ports."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE_BIN = ROOT / "target" / "release" / "keygate"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate_filter.wasm"
ENVOY_TEMPLATE = ROOT / "envoy" / "envoy.yaml"
RENDER = ROOT / "scripts" / "render-envoy"


def envoy_binary():
    local = Path(sys.executable).parent / "envoy"
    return str(local) if local.exists() else shutil.which("envoy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Everything the tests sent and received, for the canary sweep (test_canary):
# secrets that must never appear in a response, and the responses.
CANARIES = set()
RESPONSES = []


def record_response(url, status, headers, raw):
    RESPONSES.append((url, status, json.dumps(dict(headers)), raw.decode("utf-8", "replace")))


def http(method, url, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text, headers). Never raises on HTTP errors."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if isinstance(body, (dict, list)):
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    record_response(url, status, hdrs.items(), raw)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, parsed, {k.lower(): v for k, v in hdrs.items()}


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def dechunk(data):
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def raw_http(port, data, timeout=5.0):
    """Sends `data` as it is on a fresh connection and reads the first
    response: (status, headers, body), status None when the connection closed
    without one. For requests urllib would refuse or repair."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass  # answered and closed before the whole request was sent
        try:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            if b"\r\n\r\n" not in buf:
                return None, {}, b""
            head, body = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                while len(body) < int(headers["content-length"]):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                while not body.endswith(b"0\r\n\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                body = dechunk(body)
        except OSError:
            if b"\r\n\r\n" not in buf:
                return None, {}, b""
    finally:
        sock.close()
    record_response(f"raw:{port}", status, headers.items(), body)
    return status, headers, body


class Store:
    def __init__(self, data_dir, admin_token="admin-test-token", gateway_token="gateway-test-token"):
        self.data_dir = Path(data_dir)
        self.api_port = free_port()
        self.lookup_port = free_port()
        self.admin_token = admin_token
        self.gateway_token = gateway_token
        self.proc = None
        self.log_path = self.data_dir.parent / f"store-{self.api_port}.log"

    @property
    def api(self):
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def lookup(self):
        return f"http://127.0.0.1:{self.lookup_port}"

    def env(self):
        return {
            **os.environ,
            "KEYGATE_DATA_DIR": str(self.data_dir),
            "KEYGATE_API_PORT": str(self.api_port),
            "KEYGATE_LOOKUP_PORT": str(self.lookup_port),
            "KEYGATE_ADMIN_TOKEN": self.admin_token,
            "KEYGATE_GATEWAY_TOKEN": self.gateway_token,
            # Alert deliveries retried within the tests' patience (test_alerts).
            "KEYGATE_ALERT_RETRY_BASE_MS": "100",
            "RUST_LOG": "info",
        }

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(STORE_BIN), "serve"], env=self.env(), stdout=log, stderr=log)
        wait_until(lambda: http("GET", f"{self.api}/healthz", timeout=1)[0] == 200, what="key store health")
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self):
        self.kill(signal.SIGTERM)

    def call(self, method, path, body=None):
        if isinstance(body, dict) and path.startswith("/provider-keys") and body.get("value"):
            CANARIES.add(body["value"])
        if isinstance(body, dict) and path.startswith("/alert-webhooks") and body.get("secret"):
            CANARIES.add(body["secret"])
        result = http(method, f"{self.api}{path}", body, {"authorization": f"Bearer {self.admin_token}"})
        if isinstance(result[1], dict):
            for field in ("token", "secret"):  # an access token; a webhook secret, shown once
                if result[1].get(field):
                    CANARIES.add(result[1][field])
        return result

    def ok(self, method, path, body=None):
        status, doc, _ = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status} {doc}"
        return doc

    def stats(self):
        return http("GET", f"{self.lookup}/v1/stats", headers={"authorization": f"Bearer {self.gateway_token}"})[1]


class EnvoyProcess:
    """A running Envoy: how it starts and stops, its log and stats. A
    subclass sets `port`, `admin_port`, `concurrency` and `log_path`."""

    proc = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def launch(self, config, env, what="envoy ready"):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--concurrency", str(self.concurrency), "--base-id", str(self.port),
             "-l", "warning", "--component-log-level", "wasm:info"],
            env=env, stdout=log, stderr=log, cwd=str(ROOT),
        )
        wait_until(lambda: http("GET", f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)[0] == 200, timeout=30, what=what)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stats(self):
        return http("GET", f"http://127.0.0.1:{self.admin_port}/stats?format=json")[1]


class Envoy(EnvoyProcess):
    """envoy/envoy.yaml, rendered for this test."""

    def __init__(self, workdir, store_lookup_port, gateway_token, concurrency=2, extra_env=None):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.admin_port = free_port()
        self.concurrency = concurrency
        self.env = {
            **os.environ,
            "KEYGATE_GATEWAY_PORT": str(self.port),
            "KEYGATE_ENVOY_ADMIN_PORT": str(self.admin_port),
            "KEYGATE_LOOKUP_PORT": str(store_lookup_port),
            "KEYGATE_GATEWAY_TOKEN": gateway_token,
            "KEYGATE_WASM": str(WASM),
            **(extra_env or {}),
        }
        self.config = self.workdir / f"envoy-{self.port}.yaml"
        self.log_path = self.workdir / f"envoy-{self.port}.log"

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(RENDER), str(ENVOY_TEMPLATE), str(self.config)], env=self.env, check=True)
        return self.launch(self.config, self.env)

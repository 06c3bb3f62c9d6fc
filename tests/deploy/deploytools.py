"""Shared helpers of the deployment tests (tests/deploy): repository paths,
rendering an Envoy template with scripts/render-envoy, `envoy --mode validate`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "keygate_filter.wasm"
STORE_BIN = ROOT / "target" / "release" / "keygate"
TEMPLATE = ROOT / "envoy" / "envoy.yaml"
RENDER = ROOT / "scripts" / "render-envoy"
EXCLUDED_DIRS = {"target", ".venv", ".venv-peers", "build", ".git", "node_modules", "__pycache__", ".pytest_cache", "data"}
# A CA bundle that exists on this machine, for configs whose bundle path is the image's.
LOCAL_CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]


def tool(name):
    """A tool from the test venv (next to sys.executable), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def envoy_binary():
    return tool("envoy")


def local_ca_bundle():
    for path in LOCAL_CA_BUNDLES:
        if Path(path).exists():
            return path
    pytest.fail("no CA bundle on this machine (looked for: " + ", ".join(LOCAL_CA_BUNDLES) + ")")


def require_wasm():
    if not WASM.exists():
        pytest.fail(f"the filter is not built ({WASM.relative_to(ROOT)} is missing): run `make wasm` first")
    return WASM


def require_envoy():
    envoy = envoy_binary()
    if not envoy:
        pytest.fail("no envoy binary (looked next to sys.executable and on PATH): run `make venv`")
    return envoy


def render(template, out, params):
    """Renders `template` with scripts/render-envoy and exactly `params` (plus PATH)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **{k: str(v) for k, v in params.items()}}
    proc = subprocess.run([sys.executable, str(RENDER), str(template), str(out)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"render-envoy {template} failed: {proc.stderr}"
    return Path(out)


def envoy_validate(config, env=None, cwd=ROOT):
    """Runs `envoy --mode validate -c config`; returns (ok, output)."""
    proc = subprocess.run(
        [require_envoy(), "--mode", "validate", "-c", str(config), "-l", "error"],
        env={**os.environ, "KEYGATE_GATEWAY_TOKEN": "validate-gateway-token", **(env or {})},
        capture_output=True, text=True, cwd=str(cwd), timeout=120,
    )
    return proc.returncode == 0, proc.stdout + proc.stderr


def repo_files(pattern):
    """Files under the repository matching a glob pattern, build/venv dirs excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.match(pattern):
                out.append(path)
    return out

"""docker-compose.yml: resolves with docker-compose (no daemon needed for
`config`), has the structure the deployment relies on, references only files
that exist, keeps secrets out of the file, and its health-check commands work
against the real store and Envoy."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from deploytools import ROOT, STORE_BIN, tool

COMPOSE = ROOT / "docker-compose.yml"
# The fleet (PostgreSQL, two store replicas): an override of COMPOSE.
FLEET = ROOT / "deploy" / "compose" / "fleet.yml"
SECRETS = {"KEYGATE_ADMIN_TOKEN": "compose-admin-token", "KEYGATE_GATEWAY_TOKEN": "compose-gateway-token"}


def raw(path=COMPOSE):
    return yaml.safe_load(path.read_text())


def compose_cli():
    return tool("docker-compose") or shutil.which("docker-compose")


def compose_config(env, profile=None, files=(COMPOSE,)):
    cli = compose_cli()
    if not cli:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; see deploy/README.md)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_") and not k.startswith("COMPOSE_")}
    args = [cli, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    if profile:
        args += ["--profile", profile]
    return subprocess.run(args + ["config"], env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))


def test_docker_compose_config_resolves():
    proc = compose_config(SECRETS, profile="demo")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert {"store", "render", "envoy", "mock-provider", "demo-setup"} <= set(resolved["services"])
    assert resolved["services"]["envoy"]["environment"]["KEYGATE_GATEWAY_TOKEN"] == "compose-gateway-token"
    assert resolved["services"]["store"]["environment"]["KEYGATE_GATEWAY_TOKEN"] == "compose-gateway-token"


@pytest.mark.parametrize("unset", sorted(SECRETS))
def test_secrets_are_required(unset):
    env = {k: v for k, v in SECRETS.items() if k != unset}
    proc = compose_config(env)
    assert proc.returncode != 0, f"docker-compose accepted the file without {unset}"
    assert unset in proc.stderr


@pytest.mark.parametrize("path", [COMPOSE, FLEET], ids=lambda p: p.name)
def test_no_secret_is_baked_in(path):
    text = path.read_text()
    for name in ("KEYGATE_ADMIN_TOKEN", "KEYGATE_GATEWAY_TOKEN", "KEYGATE_MASTER_KEY", "KEYGATE_POSTGRES_PASSWORD"):
        for m in re.finditer(rf"^\s*{name}:\s*(.*)$", text, re.M):
            assert m.group(1).startswith("${" + name + ":?"), f"{name} must come from the environment/.env: {m.group(0)}"


def test_structure():
    c = raw()
    s = c["services"]
    assert set(c["volumes"]) >= {"keygate-data", "envoy-config"}
    # Store: built from the repository's Dockerfile, data on the named volume, reachable in the network.
    assert s["store"]["build"]["dockerfile"] == "Dockerfile"
    assert "keygate-data:/var/lib/keygate" in s["store"]["volumes"]
    assert s["store"]["environment"]["KEYGATE_BIND"] == "0.0.0.0"
    assert s["store"]["environment"]["KEYGATE_DATA_DIR"] == "/var/lib/keygate"
    # Envoy: the official 1.40 image, the same envoy.yaml (rendered by `render`), order by health.
    assert re.fullmatch(r"envoyproxy/envoy:v1\.40(\.\d+|-latest)", s["envoy"]["image"]), s["envoy"]["image"]
    assert s["envoy"]["depends_on"] == {"render": {"condition": "service_completed_successfully"},
                                        "store": {"condition": "service_healthy"}}
    assert s["demo-setup"]["depends_on"]["store"]["condition"] == "service_healthy"
    assert s["demo-setup"]["depends_on"]["mock-provider"]["condition"] == "service_healthy"
    render_cmd = s["render"]["command"]
    assert render_cmd[1:] == ["scripts/render-envoy", "envoy/envoy.yaml", "/rendered/envoy.yaml"], render_cmd
    assert "./envoy/envoy.yaml:/src/envoy/envoy.yaml:ro" in s["render"]["volumes"]
    assert "envoy-config:/etc/keygate/rendered:ro" in s["envoy"]["volumes"]
    assert s["envoy"]["command"][:2] == ["-c", "/etc/keygate/rendered/envoy.yaml"]
    for name in ("store", "envoy", "mock-provider"):
        assert s[name]["healthcheck"]["test"][0] == "CMD", name
    for name in ("mock-provider", "demo-setup"):
        assert s[name]["profiles"] == ["demo"]


@pytest.mark.parametrize("path", [COMPOSE, FLEET], ids=lambda p: p.name)
def test_every_mounted_file_exists(path):
    """Bind mounts name files of the repository; all exist except the built
    module, which `make wasm` produces. Relative paths resolve against the
    project directory (the repository root), the override's too."""
    built = {"./target/wasm32-wasip1/release/keygate_filter.wasm"}
    for name, svc in raw(path)["services"].items():
        for mount in svc.get("volumes", []):
            src = str(mount).split(":")[0]
            if src.startswith("./") and src not in built:
                assert (ROOT / src).exists(), f"{name} mounts {src}, which does not exist"
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists()
    assert (ROOT / "deploy/compose/env.example").exists()


def test_env_example_names_every_required_variable():
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text() + FLEET.read_text()))
    example = (ROOT / "deploy/compose/env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=\s*$", example, re.M), f"{name} missing (or given a value) in env.example"


def healthcheck_script(service):
    """The bash script of a service's CMD health check, `$$` unescaped as compose does."""
    test = raw()["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"], test
    return test[3].replace("$$", "$")


def run_healthcheck(service, env):
    return subprocess.run(["bash", "-c", healthcheck_script(service)], env={**os.environ, **env}, timeout=10).returncode


def test_store_healthcheck_works(tmp_path):
    from harness import Store, free_port
    if not STORE_BIN.exists():
        pytest.fail("the store is not built: run `make store`")
    store = Store(tmp_path / "data").start()
    try:
        assert run_healthcheck("store", {"KEYGATE_API_PORT": str(store.api_port)}) == 0
    finally:
        store.stop()
    assert run_healthcheck("store", {"KEYGATE_API_PORT": str(free_port())}) != 0


def test_envoy_healthcheck_works(tmp_path):
    from harness import WASM, Envoy, Store, free_port
    if not WASM.exists():
        pytest.fail("the filter is not built: run `make wasm`")
    store = Store(tmp_path / "data").start()
    envoy = Envoy(tmp_path / "envoy", store.lookup_port, store.gateway_token, concurrency=1).start()
    try:
        assert run_healthcheck("envoy", {"KEYGATE_ENVOY_ADMIN_PORT": str(envoy.admin_port)}) == 0
    finally:
        envoy.stop()
        store.stop()
    assert run_healthcheck("envoy", {"KEYGATE_ENVOY_ADMIN_PORT": str(free_port())}) != 0


def test_render_passes_every_template_parameter():
    """Each ${NAME} of envoy/envoy.yaml is set or passed through by the render
    service, so a tunable added to the template is settable from .env."""
    template = (ROOT / "envoy" / "envoy.yaml").read_text()
    names = set(re.findall(r"\$\{(KEYGATE_[A-Z0-9_]+)", template))
    env = raw()["services"]["render"]["environment"]
    assert names - set(env) == set(), f"add to the render service's environment: {sorted(names - set(env))}"

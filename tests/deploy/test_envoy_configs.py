"""Every Envoy configuration in the repository passes `envoy --mode validate`
with the real Envoy binary of the test venv.

A configuration is any *.yaml outside target/, .venv/, build/ (...) with a
top-level `static_resources` (envoy/envoy.yaml, bench/..., anything added
later). Templates (`${NAME}` placeholders) are rendered with
scripts/render-envoy, as `make run` and the tests do, with the wasm path pointed
at the built module. envoy/envoy.yaml is also rendered with the docker compose
parameters (docker-compose.yml's `render` service), only the two file paths
that exist inside the containers swapped for local files."""

import re

import pytest
import yaml

from deploytools import ROOT, TEMPLATE, envoy_validate, local_ca_bundle, render, repo_files, require_wasm

PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def is_envoy_config(path):
    text = path.read_text(errors="replace")
    if path == TEMPLATE:
        return True
    if not re.search(r"^static_resources:", text, re.M):
        return False
    return True


def envoy_configs():
    return [p for p in repo_files("*.yaml") if is_envoy_config(p)] + [p for p in repo_files("*.yml") if is_envoy_config(p)]


def local_params():
    """What every template gets: the built module, a gateway token, a local CA bundle."""
    return {
        "KEYGATE_WASM": str(require_wasm()),
        "KEYGATE_GATEWAY_TOKEN": "validate-gateway-token",
        "KEYGATE_CA_BUNDLE": local_ca_bundle(),
    }


# Placeholders without a default (e.g. the benchmark's) get a stand-in chosen
# by their name's suffix: validation only needs a well-typed value.
STAND_INS = [("_PORT", "1"), ("_MS", "1"), ("_BYTES", "1"), ("_HOST", "127.0.0.1"), ("_ADDRESS", "127.0.0.1"),
             ("_TIMEOUT", "1s"), ("", "validate-placeholder")]


def stand_in(name):
    return next(value for suffix, value in STAND_INS if name.endswith(suffix))


def validate_rendered(path, params, tmp_path, label):
    text = path.read_text()
    params = dict(params)
    for m in PLACEHOLDER.finditer(text):
        if m.group(2) is None and m.group(1) not in params:
            params[m.group(1)] = stand_in(m.group(1))
    out = tmp_path / f"{label}.yaml"
    if PLACEHOLDER.search(text):
        render(path, out, params)
    else:
        out.write_text(text)
    ok, output = envoy_validate(out)
    assert ok, f"envoy --mode validate rejected {path.relative_to(ROOT)} ({label}):\n{output[-4000:]}"


def test_the_template_is_found():
    found = envoy_configs()
    assert TEMPLATE in found, "envoy/envoy.yaml must be one of the validated configurations"


@pytest.mark.parametrize("path", envoy_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_envoy_config_validates(path, tmp_path):
    validate_rendered(path, local_params(), tmp_path, "defaults")


def compose_render_params():
    """The `render` service's environment in docker-compose.yml: `${VAR:-}` means
    empty, i.e. the template's default."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["render"]["environment"]
    params = {}
    for key, value in env.items():
        value = "" if value is None else str(value)
        if PLACEHOLDER.fullmatch(value):
            value = PLACEHOLDER.fullmatch(value).group(2) or ""
        if value:
            params[key] = value
    return compose, params


def test_template_validates_with_compose_parameters(tmp_path):
    compose, params = compose_render_params()
    # The in-container paths the compose file uses...
    assert params["KEYGATE_WASM"] == "/etc/keygate/keygate_filter.wasm"
    mounts = compose["services"]["envoy"]["volumes"]
    assert any(str(m).endswith(":" + params["KEYGATE_WASM"] + ":ro") for m in mounts), mounts
    assert params["KEYGATE_STORE_HOST"] == "store"
    assert params["KEYGATE_GATEWAY_ADDRESS"] == "0.0.0.0"
    # ...swapped for local files; every other parameter as compose gives it.
    local = {**params, "KEYGATE_WASM": str(require_wasm()), "KEYGATE_CA_BUNDLE": local_ca_bundle()}
    validate_rendered(TEMPLATE, local, tmp_path, "compose")
    rendered = yaml.safe_load((tmp_path / "compose.yaml").read_text())
    listener = rendered["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("0.0.0.0", 10000)
    store = rendered["static_resources"]["clusters"][0]
    assert store["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] == "store"


def fleet_render_params():
    """compose_render_params() with deploy/compose/fleet.yml's override of the
    `render` service's environment (compose merges environment maps by key)."""
    compose, params = compose_render_params()
    fleet = yaml.safe_load((ROOT / "deploy" / "compose" / "fleet.yml").read_text())
    for key, value in fleet["services"]["render"]["environment"].items():
        value = "" if value is None else str(value)
        if PLACEHOLDER.fullmatch(value):
            value = PLACEHOLDER.fullmatch(value).group(2) or ""
        if value:
            params[key] = value
        else:
            params.pop(key, None)
    return compose, params


def test_template_validates_with_fleet_parameters(tmp_path):
    """The fleet's Envoy: the keygate_store cluster has both replicas as
    endpoints, with the template's health checks and outlier detection."""
    _, params = fleet_render_params()
    assert params["KEYGATE_STORE_ENDPOINTS"] == "store-a:8082,store-b:8082"
    local = {**params, "KEYGATE_WASM": str(require_wasm()), "KEYGATE_CA_BUNDLE": local_ca_bundle()}
    validate_rendered(TEMPLATE, local, tmp_path, "fleet")
    rendered = yaml.safe_load((tmp_path / "fleet.yaml").read_text())
    store = next(c for c in rendered["static_resources"]["clusters"] if c["name"] == "keygate_store")
    assert store["type"] == "STRICT_DNS"
    endpoints = [(e["endpoint"]["address"]["socket_address"]["address"],
                  e["endpoint"]["address"]["socket_address"]["port_value"])
                 for e in store["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert endpoints == [("store-a", 8082), ("store-b", 8082)]
    assert store["health_checks"][0]["http_health_check"]["path"] == "/healthz"
    assert store["outlier_detection"]

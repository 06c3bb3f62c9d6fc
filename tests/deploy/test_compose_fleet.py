"""deploy/compose/fleet.yml, the override of docker-compose.yml for a fleet
(one PostgreSQL, two store replicas, Envoy balancing over both): resolves
with docker-compose together with the base file, needs every secret (no
defaults), gives both replicas the same database, master key and tokens, and
leaves the default deployment (single SQLite store) as it was. The rendered
Envoy config of the fleet is validated in test_envoy_configs.py."""

import re

import pytest
import yaml

from test_compose import COMPOSE, FLEET, SECRETS, compose_config, raw

FLEET_SECRETS = {**SECRETS, "KEYGATE_POSTGRES_PASSWORD": "0123abcd" * 8, "KEYGATE_MASTER_KEY": "ab" * 32}
FILES = (COMPOSE, FLEET)
REPLICAS = ("store", "store-b")


def resolved(profile=None):
    proc = compose_config(FLEET_SECRETS, profile=profile, files=FILES)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_fleet_config_resolves():
    s = resolved()["services"]
    assert {"postgres", "store", "store-b", "render", "envoy"} <= set(s)
    url = f"postgres://keygate:{FLEET_SECRETS['KEYGATE_POSTGRES_PASSWORD']}@postgres:5432/keygate"
    for name in REPLICAS:
        env = s[name]["environment"]
        assert s[name]["image"] == s["store"]["image"] == "keygate:local", name
        assert env["KEYGATE_DATABASE_URL"] == url, name
        for secret in ("KEYGATE_MASTER_KEY", "KEYGATE_ADMIN_TOKEN", "KEYGATE_GATEWAY_TOKEN"):
            assert env[secret] == FLEET_SECRETS[secret], (name, secret)
        assert env["KEYGATE_BIND"] == "0.0.0.0" and env["KEYGATE_LOOKUP_PORT"] == "8082", name
        assert s[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
        assert s[name]["healthcheck"]["test"] == s["store"]["healthcheck"]["test"], name
    # Replica A is `store`, known in the network as store-a too.
    assert "store-a" in s["store"]["networks"]["default"]["aliases"]
    # Only replica A publishes the management API (on the host's loopback).
    assert "ports" not in s["store-b"]
    assert s["render"]["environment"]["KEYGATE_STORE_ENDPOINTS"] == "store-a:8082,store-b:8082"
    assert s["envoy"]["depends_on"] == {"render": {"condition": "service_completed_successfully"},
                                        "store": {"condition": "service_healthy"},
                                        "store-b": {"condition": "service_healthy"}}
    assert s["envoy"]["environment"]["KEYGATE_GATEWAY_TOKEN"] == FLEET_SECRETS["KEYGATE_GATEWAY_TOKEN"]
    pg = s["postgres"]
    assert pg["environment"]["POSTGRES_PASSWORD"] == FLEET_SECRETS["KEYGATE_POSTGRES_PASSWORD"]
    assert pg["environment"]["POSTGRES_USER"] == "keygate" and pg["environment"]["POSTGRES_DB"] == "keygate"
    assert "ports" not in pg, "PostgreSQL stays inside the compose network"


def test_fleet_with_the_demo_profile():
    s = resolved(profile="demo")["services"]
    assert {"postgres", "store", "store-b", "mock-provider", "demo-setup"} <= set(s)
    assert s["demo-setup"]["environment"]["KEYGATE_API_URL"] == "http://store:8081"


@pytest.mark.parametrize("unset", sorted(FLEET_SECRETS))
def test_fleet_secrets_are_required(unset):
    env = {k: v for k, v in FLEET_SECRETS.items() if k != unset}
    proc = compose_config(env, files=FILES)
    assert proc.returncode != 0, f"docker-compose accepted the fleet without {unset}"
    assert unset in proc.stderr


def test_fleet_secrets_must_not_be_empty():
    proc = compose_config({**FLEET_SECRETS, "KEYGATE_MASTER_KEY": ""}, files=FILES)
    assert proc.returncode != 0 and "KEYGATE_MASTER_KEY" in proc.stderr


def test_postgres_service():
    pg = raw(FLEET)["services"]["postgres"]
    assert re.fullmatch(r"postgres:16\.\d+(-[a-z]+)?", pg["image"]), f"pin the PostgreSQL 16 image: {pg['image']}"
    assert "keygate-postgres:/var/lib/postgresql/data" in pg["volumes"]
    assert "keygate-postgres" in raw(FLEET)["volumes"]
    test = pg["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"], test
    # Over TCP: the image's init-time server listens on the Unix socket only.
    assert test[test.index("-h") + 1] == "127.0.0.1"
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${KEYGATE_POSTGRES_PASSWORD:?")


def test_the_replicas_share_one_definition():
    f = raw(FLEET)["services"]
    assert f["store"]["environment"] is f["store-b"]["environment"], "one anchor for both replicas' settings"
    assert f["store-b"]["build"] == raw()["services"]["store"]["build"]
    assert f["store-b"]["image"] == raw()["services"]["store"]["image"]


def test_default_deployment_is_unchanged():
    """Without the override: one SQLite store on its volume, no PostgreSQL,
    Envoy on the single store (the template's default endpoint)."""
    proc = compose_config(SECRETS)
    assert proc.returncode == 0, proc.stderr
    s = yaml.safe_load(proc.stdout)["services"]
    assert "postgres" not in s and "store-b" not in s
    env = s["store"]["environment"]
    assert "KEYGATE_DATABASE_URL" not in env and "KEYGATE_MASTER_KEY" not in env
    assert env["KEYGATE_DATA_DIR"] == "/var/lib/keygate"
    assert not s["render"]["environment"].get("KEYGATE_STORE_ENDPOINTS")
    assert s["render"]["environment"]["KEYGATE_STORE_HOST"] == "store"
    assert set(s["envoy"]["depends_on"]) == {"render", "store"}
    # The fleet's secrets are not needed by the default deployment.
    assert "KEYGATE_POSTGRES_PASSWORD" not in COMPOSE.read_text()

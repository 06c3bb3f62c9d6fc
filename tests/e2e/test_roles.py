"""Management API keys with roles and the audit log, against the real store
process: an operator key and a viewer key used through the CLI
(`KEYGATE_API_KEY`) and over HTTP, refused past their roles; rotation and
deletion revoking at once; the lookup listener refusing management keys; the
audit log naming who did what, with no secret in it."""

import json
import os
import subprocess
import uuid

import pytest

from conftest import STACKS
from harness import CANARIES, STORE_BIN, Store, http


@pytest.fixture
def own_store(tmp_path):
    s = Store(tmp_path / "data", admin_token="admin-roles-" + uuid.uuid4().hex).start()
    STACKS.append(s)
    yield s
    s.stop()


def as_key(store, token, method, path, body=None):
    return http(method, f"{store.api}{path}", body, {"authorization": f"Bearer {token}"})


def cli(store, token, *args, stdin=None):
    """Runs `keygate <args>` as the management key `token`: (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update({"KEYGATE_API_URL": store.api, "KEYGATE_API_KEY": token, "KEYGATE_DATA_DIR": str(store.data_dir)})
    p = subprocess.run([str(STORE_BIN), *args], env=env, input=stdin, capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def test_operator_and_viewer_keys_through_the_cli_and_http(own_store):
    store = own_store
    op = store.ok("POST", "/api-keys", {"name": "deployer", "role": "operator"})
    viewer = store.ok("POST", "/api-keys", {"name": "dashboard", "role": "viewer"})
    op_token, viewer_token = op["token"], viewer["token"]
    assert op_token.startswith("kgm_") and len(op_token) == 52
    assert op["tokenPrefix"] == op_token[:12]

    # Who each one is.
    assert as_key(store, op_token, "GET", "/whoami")[1] == {"actor": op["id"], "name": "deployer", "role": "operator"}
    assert as_key(store, viewer_token, "GET", "/whoami")[1]["role"] == "viewer"
    assert store.ok("GET", "/whoami") == {"actor": "bootstrap", "name": "bootstrap admin token", "role": "admin"}

    # The operator manages access keys through the CLI...
    code, out, err = cli(store, op_token, "access-keys", "create", "--name", "ci-job")
    assert code == 0, err
    ak = json.loads(out)
    CANARIES.add(ak["token"])
    code, out, err = cli(store, op_token, "access-keys", "update", ak["id"], "--disable")
    assert code == 0 and json.loads(out)["disabled"] is True, err
    # ...but not provider keys, prices or management keys.
    code, _, err = cli(store, op_token, "provider-keys", "create", "--provider", "openai", "--name", "x",
                       stdin="sk-should-never-be-stored-0123456789\n")
    assert code == 1 and "403 insufficient_role" in err and "admin" in err, err
    status, doc, _ = as_key(store, op_token, "PUT", "/prices/openai/gpt-x", {"inputPerMillionUsd": 1, "outputPerMillionUsd": 1})
    assert status == 403 and doc["errorCode"] == "insufficient_role"
    assert doc["details"] == {"required": "admin", "role": "operator"}
    status, doc, _ = as_key(store, op_token, "POST", "/api-keys", {"name": "escalate", "role": "admin"})
    assert status == 403 and doc["details"]["required"] == "admin"

    # The viewer reads everything and changes nothing.
    code, out, err = cli(store, viewer_token, "access-keys", "list")
    assert code == 0 and json.loads(out)["accessKeys"][0]["id"] == ak["id"], err
    code, _, err = cli(store, viewer_token, "access-keys", "delete", ak["id"])
    assert code == 1 and "insufficient_role" in err, err
    status, doc, _ = as_key(store, viewer_token, "PATCH", f"/access-keys/{ak['id']}", {"disabled": False})
    assert status == 403 and doc["details"] == {"required": "operator", "role": "viewer"}
    for path in ["/access-keys", "/provider-keys", "/providers", "/prices", "/credits", "/usage", "/api-keys", "/audit-log"]:
        status, doc, _ = as_key(store, viewer_token, "GET", path)
        assert status == 200, (path, doc)
        assert op_token not in json.dumps(doc) and viewer_token not in json.dumps(doc)

    # Management keys are no credential on the lookup listener.
    for token in (op_token, viewer_token):
        status, _, _ = http("GET", f"{store.lookup}/v1/changes?since=0", headers={"authorization": f"Bearer {token}"})
        assert status == 401

    # The audit log says who did what, through what.
    pk_value = "sk-roles-e2e-provider-" + uuid.uuid4().hex
    pk = store.ok("POST", "/provider-keys", {"providerId": "openai", "name": "main", "value": pk_value, "managed": True})
    code, out, err = cli(store, viewer_token, "audit-log", "--actor", op["id"])
    assert code == 0, err
    mine = json.loads(out)["auditLog"]
    assert [e["action"] for e in mine] == ["access_key.disable", "access_key.create"]
    assert all(e["via"] == "api" and e["resourceId"] == ak["id"] and e["resourceType"] == "access_key" for e in mine)
    assert mine[0]["changes"] == {"disabled": True}
    code, out, err = cli(store, viewer_token, "audit-log", "--resource", pk["id"])
    (entry,) = json.loads(out)["auditLog"]
    assert entry["action"] == "provider_key.create" and entry["actor"] == "bootstrap"
    assert entry["changes"]["value"] == "[redacted]"
    everything = as_key(store, viewer_token, "GET", "/audit-log?limit=100")[1]
    text = json.dumps(everything)
    for secret in (pk_value, op_token, viewer_token, ak["token"], store.admin_token):
        assert secret not in text
    assert [e["action"] for e in everything["auditLog"]][-2:] == ["api_key.create", "api_key.create"]

    # Rotation and deletion revoke at once.
    rotated = store.ok("POST", f"/api-keys/{viewer['id']}/rotate")
    assert as_key(store, viewer_token, "GET", "/whoami")[0] == 401
    assert as_key(store, rotated["token"], "GET", "/whoami")[0] == 200
    store.ok("DELETE", f"/api-keys/{op['id']}")
    code, _, err = cli(store, op_token, "access-keys", "list")
    assert code == 1 and "unauthorized" in err, err
    keys = store.ok("GET", "/api-keys")["apiKeys"]
    assert [k["id"] for k in keys] == [viewer["id"]]
    assert keys[0]["lastUsedAt"] is not None

    # The store's log holds no management token.
    log = store.log_path.read_text(errors="replace")
    for secret in (op_token, viewer_token, rotated["token"]):
        assert secret not in log

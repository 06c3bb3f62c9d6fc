"""The canary sweep, run after every other end-to-end test (conftest orders
it last): no access token, provider-key value or alert-webhook secret that
any test created appears in Envoy's log or admin endpoints, the store's
log, its data directory, or any response a test received, but the one
response that hands it out (create and rotate; a webhook's create)."""

import json

import pytest

import harness
from conftest import STACKS

ADMIN_PATHS = ["/config_dump", "/config_dump?include_eds", "/stats", "/stats/prometheus", "/clusters", "/listeners",
               "/server_info", "/runtime", "/memory", "/certs", "/stats?format=json"]


def places():
    """(where, text) of everything that must carry no secret."""
    for proc in STACKS:
        log = getattr(proc, "log_path", None)
        if log and log.exists():
            yield f"log {log.name}", log.read_bytes()
        data_dir = getattr(proc, "data_dir", None)
        if data_dir and data_dir.exists():
            for f in sorted(data_dir.rglob("*")):
                if f.is_file():
                    yield f"data {f.name}", f.read_bytes()
        admin_port = getattr(proc, "admin_port", None)
        if admin_port and proc.proc and proc.proc.poll() is None:
            for path in ADMIN_PATHS:
                status, doc, _ = harness.http("GET", f"http://127.0.0.1:{admin_port}{path}")
                yield f"envoy admin {path}", (doc if isinstance(doc, str) else json.dumps(doc)).encode()


def hands_out(url, body, secret):
    """The create/rotate answer of the management API shows the token once
    (and the create answer of an alert webhook its secret)."""
    try:
        doc = json.loads(body)
        return secret in (doc.get("token"), doc.get("secret")) and not url.startswith("raw:")
    except (ValueError, AttributeError):
        return False


@pytest.mark.canary
def test_no_secret_anywhere(gateway, store):
    secrets = sorted(s for s in harness.CANARIES if len(s) >= 8)
    assert len(secrets) > 20, "the sweep looks for the tokens and provider keys the tests created"
    assert any(s.startswith("kg-") for s in secrets) and any(not s.startswith("kg-") for s in secrets)
    found = []
    swept = 0
    for where, text in places():
        swept += 1
        found += [(where, s[:12]) for s in secrets if s.encode() in text]
    for url, status, headers, body in harness.RESPONSES:
        swept += 1
        for s in secrets:
            if s in headers or (s in body and not hands_out(url, body, s)):
                found.append((f"response {status} from {url}", s[:12]))
    assert swept > 100
    assert found == [], found

"""A key checks itself: `GET /keygate/v1/key`, authenticated by the access
key alone, answers what the gateway enforces for it (allow-lists, limits and
what remains of them, budgets, expiry) and nothing secret; nothing reaches a
provider."""

import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import openai
import pytest

from harness import http

SELF = "/keygate/v1/key"


def check(gw, headers):
    return http("GET", gw.url + SELF, None, headers)


def test_a_key_describes_itself_as_the_gateway_enforces_it(gateway, store, provider_keys, mocks):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"self-{uuid.uuid4().hex[:8]}",
        "access": {"models": {"allow": ["openai/gpt-4o"]}, "clientIps": {"allow": ["127.0.0.0/8"]}},
        "rateLimits": {"requestsPerMinute": 10},
        "requestLimits": {"maxOutputTokens": 500},
        "budget": {"tokens": 100000, "window": "daily"},
    })
    created = store.ok("POST", "/access-keys", {"name": "self-checker", "accessKeyConfigurationId": cfg["id"],
                                                "expiresAt": "2031-01-01T00:00:00Z"})
    token = created["token"]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    mocks["openai"].reset()

    status, doc, headers = check(gateway, {"authorization": f"Bearer {token}"})
    assert status == 200, doc
    assert headers["cache-control"] == "no-store"
    assert (doc["id"], doc["name"], doc["keyRedacted"]) == (created["id"], "self-checker", created["keyRedacted"])
    assert doc["configuration"] == {"id": cfg["id"], "name": cfg["name"]}
    assert doc["expiresAt"].startswith("2031-01-01")
    assert doc["allowed"]["models"] == ["openai/gpt-4o"] and doc["allowed"]["clientIps"] == ["127.0.0.0/8"]
    assert "openai" in doc["allowed"]["providers"] and doc["allowed"]["endpoints"] == []
    assert doc["requestLimits"] == {"maxOutputTokens": 500}
    # The rate limit as this Envoy counts it: the same figure its answers carry.
    rl = doc["rateLimits"]
    assert (rl["requestsPerWindow"], rl["remainingRequests"]) == (10, 7)
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == rl["remainingRequests"]
    # The budget as the store holds it.
    (budget,) = doc["budgets"]
    assert budget["scope"] == "configuration" and budget["limit"]["tokens"] == 100000
    assert budget["remainingTokens"] <= 100000
    # Nothing secret: no token, no provider key value or id.
    text = str(doc)
    assert token not in text and provider_keys["openai"] not in text and "sk-" not in text
    # x-api-key works too, and nothing went upstream.
    assert check(gateway, {"x-api-key": token})[1]["id"] == created["id"]
    assert mocks["openai"].received() == [] and mocks["anthropic"].received() == []


def test_only_a_usable_key_checks_itself(gateway, store, mocks):
    created = store.ok("POST", "/access-keys", {"name": "gone"})
    token = created["token"]
    assert check(gateway, {"authorization": f"Bearer {token}"})[0] == 200
    assert check(gateway, {})[1]["error"]["code"] == "missing_access_key"
    status, doc, _ = http("POST", gateway.url + SELF, {}, {"authorization": f"Bearer {token}"})
    assert status == 405
    store.ok("DELETE", f"/access-keys/{created['id']}")
    # Revoked: refused once the change feed says so, in the client's dialect.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, doc, _ = check(gateway, {"x-api-key": token, "anthropic-version": "2023-06-01"})
        if status == 401:
            break
        time.sleep(0.1)
    assert status == 401 and doc["type"] == "error" and doc["error"]["code"] == "invalid_access_key"
    elsewhere = store.ok("POST", "/access-key-configurations", {
        "name": f"self-{uuid.uuid4().hex[:8]}", "access": {"clientIps": {"allow": ["10.0.0.0/8"]}}})
    far = store.ok("POST", "/access-keys", {"name": "far", "accessKeyConfigurationId": elsewhere["id"]})["token"]
    assert check(gateway, {"authorization": f"Bearer {far}"})[1]["error"]["code"] == "ip_not_allowed"
    assert mocks["openai"].received() == []


def test_a_weekly_budget_in_a_time_zone_refuses_at_its_bound_and_says_when_it_resets(gateway, store, mocks):
    """Budget windows users can reason about: a week in Berlin, refused at its
    bound, and the reset (next Monday 00:00 in Berlin) the same in the
    management API and in the key's self-check."""
    created = store.ok("POST", "/access-keys", {
        "name": "weekly", "budget": {"tokens": 70, "window": "weekly", "timeZone": "Europe/Berlin"}})
    token = created["token"]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="gpt-4o", max_tokens=16, messages=hi).choices
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o", max_tokens=16, messages=hi)
    assert e.value.status_code == 402 and e.value.body["code"] == "insufficient_credits"
    berlin = datetime.now(ZoneInfo("Europe/Berlin"))
    monday = (berlin - timedelta(days=berlin.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    resets = (monday + timedelta(days=7)).replace(tzinfo=ZoneInfo("Europe/Berlin"))
    usage = store.ok("GET", f"/access-keys/{created['id']}")["budgetUsage"]
    assert datetime.fromisoformat(usage["resetsAt"].replace("Z", "+00:00")) == resets
    assert datetime.fromisoformat(usage["windowStart"].replace("Z", "+00:00")) == monday
    (budget,) = check(gateway, {"authorization": f"Bearer {token}"})[1]["budgets"]
    assert (budget["scope"], budget["usage"]["resetsAt"]) == ("accessKey", usage["resetsAt"])
    assert budget["limit"] == {"tokens": 70, "window": "weekly", "timeZone": "Europe/Berlin"}
    assert len(mocks["openai"].received()) == 1

"""Usage per key, budgets that cannot be overrun, per-key rate limits, metrics."""

import http.client as httpclient
import json
import threading
import time
import uuid

import pytest

from conftest import start_gateway
from harness import http, wait_until

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def new_key(store, **fields):
    doc = store.ok("POST", "/access-keys", {"name": f"use-{uuid.uuid4().hex[:8]}", **fields})
    return doc["id"], doc["token"]


def usage_of(store, key_id, expect, timeout=5):
    """The key's usage records, once `expect` of them have been flushed."""
    found = []

    def ready():
        nonlocal found
        found = store.ok("GET", f"/usage?accessKeyId={key_id}")["usage"]
        return len(found) >= expect

    wait_until(ready, timeout=timeout, what=f"{expect} usage records")
    return sorted(found, key=lambda r: (r["requestId"], r["attempt"]))


def raw_post(gateway_or_base, path, body, headers):
    """Status, headers and the exact bytes the client receives."""
    host, port = "127.0.0.1", int(gateway_or_base.rsplit(":", 1)[1])
    conn = httpclient.HTTPConnection(host, port, timeout=10)
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json", **headers})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


@pytest.mark.parametrize("dialect,stream", [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)])
def test_token_counting_plain_and_streamed(gateway, store, mocks, dialect, stream):
    key_id, token = new_key(store)
    if dialect == "openai":
        path, body, headers = CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}, {"authorization": f"Bearer {token}"}
        if stream:
            body["stream_options"] = {"include_usage": True}
        want = (11, 7)
    else:
        path, body, headers = MESSAGES, {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], "stream": stream}, {"x-api-key": token}
        want = (12, 5)
    status, _, through_gateway = raw_post(gateway.url, path, body, headers)
    assert status == 200
    # The client's bytes are exactly what the provider sent.
    mock = mocks[dialect]
    direct_status, _, direct = raw_post(mock.base, "/v1" + path[3:], body, {"authorization": "Bearer direct", "x-api-key": "direct"})
    assert direct_status == 200
    assert through_gateway == direct
    [record] = usage_of(store, key_id, 1)
    assert (record["inputTokens"], record["outputTokens"]) == want
    assert record["streaming"] is stream
    assert record["final"] is True and record["status"] == 200
    assert record["provider"] == dialect
    assert record["costUsd"] > 0


def test_usage_records_every_failover_attempt_and_last_used_moves(gateway, store, mocks):
    values = [f"sk-use-{uuid.uuid4().hex}" for _ in range(2)]
    pks = [store.ok("POST", "/provider-keys", {"providerId": "openai", "name": "u", "value": v})["id"] for v in values]
    cfg = store.ok("POST", "/access-key-configurations", {"name": f"use-{uuid.uuid4().hex[:8]}", "router": {"rules": [
        {"provider": "openai", "steps": [{"type": "user", "keys": [{"id": pk} for pk in pks]}]}]}})["id"]
    key_id, token = new_key(store, accessKeyConfigurationId=cfg)
    assert store.ok("GET", f"/access-keys/{key_id}")["lastUsed"] is None
    mocks["openai"].script(values[0], (429, {"retry-after": "1"}, {}))
    status, _, _ = http("POST", gateway.url + CHAT, {"model": "gpt-4o", "messages": []}, {"authorization": f"Bearer {token}"})
    assert status == 200
    first, second = usage_of(store, key_id, 2)
    assert (first["attempt"], first["status"], first["final"], first["providerKeyId"]) == (1, 429, False, pks[0])
    assert (second["attempt"], second["status"], second["final"], second["providerKeyId"]) == (2, 200, True, pks[1])
    assert first["inputTokens"] == 0 and second["inputTokens"] == 11
    assert store.ok("GET", f"/access-keys/{key_id}")["lastUsed"] is not None
    assert store.ok("GET", f"/provider-keys/{pks[1]}")["lastUsed"] is not None
    summary = store.ok("GET", f"/usage/summary?groupBy=key&accessKeyId={key_id}")
    assert summary["rows"][0]["requests"] == 1 and summary["rows"][0]["attempts"] == 2


def test_budget_exhaustion_refuses_with_402_before_the_provider(gateway, store, mocks):
    key_id, token = new_key(store, budget={"tokens": 100})
    body = {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    statuses = []
    for _ in range(30):
        status, doc, _ = http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {token}"})
        statuses.append(status)
        if status == 402:
            assert doc["error"]["code"] == "insufficient_credits"
            break
        time.sleep(1.2)  # let the usage flush settle the reservation
    assert statuses[-1] == 402 and statuses[:-1] and set(statuses[:-1]) == {200}
    served = len(mocks["openai"].received())
    # A bigger estimate than what is left: refused in the Anthropic dialect too.
    status, doc, _ = http("POST", gateway.url + MESSAGES, {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": []},
                          {"x-api-key": token})
    assert status == 402 and doc["type"] == "error" and doc["error"]["type"] == "billing_error"
    assert len(mocks["openai"].received()) == served and mocks["anthropic"].received() == []
    spent = store.ok("GET", f"/access-keys/{key_id}")["budgetUsage"]["tokens"]
    assert spent <= 100


def test_concurrent_requests_do_not_overrun_a_budget(gateway, store, mocks):
    # Each request reserves ~66 tokens (body/2 + max_tokens) and uses 18: with a
    # 300-token budget at most 4 can be in flight, and nothing overruns.
    key_id, token = new_key(store, budget={"tokens": 300})
    body = {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "x" * 40}]}
    results = []
    barrier = threading.Barrier(20)

    def one():
        barrier.wait()
        results.append(http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {token}"})[0])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = results.count(200)
    assert admitted >= 1 and results.count(402) == 20 - admitted
    assert len(mocks["openai"].received()) == admitted
    records = usage_of(store, key_id, admitted)
    used = sum(r["inputTokens"] + r["outputTokens"] for r in records)
    print(f"\n20 concurrent requests against a 300-token budget: {admitted} admitted, {used} tokens used")
    assert used <= 300


def test_rate_limit_per_key(tmp_path, store, mocks):
    gw = start_gateway(tmp_path, store, KEYGATE_RATE_LIMIT_WINDOW_MS=4000)
    try:
        limit = 5
        cfg = store.ok("POST", "/access-key-configurations", {"name": f"rl-{uuid.uuid4().hex[:8]}",
                                                               "rateLimits": {"requestsPerMinute": limit}})["id"]
        _, token = new_key(store, accessKeyConfigurationId=cfg)
        # Start at the beginning of a window, so the whole burst falls in one.
        time.sleep(4 - (time.time() % 4) + 0.05)
        results = []
        barrier = threading.Barrier(5 * limit)

        def one():
            barrier.wait()
            results.append(http("POST", gw.url + CHAT, {"model": "gpt-4o", "messages": []}, {"authorization": f"Bearer {token}"}))

        threads = [threading.Thread(target=one) for _ in range(5 * limit)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 429]
        statuses = sorted((r[0], (r[1].get("error") or {}).get("code") if isinstance(r[1], dict) else None) for r in results)
        assert len(ok) == limit, f"exactly L admitted within one Envoy (both workers): {statuses}"
        assert len(refused) == 4 * limit
        for status, doc, headers in refused:
            assert doc["error"]["code"] == "rate_limit_exceeded"
            assert int(headers["retry-after"]) >= 1
            assert headers["x-ratelimit-limit-requests"] == str(limit)
            assert headers["x-ratelimit-remaining-requests"] == "0"
        assert all(r[2]["x-ratelimit-limit-requests"] == str(limit) for r in ok)
        assert len(mocks["openai"].received()) == limit
        wait_until(lambda: http("POST", gw.url + CHAT, {"model": "gpt-4o", "messages": []},
                                {"authorization": f"Bearer {token}"})[0] == 200, timeout=6, what="the next window")
    finally:
        gw.stop()


def test_metrics(gateway, store, mocks):
    _, token = new_key(store)
    assert http("POST", gateway.url + CHAT, {"model": "gpt-4o", "messages": []}, {"authorization": f"Bearer {token}"})[0] == 200
    http("POST", gateway.url + CHAT, {"model": "gpt-4o", "messages": []}, {"authorization": "Bearer nope"})
    time.sleep(0.3)  # workers hand their counts to Envoy every 20 ms (and usage every second)
    status, text, _ = http("GET", f"http://127.0.0.1:{gateway.admin_port}/stats/prometheus")
    assert status == 200
    for name in ["keygate_requests_allowed", "keygate_requests_denied", "keygate_denied_malformed_access_key",
                 "keygate_cache_hits", "keygate_store_lookups", "keygate_tokens_input", "keygate_requests_provider_openai"]:
        assert name in text, name
    assert token not in text and "sk-openai-managed" not in text
    status, store_metrics, _ = http("GET", f"{store.api}/metrics")
    assert status == 200 and "keygate_store_lookups_total" in store_metrics
    assert token not in store_metrics

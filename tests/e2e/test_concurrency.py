"""Concurrency caps (`requestLimits.maxConcurrentRequests`, or an access
key's own `maxConcurrentRequests` in its place): over the cap a request gets
429 `concurrency_limit_exceeded` at once; a finished request, and one whose
client went away, frees its slot. The cap holds per Envoy, across its
workers."""

import threading
import time
import uuid

import openai
import pytest

from test_failover import user_key, user_step

HI = [{"role": "user", "content": "hi"}]
SLOW = (200, {}, {"id": "x", "object": "chat.completion", "choices": []})


def capped_key(store, cap, pk, key_cap=None):
    """A key under a configuration capped at `cap` (None: no requestLimits),
    with a cap of its own when `key_cap` is given."""
    cfg = {"name": f"cc-{uuid.uuid4().hex[:8]}", "router": {"rules": [{"provider": "openai", "steps": [user_step(pk)]}]}}
    if cap is not None:
        cfg["requestLimits"] = {"maxConcurrentRequests": cap}
    cfg_id = store.ok("POST", "/access-key-configurations", cfg)["id"]
    key = {"name": "cc", "accessKeyConfigurationId": cfg_id}
    if key_cap is not None:
        key["maxConcurrentRequests"] = key_cap
    return store.ok("POST", "/access-keys", key)["token"]


def client(gw, token, timeout=10.0):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=timeout)


def test_over_the_cap_is_refused_at_once_and_a_finished_request_frees_its_slot(gateway, store, mocks):
    a, va = user_key(store)
    token = capped_key(store, 2, a)
    mocks["openai"].script(va, SLOW + ({"delay": 1.5},), SLOW + ({"delay": 1.5},))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # both in flight, on either worker
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as e:
        client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.body["code"] == "concurrency_limit_exceeded"
    assert time.monotonic() - started < 0.5, "refused at once"
    assert e.value.response.headers["retry-after"] == "1"
    for t in threads:
        t.join()
    assert len(results) == 2
    assert client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI).choices
    assert len(mocks["openai"].received()) == 3, "the refused request went nowhere"


def test_a_client_that_goes_away_frees_its_slot(gateway, store, mocks):
    a, va = user_key(store)
    token = capped_key(store, 1, a)
    mocks["openai"].script(va, SLOW + ({"delay": 3},))
    with pytest.raises(openai.APITimeoutError):
        client(gateway, token, timeout=0.5).chat.completions.create(model="gpt-4o", messages=HI)
    # The provider is still working on it; the gateway let the slot go with
    # the client.
    deadline = time.monotonic() + 2
    while True:
        try:
            assert client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI) is not None
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the slot was never freed"
            time.sleep(0.05)
    assert time.monotonic() < deadline


@pytest.mark.parametrize("config_cap", [5, None], ids=["config-cap-5", "config-without-limits"])
def test_a_keys_own_cap_replaces_its_configurations(gateway, store, mocks, config_cap):
    a, va = user_key(store)
    token = capped_key(store, config_cap, a, key_cap=1)
    mocks["openai"].script(va, SLOW + ({"delay": 1.5},))
    results = []
    first = threading.Thread(target=lambda: results.append(
        client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI)))
    first.start()
    time.sleep(0.5)  # in flight
    with pytest.raises(openai.RateLimitError) as e:
        client(gateway, token).chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.body["code"] == "concurrency_limit_exceeded"
    assert "at most 1 requests" in e.value.body["message"]
    first.join()
    assert len(results) == 1 and results[0].id == "x", "the first request still succeeds"
    assert len(mocks["openai"].received()) == 1, "the refused request went nowhere"

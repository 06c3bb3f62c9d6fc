"""Concurrency caps (`requestLimits.maxConcurrentRequests`): over the cap a
request gets 429 `concurrency_limit_exceeded` at once; a finished request,
and one whose client went away, frees its slot. The cap holds per Envoy,
across its workers."""

import threading
import time
import uuid

import openai
import pytest

from test_failover import user_key, user_step

HI = [{"role": "user", "content": "hi"}]
SLOW = (200, {}, {"id": "x", "object": "chat.completion", "choices": []})


def capped_key(store, cap, pk):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"cc-{uuid.uuid4().hex[:8]}", "requestLimits": {"maxConcurrentRequests": cap},
        "router": {"rules": [{"provider": "openai", "steps": [user_step(pk)]}]}})["id"]
    return store.ok("POST", "/access-keys", {"name": "cc", "accessKeyConfigurationId": cfg})["token"]


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


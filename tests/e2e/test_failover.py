"""Failover across provider keys, carried out by Envoy's retry policy."""

import time
import uuid

import openai
import pytest

from conftest import start_gateway
from harness import http

CHAT = "/v1/chat/completions"


def user_key(store, provider="openai"):
    value = f"sk-{provider}-{uuid.uuid4().hex}"
    pk = store.ok("POST", "/provider-keys", {"providerId": provider, "name": "failover", "value": value})["id"]
    return pk, value


def key_with_steps(store, steps, provider="openai"):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"fo-{uuid.uuid4().hex[:8]}", "router": {"rules": [{"provider": provider, "steps": steps}]}})["id"]
    return store.ok("POST", "/access-keys", {"name": "fo", "accessKeyConfigurationId": cfg})["token"]


def user_step(*pks):
    return {"type": "user", "keySelectionStrategy": "ordered", "keys": [{"id": pk} for pk in pks]}


def chat(gateway, token, **body):
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **body}
    return http("POST", gateway.url + CHAT, payload, {"authorization": f"Bearer {token}"})


def credentials_seen(mock):
    return [r["headers"].get("authorization", "").removeprefix("Bearer ") for r in mock.received()]


def test_429_then_401_then_success(gateway, store, mocks):
    (a, va), (b, vb), (c, vc) = user_key(store), user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b, c)])
    mocks["openai"].script(va, (429, {"retry-after": "30"}, {"error": {"message": "rate limited"}}))
    mocks["openai"].script(vb, (401, {}, {"error": {"message": "invalid key"}}))
    status, doc, headers = chat(gateway, token)
    assert status == 200, doc
    assert credentials_seen(mocks["openai"]) == [va, vb, vc], "A, then B, then C, each once"
    for req, own in zip(mocks["openai"].received(), [va, vb, vc]):
        others = {va, vb, vc} - {own}
        assert not any(o in str(req["headers"]) for o in others), "each attempt carries only its own credential"
        assert token not in str(req)
    assert headers["x-keygate-attempts"] == "3"
    assert headers["x-keygate-provider-key"] == c


def test_every_key_failing(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (500, {}, {"error": {"message": "boom"}}))
    mocks["openai"].script(vb, (502, {}, {"error": {"message": "bad gateway"}}))
    status, doc, headers = chat(gateway, token)
    assert status == 502, doc
    assert doc["error"]["code"] == "all_provider_keys_failed"
    msg = doc["error"]["message"]
    assert f"{a}: 500" in msg and f"{b}: 502" in msg
    assert va not in msg and vb not in msg
    assert headers["x-keygate-attempts"] == "2"
    assert credentials_seen(mocks["openai"]) == [va, vb]


def test_every_key_failing_anthropic_dialect(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store, "anthropic"), user_key(store, "anthropic")
    token = key_with_steps(store, [user_step(a, b)], provider="anthropic")
    mocks["anthropic"].script(va, (529, {}, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}))
    mocks["anthropic"].script(vb, (529, {}, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}))
    status, doc, _ = http("POST", gateway.url + "/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []},
                          {"x-api-key": token})
    assert status == 529, doc
    assert doc["type"] == "error" and a in doc["error"]["message"] and b in doc["error"]["message"]
    assert [r["headers"]["x-api-key"] for r in mocks["anthropic"].received()] == [va, vb]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_are_not_retried(gateway, store, mocks, status):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (status, {}, {"error": {"message": "your fault", "type": "invalid_request_error"}}))
    got, doc, headers = chat(gateway, token)
    assert got == status
    assert doc == {"error": {"message": "your fault", "type": "invalid_request_error"}}, "passed back as is"
    assert credentials_seen(mocks["openai"]) == [va]
    assert headers["x-keygate-attempts"] == "1"


def test_cooldown_skips_a_rate_limited_key_until_retry_after(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (429, {"retry-after": "2"}, {"error": {"message": "slow down"}}))
    assert chat(gateway, token)[0] == 200
    assert credentials_seen(mocks["openai"]) == [va, vb]
    mocks["openai"].reset()
    for _ in range(6):  # through both workers: the cooldown is process-wide
        status, _, headers = chat(gateway, token)
        assert status == 200 and headers["x-keygate-attempts"] == "1"
    assert set(credentials_seen(mocks["openai"])) == {vb}
    time.sleep(2.2)
    mocks["openai"].reset()
    assert chat(gateway, token)[0] == 200
    assert credentials_seen(mocks["openai"]) == [va], "A is used again after its Retry-After"


def test_all_keys_cooling_still_tries_the_first_to_recover(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (429, {"retry-after": "60"}, {}))
    mocks["openai"].script(vb, (429, {"retry-after": "20"}, {}))
    assert chat(gateway, token)[0] == 429
    mocks["openai"].reset()
    status, doc, _ = chat(gateway, token)
    assert status == 200, doc
    assert credentials_seen(mocks["openai"]) == [vb], "B recovers first, so it goes first"


def test_multi_step_rules(gateway, store, mocks, provider_keys):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a), user_step(b)])
    mocks["openai"].script(va, (503, {}, {}))
    status, _, headers = chat(gateway, token)
    assert status == 200 and headers["x-keygate-provider-key"] == b
    assert credentials_seen(mocks["openai"]) == [va, vb]

    mocks["openai"].reset()
    token = key_with_steps(store, [{"type": "managed"}, user_step(a)])
    managed_value = None
    status, _, headers = chat(gateway, token)
    assert status == 200 and headers["x-keygate-provider-key"] == provider_keys["openai"], "managed step first"
    managed_value = credentials_seen(mocks["openai"])[0]
    assert managed_value.startswith("sk-openai-managed-")
    mocks["openai"].reset()
    mocks["openai"].script(managed_value, (500, {}, {}))
    status, _, headers = chat(gateway, token)
    assert status == 200 and headers["x-keygate-provider-key"] == a
    assert credentials_seen(mocks["openai"]) == [managed_value, va]


def test_streaming_failover_and_no_retry_mid_stream(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (429, {"retry-after": "1"}, {}))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hello from openai"
    assert credentials_seen(mocks["openai"]) == [va, vb]

    time.sleep(1.1)
    mocks["openai"].reset()
    mocks["openai"].script(va, (200, {}, {}, {"cut": True}))
    with pytest.raises(Exception):
        stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
        for _ in stream:
            pass
    assert credentials_seen(mocks["openai"]) == [va], "a stream cut mid-way is not retried"


def test_openai_sdk_sees_no_failover(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (429, {"retry-after": "1"}, {"error": {"message": "rate limited"}}))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token)  # SDK defaults: 2 retries
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "hello from openai"
    assert raw.headers["x-keygate-attempts"] == "2"
    assert len(mocks["openai"].received()) == 2, "the SDK did not retry: the gateway's failover did"


def test_per_attempt_timeout_and_connection_failure(tmp_path, store, mocks):
    gw = start_gateway(tmp_path, store, KEYGATE_ATTEMPT_TIMEOUT="1s", concurrency=1)
    try:
        (a, va), (b, vb) = user_key(store), user_key(store)
        token = key_with_steps(store, [user_step(a, b)])
        mocks["openai"].script(va, (200, {}, {}, {"delay": 3}))
        t0 = time.monotonic()
        status, _, headers = chat(gw, token)
        assert status == 200 and headers["x-keygate-provider-key"] == b
        assert time.monotonic() - t0 < 2.9
        assert credentials_seen(mocks["openai"]) == [va, vb]

        dead = store.ok("POST", "/providers", {"providerId": f"dead-{uuid.uuid4().hex[:6]}", "name": "dead",
                                                "baseUrl": "http://127.0.0.1:1/v1", "format": "openai"})["id"]
        (c, _), (d, _) = user_key(store, dead), user_key(store, dead)
        token = key_with_steps(store, [user_step(c, d)], provider=dead)
        status, doc, headers = http("POST", gw.url + CHAT, {"model": f"{dead}/m", "messages": []}, {"authorization": f"Bearer {token}"})
        assert status == 503, doc
        assert doc["error"]["code"] == "all_provider_keys_failed"
        assert c in doc["error"]["message"] and d in doc["error"]["message"]
    finally:
        gw.stop()

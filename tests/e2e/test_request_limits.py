"""Per-configuration request limits (`requestLimits`): input and output
tokens refused exactly past their bounds, in the client's dialect, with
nothing sent upstream; the per-attempt and total timeouts carried out by
Envoy for that configuration's requests only."""

import time
import uuid

import anthropic
import openai
import pytest

from test_failover import key_with_steps, user_key, user_step

HI = [{"role": "user", "content": "hi"}]


def key_with(store, limits, **extra):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"rl-{uuid.uuid4().hex[:8]}", "requestLimits": limits, **extra})["id"]
    return store.ok("POST", "/access-keys", {"name": "rl", "accessKeyConfigurationId": cfg})["token"]


def oa(gw, token):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0)


def test_output_tokens_are_refused_past_the_bound(gateway, store, mocks):
    token = key_with(store, {"maxOutputTokens": 100})
    assert oa(gateway, token).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=100).choices
    assert oa(gateway, token).chat.completions.create(model="gpt-4o", messages=HI, max_completion_tokens=50, n=2).choices
    assert len(mocks["openai"].received()) == 2
    mocks["openai"].reset()
    for kwargs in ({"max_tokens": 101}, {"max_tokens": 60, "n": 2}, {}):
        with pytest.raises(openai.BadRequestError) as e:
            oa(gateway, token).chat.completions.create(model="gpt-4o", messages=HI, **kwargs)
        assert e.value.body["code"] == "output_tokens_exceeded", kwargs
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic.Anthropic(base_url=gateway.url, api_key=token, max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=101, messages=HI)
    assert e.value.body["error"]["code"] == "output_tokens_exceeded"
    assert mocks["openai"].received() == [] and mocks["anthropic"].received() == []


def test_input_tokens_are_refused_past_the_estimated_bound(gateway, store, mocks):
    token = key_with(store, {"maxInputTokens": 300})
    # The estimate is ⌈body bytes ÷ 2⌉: a ~200-byte body passes, a ~1 KiB one does not.
    assert oa(gateway, token).chat.completions.create(model="gpt-4o", messages=HI).choices
    with pytest.raises(openai.APIStatusError) as e:
        oa(gateway, token).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 1000}])
    assert e.value.status_code == 413 and e.value.body["code"] == "input_tokens_exceeded"
    assert len(mocks["openai"].received()) == 1


def test_an_attempt_that_takes_too_long_fails_over(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"rl-{uuid.uuid4().hex[:8]}", "requestLimits": {"attemptTimeoutMs": 400},
        "router": {"rules": [{"provider": "openai", "steps": [user_step(a, b)]}]}})["id"]
    token = store.ok("POST", "/access-keys", {"name": "rl", "accessKeyConfigurationId": cfg})["token"]
    mocks["openai"].script(va, (200, {}, {"choices": []}, {"delay": 3}))
    started = time.monotonic()
    raw = oa(gateway, token).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)
    took = time.monotonic() - started
    assert raw.headers["x-keygate-provider-key"] == b and raw.headers["x-keygate-attempts"] == "2"
    assert took < 2.5, f"A's attempt was cut at its timeout ({took:.2f} s)"


def test_the_total_timeout_ends_the_request(gateway, store, mocks):
    (a, va) = user_key(store)
    token = key_with_steps(store, [user_step(a)])
    slow = key_with(store, {"totalTimeoutMs": 500}, router={"rules": [{"provider": "openai", "steps": [user_step(a)]}]})
    mocks["openai"].script(va, (200, {}, {"choices": []}, {"delay": 2}), (200, {}, {"choices": []}, {"delay": 2}))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        oa(gateway, slow).chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.status_code == 504 and time.monotonic() - started < 1.8
    # Another configuration's requests keep the route's own timeout.
    assert oa(gateway, token).chat.completions.create(model="gpt-4o", messages=HI) is not None

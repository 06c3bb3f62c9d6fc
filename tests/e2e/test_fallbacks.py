"""Model fallbacks (`"models": [...]` next to `model`): when every credential
of the request's model failed in a retriable way, the next model is tried,
at its own provider, path and credential, with `model` rewritten to that
provider's name. Envoy's retry policy makes the attempts; attempts at
another address go through the hop (an internal listener)."""

import json
import time
import uuid

import anthropic
import openai
import pytest

from harness import http

CHAT = "/v1/chat/completions"


def user_key(store, provider):
    value = f"sk-{provider}-{uuid.uuid4().hex}"
    pk = store.ok("POST", "/provider-keys", {"providerId": provider, "name": "fallback", "value": value})["id"]
    return pk, value


def steps(*pks):
    return [{"type": "user", "keySelectionStrategy": "ordered", "keys": [{"id": pk} for pk in pks]}]


def new_key(store, rules, access=None):
    body = {"name": f"fb-{uuid.uuid4().hex[:8]}", "router": {"rules": rules}}
    if access is not None:
        body["access"] = access
    cfg = store.ok("POST", "/access-key-configurations", body)["id"]
    created = store.ok("POST", "/access-keys", {"name": "fb", "accessKeyConfigurationId": cfg})
    return created["id"], created["token"]


@pytest.fixture
def two_providers(store):
    """A key whose openai model has one credential and whose my-vllm
    (another address, same API format) has another."""
    (oa, oa_value), (vl, vl_value) = user_key(store, "openai"), user_key(store, "my-vllm")
    key_id, token = new_key(store, [{"provider": "openai", "steps": steps(oa)}, {"provider": "my-vllm", "steps": steps(vl)}])
    return {"key_id": key_id, "token": token, "openai": (oa, oa_value), "vllm": (vl, vl_value)}


def client(gateway, token):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)


def bearer(req):
    return req["headers"].get("authorization", "").removeprefix("Bearer ")


def test_a_failing_model_falls_back_to_another_provider(gateway, store, mocks, two_providers):
    oa, oa_value = two_providers["openai"]
    vl, vl_value = two_providers["vllm"]
    mocks["openai"].script(oa_value, (503, {}, {"error": {"message": "overloaded"}}))
    raw = client(gateway, two_providers["token"]).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        extra_body={"models": ["my-vllm/llama-3"]})
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from vllm"
    assert raw.headers["x-keygate-provider"] == "my-vllm"
    assert raw.headers["x-keygate-model"] == "llama-3"
    assert raw.headers["x-keygate-attempts"] == "2"
    assert raw.headers["x-keygate-provider-key"] == vl

    [first] = mocks["openai"].received()
    [second] = mocks["vllm"].received()
    assert first["json"]["model"] == "gpt-4o" and "models" not in first["json"], "`models` never reaches a provider"
    assert bearer(first) == oa_value
    assert second["path"] == "/v1/chat/completions"
    assert second["json"] == {"model": "llama-3", "messages": [{"role": "user", "content": "hi"}]}
    assert bearer(second) == vl_value, "each attempt carries its own provider's credential"
    for req in (first, second):
        assert two_providers["token"] not in json.dumps(req)
    assert oa_value not in json.dumps(second) and vl_value not in json.dumps(first)


def test_the_first_model_serving_means_no_fallback(gateway, store, mocks, two_providers):
    raw = client(gateway, two_providers["token"]).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        extra_body={"models": ["my-vllm/llama-3"]})
    assert raw.parse().choices[0].message.content == "hello from openai"
    assert (raw.headers["x-keygate-provider"], raw.headers["x-keygate-model"]) == ("openai", "gpt-4o")
    assert mocks["vllm"].received() == []
    assert "models" not in mocks["openai"].received()[0]["json"]


def test_a_fallback_at_the_same_provider_takes_its_own_credentials(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store, "openai"), user_key(store, "openai")
    _, token = new_key(store, [{"provider": "openai", "model": "openai/gpt-4o", "steps": steps(a)},
                               {"provider": "openai", "steps": steps(b)}])
    mocks["openai"].script(va, (429, {"retry-after": "1"}, {"error": {"message": "slow down"}}))
    raw = client(gateway, token).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body={"models": ["gpt-4o-mini"]})
    assert raw.parse().choices[0].message.content == "hello from openai"
    assert raw.headers["x-keygate-model"] == "gpt-4o-mini"
    sent = mocks["openai"].received()
    assert [(r["json"]["model"], bearer(r)) for r in sent] == [("gpt-4o", va), ("gpt-4o-mini", vb)]


def test_a_fallback_stream_reaches_the_client_whole(gateway, store, mocks, two_providers):
    _, oa_value = two_providers["openai"]
    mocks["openai"].script(oa_value, (500, {}, {"error": {"message": "boom"}}))
    stream = client(gateway, two_providers["token"]).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"models": ["my-vllm/llama-3"]})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "hello from vllm"
    [req] = mocks["vllm"].received()
    assert req["json"]["model"] == "llama-3" and req["json"]["stream"] is True


def test_usage_names_the_model_and_provider_of_each_attempt(gateway, store, mocks, two_providers):
    _, oa_value = two_providers["openai"]
    mocks["openai"].script(oa_value, (503, {}, {"error": {"message": "overloaded"}}))
    client(gateway, two_providers["token"]).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_body={"models": ["my-vllm/llama-3"]})
    deadline = time.time() + 5
    while True:
        usage = store.ok("GET", f"/usage?accessKeyId={two_providers['key_id']}")["usage"]
        if len(usage) >= 2 or time.time() > deadline:
            break
        time.sleep(0.1)
    by_attempt = sorted(usage, key=lambda r: r["attempt"])
    assert [(r["attempt"], r["provider"], r["model"], r["status"]) for r in by_attempt] == [
        (1, "openai", "gpt-4o", 503), (2, "my-vllm", "llama-3", 200)]
    assert by_attempt[1]["inputTokens"] == 11 and by_attempt[1]["outputTokens"] == 7


def test_every_model_must_pass_the_allow_lists_before_anything_is_sent(gateway, store, mocks):
    (a, _), (b, _) = user_key(store, "openai"), user_key(store, "my-vllm")
    _, token = new_key(store, [{"provider": "openai", "steps": steps(a)}, {"provider": "my-vllm", "steps": steps(b)}],
                       access={"models": {"allow": ["openai/gpt-4o"]}})
    for dialect in ("openai", "sdk"):
        body = {"model": "gpt-4o", "messages": [], "models": ["my-vllm/llama-3"]}
        if dialect == "sdk":
            with pytest.raises(openai.PermissionDeniedError) as e:
                client(gateway, token).chat.completions.create(model="gpt-4o", messages=[], extra_body={"models": ["my-vllm/llama-3"]})
            assert "my-vllm/llama-3" in e.value.message
            continue
        status, doc, headers = http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {token}"})
        assert (status, doc["error"]["code"]) == (403, "model_not_allowed")
        assert "`models` names `my-vllm/llama-3`" in doc["error"]["message"]
    assert mocks["openai"].received() == [] and mocks["vllm"].received() == [], "refused up front"


@pytest.mark.parametrize("models, code", [
    ("my-vllm/llama-3", "invalid_model"),
    (["a", 1], "invalid_model"),
    ([f"m{i}" for i in range(9)], "invalid_model"),
    (["nope/unknown-model"], "unknown_model"),
    (["anthropic/claude-sonnet-4-6"], "unsupported_api"),
])
def test_malformed_or_impossible_fallbacks_are_refused(gateway, store, mocks, two_providers, models, code):
    body = {"model": "gpt-4o", "messages": [], "models": models}
    status, doc, _ = http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {two_providers['token']}"})
    assert status in (400, 403) and doc["error"]["code"] == code, doc
    assert mocks["openai"].received() == [] and mocks["vllm"].received() == []


def test_a_case_variant_of_models_is_refused(gateway, store, mocks, two_providers):
    body = {"model": "gpt-4o", "messages": [], "Models": ["my-vllm/llama-3"]}
    status, doc, _ = http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {two_providers['token']}"})
    assert (status, doc["error"]["code"]) == (400, "invalid_model")
    assert mocks["openai"].received() == []


def test_anthropic_fallbacks_speak_the_anthropic_dialect(gateway, store, mocks):
    (a, va), (b, vb) = user_key(store, "anthropic"), user_key(store, "anthropic")
    _, token = new_key(store, [{"provider": "anthropic", "model": "anthropic/claude-sonnet-4-6", "steps": steps(a)},
                               {"provider": "anthropic", "steps": steps(b)}])
    mocks["anthropic"].script(va, (529, {}, {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}))
    c = anthropic.Anthropic(base_url=gateway.url, api_key=token, max_retries=0)
    raw = c.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=8,
                                              messages=[{"role": "user", "content": "hi"}],
                                              extra_body={"models": ["anthropic/claude-haiku-4-5"]})
    assert raw.parse().content[0].text == "hello from anthropic"
    assert raw.headers["x-keygate-model"] == "claude-haiku-4-5"
    sent = mocks["anthropic"].received()
    assert [(r["json"]["model"], r["headers"]["x-api-key"]) for r in sent] == [("claude-sonnet-4-6", va), ("claude-haiku-4-5", vb)]
    assert all("models" not in r["json"] for r in sent)
    # Refused in Anthropic's shape, naming the model.
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[], extra_body={"models": ["openai/gpt-4o"]})
    assert e.value.body["error"]["type"] == "invalid_request_error" and "openai/gpt-4o" in e.value.message


def test_when_every_model_fails_the_answer_lists_every_attempt(gateway, store, mocks, two_providers):
    oa, oa_value = two_providers["openai"]
    vl, vl_value = two_providers["vllm"]
    mocks["openai"].script(oa_value, (503, {}, {"error": {"message": "overloaded"}}))
    mocks["vllm"].script(vl_value, (502, {}, {"error": {"message": f"bad key {vl_value}"}}))
    body = {"model": "gpt-4o", "messages": [], "models": ["my-vllm/llama-3"]}
    status, doc, headers = http("POST", gateway.url + CHAT, body, {"authorization": f"Bearer {two_providers['token']}"})
    assert (status, doc["error"]["code"]) == (502, "all_provider_keys_failed")
    assert f"{oa}: 503" in doc["error"]["message"] and f"{vl}: 502" in doc["error"]["message"]
    assert vl_value not in json.dumps(doc) and vl_value not in json.dumps(dict(headers))


def test_a_budget_reserves_for_the_dearest_fallback(gateway, store, mocks, two_providers):
    """A fallback may serve: the reservation is priced at the dearest model
    of the request, so a cheap `model` cannot smuggle in a dear fallback."""
    pricey = f"pricey-{uuid.uuid4().hex[:8]}"
    store.ok("PUT", f"/prices/my-vllm/{pricey}", {"inputPerMillionUsd": 1_000_000, "outputPerMillionUsd": 1_000_000})
    oa, _ = two_providers["openai"]
    vl, _ = two_providers["vllm"]
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"fb-budget-{uuid.uuid4().hex[:8]}", "budget": {"costUsd": 50},
        "router": {"rules": [{"provider": "openai", "steps": steps(oa)}, {"provider": "my-vllm", "steps": steps(vl)}]}})
    token = store.ok("POST", "/access-keys", {"name": "fb", "accessKeyConfigurationId": cfg["id"]})["token"]
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.APIStatusError) as e:
        client(gateway, token).chat.completions.create(model="gpt-4o", messages=hi, max_tokens=10,
                                                       extra_body={"models": [f"my-vllm/{pricey}"]})
    assert (e.value.status_code, e.value.body["code"]) == (402, "insufficient_credits")
    assert mocks["openai"].received() == [] and mocks["vllm"].received() == []
    # The same request without the dear fallback fits.
    assert client(gateway, token).chat.completions.create(model="gpt-4o", messages=hi, max_tokens=10).choices


def test_a_request_with_many_headers_passes_the_hop(gateway, store, mocks, two_providers):
    """The hop's listener has room for all the gateway accepts plus what an
    attempt adds (credential, routing, forwarding headers)."""
    _, oa_value = two_providers["openai"]
    mocks["openai"].script(oa_value, (503, {}, {"error": {"message": "overloaded"}}))
    padding = {f"x-pad-{i}": "v" * 40 for i in range(90)}
    body = {"model": "gpt-4o", "messages": [], "models": ["my-vllm/llama-3"]}
    status, doc, headers = http("POST", gateway.url + CHAT, body,
                                {"authorization": f"Bearer {two_providers['token']}", **padding})
    assert status == 200, doc
    assert headers["x-keygate-provider"] == "my-vllm"

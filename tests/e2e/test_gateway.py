"""The gateway end to end: real Envoy + real filter + real store + mock
providers. Each case checks the status, the error body's shape, and what the
providers received (nothing, or exactly one request with exactly the provider
credential and no trace of the access key)."""

import json
import time
import uuid

import pytest

from conftest import future
from harness import Envoy, free_port, http, wait_until

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


def new_key(store, config=None, **fields):
    body = {"name": f"test-{uuid.uuid4().hex[:8]}", **fields}
    if config:
        body["accessKeyConfigurationId"] = config
    doc = store.ok("POST", "/access-keys", body)
    return doc["id"], doc["token"]


def new_config(store, **body):
    return store.ok("POST", "/access-key-configurations", {"name": f"cfg-{uuid.uuid4().hex[:8]}", **body})["id"]


def call(gateway, path=CHAT, model="gpt-4o", token=None, headers=None, body=None, raw=None):
    h = dict(headers or {})
    if token is not None:
        h.setdefault("authorization", f"Bearer {token}")
    if raw is not None:
        h["content-type"] = "application/json"
        return http("POST", gateway.url + path, raw.encode() if isinstance(raw, str) else raw, h)
    payload = body if body is not None else {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    return http("POST", gateway.url + path, payload, h)


def settles(gateway, token, status, what):
    """Waits (within the documented revocation bound) until every worker
    answers `status`: several fresh connections in a row, spread over workers."""
    wait_until(lambda: all(call(gateway, token=token)[0] == status for _ in range(8)), timeout=5, what=what)


def all_requests(mocks):
    return [r for m in mocks.values() for r in m.received()]


def assert_error(resp, status, code, dialect="openai"):
    got_status, doc, headers = resp
    assert got_status == status, f"expected {status} {code}, got {got_status} {doc}"
    if dialect == "openai":
        assert set(doc) == {"error"}, doc
        assert doc["error"]["code"] == code, doc
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
        assert isinstance(doc["error"]["type"], str)
    else:
        assert doc["type"] == "error", doc
        assert isinstance(doc["error"]["type"], str) and isinstance(doc["error"]["message"], str)
        assert headers.get("x-keygate-error") == code, headers
    assert headers.get("x-keygate-request-id"), "every response carries a request id"


def assert_nothing_upstream(mocks):
    assert all_requests(mocks) == [], "nothing may reach a provider"


def assert_one_upstream(mocks, provider, credential, token, auth_header="authorization"):
    seen = all_requests(mocks)
    assert len(seen) == 1, seen
    req = seen[0]
    assert req in mocks[provider].received()
    expected = f"Bearer {credential}" if auth_header == "authorization" else credential
    assert req["headers"].get(auth_header) == expected
    others = {"authorization", "x-api-key", "x-goog-api-key", "api-key"} - {auth_header}
    assert not (others & set(req["headers"])), req["headers"]
    assert token not in json.dumps(req), "the access key must never reach a provider"
    assert not any(h.startswith("x-keygate-") for h in req["headers"]), req["headers"]
    return req




# ---- authentication ---------------------------------------------------------------------------


def test_missing_key(gateway, mocks):
    assert_error(call(gateway), 401, "missing_access_key")
    assert_error(call(gateway, MESSAGES, "claude-sonnet-4-6"), 401, "missing_access_key", "anthropic")
    assert_nothing_upstream(mocks)


def test_malformed_key_never_reaches_the_store(gateway, store, mocks):
    before = store.stats()["lookups"]
    _, token = new_key(store)
    typo = token[:-1] + ("0" if token[-1] != "0" else "1")
    for bad in ["sk-not-ours", "kg-short", typo, token.upper()]:
        assert_error(call(gateway, token=bad), 401, "malformed_access_key")
    assert_error(call(gateway, headers={"authorization": f"Basic {token}"}), 401, "malformed_access_key")
    assert store.stats()["lookups"] == before
    assert_nothing_upstream(mocks)


def test_unknown_key(gateway, store, mocks):
    from keygate_token import well_formed_token
    assert_error(call(gateway, token=well_formed_token()), 401, "invalid_access_key")
    assert_error(call(gateway, MESSAGES, "claude-sonnet-4-6", headers={"x-api-key": well_formed_token()}), 401, "invalid_access_key", "anthropic")
    assert_nothing_upstream(mocks)


def test_ambiguous_headers(gateway, store, mocks):
    _, a = new_key(store)
    _, b = new_key(store)
    assert_error(call(gateway, token=a, headers={"x-api-key": b}), 401, "ambiguous_access_key")
    assert_nothing_upstream(mocks)


def test_deleted_key_stops_working(gateway, store, mocks):
    key_id, token = new_key(store)
    assert call(gateway, token=token)[0] == 200
    store.ok("DELETE", f"/access-keys/{key_id}")
    mocks["openai"].reset()
    settles(gateway, token, 401, "deleted key refused")
    mocks["openai"].reset()
    assert_error(call(gateway, token=token), 401, "invalid_access_key")
    assert_nothing_upstream(mocks)


def test_disabled_key(gateway, store, mocks):
    key_id, token = new_key(store, disabled=True)
    assert_error(call(gateway, token=token), 401, "access_key_disabled")
    store.ok("PATCH", f"/access-keys/{key_id}", {"disabled": False})
    settles(gateway, token, 200, "re-enabled key accepted")
    store.ok("PATCH", f"/access-keys/{key_id}", {"disabled": True})
    settles(gateway, token, 401, "disabled key refused")
    for m in mocks.values():
        m.reset()
    assert_error(call(gateway, token=token), 401, "access_key_disabled")
    assert_nothing_upstream(mocks)


def test_expired_key(gateway, store, mocks):
    _, token = new_key(store, expiresAt=future(2))
    assert call(gateway, token=token)[0] == 200
    time.sleep(2.2)
    mocks["openai"].reset()
    assert_error(call(gateway, token=token), 401, "access_key_expired")
    assert_nothing_upstream(mocks)


# ---- allow-lists and routing -------------------------------------------------------------------


def test_refused_provider_and_refused_model_differ(gateway, store, mocks):
    cfg = new_config(store, access={"providers": {"allow": ["openai"]}, "models": {"allow": ["openai/gpt-4o", "anthropic/claude-*"]}})
    _, token = new_key(store, cfg)
    assert_error(call(gateway, MESSAGES, "claude-sonnet-4-6", headers={"x-api-key": token}), 403, "provider_not_allowed", "anthropic")
    assert_error(call(gateway, model="gpt-4o-mini", token=token), 403, "model_not_allowed")
    assert_error(call(gateway, model="my-vllm/llama-3", token=token), 403, "provider_not_allowed")
    assert_nothing_upstream(mocks)
    assert call(gateway, model="gpt-4o", token=token)[0] == 200


def test_wildcard_model(gateway, store, mocks, provider_keys):
    cfg = new_config(store, access={"models": {"allow": ["anthropic/claude-*"]}})
    _, token = new_key(store, cfg)
    status, doc, _ = call(gateway, MESSAGES, "claude-haiku-4-5", headers={"x-api-key": token})
    assert status == 200, doc
    req = mocks["anthropic"].received()[0]
    assert req["path"] == "/v1/messages"
    assert req["headers"]["anthropic-version"]
    assert req["json"]["model"] == "claude-haiku-4-5"
    assert token not in json.dumps(req)
    for m in mocks.values():
        m.reset()
    assert_error(call(gateway, model="gpt-4o", token=token), 403, "model_not_allowed")
    assert_nothing_upstream(mocks)


def test_bare_and_qualified_models_with_user_keys(gateway, store, mocks):
    value = "sk-user-" + uuid.uuid4().hex
    pk = store.ok("POST", "/provider-keys", {"providerId": "openai", "name": "user key", "value": value})["id"]
    cfg = new_config(store, router={"rules": [{"provider": "openai", "steps": [{"type": "user", "keys": [{"id": pk}]}]}]})
    _, token = new_key(store, cfg)
    for model, served in [("gpt-4o", "gpt-4o"), ("openai/gpt-4o", "gpt-4o"), ("openai:gpt-4o-mini", "gpt-4o-mini")]:
        mocks["openai"].reset()
        status, doc, headers = call(gateway, model=model, token=token)
        assert status == 200, doc
        assert doc["choices"][0]["message"]["content"] == "hello from openai"
        assert headers.get("x-keygate-request-id")
        req = assert_one_upstream(mocks, "openai", value, token)
        assert req["json"]["model"] == served
        assert req["path"] == "/v1/chat/completions"
        assert req["json"]["messages"] == [{"role": "user", "content": "hi"}]


def test_custom_provider(gateway, store, mocks, provider_keys):
    cfg = new_config(store, router={"rules": [{"provider": "my-vllm", "steps": [{"type": "user", "keys": [{"id": provider_keys["my-vllm"]}]}]}]})
    _, token = new_key(store, cfg)
    status, doc, _ = call(gateway, model="my-vllm/llama-3", token=token)
    assert status == 200, doc
    assert doc["choices"][0]["message"]["content"] == "hello from vllm"
    req = mocks["vllm"].received()[0]
    assert req["json"]["model"] == "llama-3"
    assert req["headers"]["authorization"].startswith("Bearer vllm-secret-")
    assert len(all_requests(mocks)) == 1


def test_custom_provider_without_credentials_is_a_clear_error(gateway, store, mocks):
    _, token = new_key(store)  # no configuration: managed keys only, and my-vllm has none
    resp = call(gateway, model="my-vllm/llama-3", token=token)
    assert_error(resp, 400, "no_provider_credentials")
    assert "my-vllm" in resp[1]["error"]["message"]
    assert_nothing_upstream(mocks)


def test_client_credentials_and_envoy_headers_are_stripped(gateway, store, mocks):
    _, token = new_key(store)
    headers = {"x-goog-api-key": "client-goog", "api-key": "client-azure", "x-envoy-max-retries": "9",
               "x-envoy-upstream-rq-timeout-ms": "1", "x-keygate-cluster": "keygate_store",
               # The operator's credential decides the organization and project; answers come uncompressed
               # (keygate reads their usage and scrubs their errors).
               "openai-organization": "org-victim", "openai-project": "proj-victim", "accept-encoding": "gzip"}
    status, doc, _ = call(gateway, model="gpt-4o", token=token, headers=headers)
    assert status == 200, doc
    req = mocks["openai"].received()[0]
    assert req["headers"]["authorization"].startswith("Bearer sk-openai-managed-")
    for h in ["x-goog-api-key", "api-key", "x-api-key", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms", "x-keygate-cluster",
              "openai-organization", "openai-project", "accept-encoding"]:
        assert h not in req["headers"], h


# ---- request bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw,code", [
    ("{not json", "invalid_json"),
    ('{"model": 42, "messages": []}', "invalid_model"),
    ('{"model": true}', "invalid_model"),
    ('{"model": null}', "invalid_model"),
    ('{"model": {"id": "gpt-4o"}}', "invalid_model"),
    # Two `model`s (one of them spelled with an escape): a provider might read the other one.
    ('{"model": "gpt-4o", "model": "gpt-4o-mini"}', "invalid_model"),
    ('{"model": "gpt-4o", "mod\\u0065l": "gpt-4o-mini"}', "invalid_model"),
    ('{"model": "gpt-4o"} trailing', "invalid_json"),
    ('{"model": "gpt-4o", "temperature": 01}', "invalid_json"),
    (b'{"model": "gpt-4o", "x": "\xff"}', "invalid_json"),
    ('{"messages": []}', "missing_model"),
    ('{"model": "no-such-model-anywhere"}', "unknown_model"),
])
def test_bad_bodies(gateway, store, mocks, raw, code):
    _, token = new_key(store)
    assert_error(call(gateway, token=token, raw=raw), 400, code)
    assert_nothing_upstream(mocks)


def test_allow_list_reads_the_model_a_provider_reads(gateway, store, mocks):
    """The body reader decodes escaped keys and ignores nested `model`s, as a
    provider's JSON parser would: the allow-list sees the model that is used."""
    cfg = new_config(store, access={"models": {"allow": ["openai/gpt-4o-mini"]}})
    _, token = new_key(store, config=cfg)
    raw = '{"tools": [{"parameters": {"model": "gpt-4o-mini"}}], "mod\\u0065l": "gpt-4o", "messages": []}'
    assert_error(call(gateway, token=token, raw=raw), 403, "model_not_allowed")
    assert_nothing_upstream(mocks)


def test_large_body_reaches_the_provider_byte_for_byte(gateway, store, mocks):
    """A body of many chunks (the body reader sees each one as it passes, the
    buffer filter holds the headers until the last) arrives unchanged."""
    _, token = new_key(store)
    content = "".join(f"line {i}: \"quoted\" \\ é \u2603\n" for i in range(20_000))
    raw = json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 5, "model": "gpt-4o"})
    assert len(raw) > 512 * 1024
    status, doc, _ = call(gateway, token=token, raw=raw)
    assert status == 200, doc
    (req,) = mocks["openai"].received()
    assert req["raw"] == raw


def test_anthropic_dialect_for_bad_bodies(gateway, store, mocks):
    _, token = new_key(store)
    assert_error(call(gateway, MESSAGES, token=None, headers={"x-api-key": token}, raw="[1,"), 400, "invalid_json", "anthropic")
    assert_nothing_upstream(mocks)


def test_oversized_body(gateway, store, mocks):
    """Refused from its content-length, before the body is read. (The client
    must read the answer while it still sends: httpx does, urllib does not.)"""
    import httpx2
    _, token = new_key(store)
    big = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]})
    r = httpx2.post(gateway.url + CHAT, content=big.encode(), headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"
    assert_nothing_upstream(mocks)


# ---- the store is down ----------------------------------------------------------------------------


def test_store_down_fails_closed(tmp_path, store, mocks):
    _, token = new_key(store)
    dead = Envoy(tmp_path, free_port(), store.gateway_token, concurrency=1, extra_env={"KEYGATE_CALLOUT_TIMEOUT_MS": "300"}).start()
    try:
        started = time.monotonic()
        resp = call(dead, token=token)
        elapsed = time.monotonic() - started
        assert_error(resp, 503, "key_store_unavailable")
        assert resp[2].get("retry-after")
        assert elapsed < 5, elapsed
        assert_error(call(dead, MESSAGES, "claude-sonnet-4-6", headers={"x-api-key": token}), 503, "key_store_unavailable", "anthropic")
        assert_nothing_upstream(mocks)
    finally:
        dead.stop()


def test_no_secret_in_envoy_log(gateway, store, mocks):
    _, token = new_key(store)
    assert call(gateway, token=token)[0] == 200
    log = gateway.log()
    assert token not in log
    assert "sk-openai-managed-" not in log and "sk-ant-managed-" not in log

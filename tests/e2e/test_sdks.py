"""The official OpenAI and Anthropic Python SDKs, unchanged, pointed at the gateway."""

import uuid

import anthropic
import openai
import pytest


def new_key(store, config=None):
    body = {"name": f"sdk-{uuid.uuid4().hex[:8]}"}
    if config:
        body["accessKeyConfigurationId"] = config
    return store.ok("POST", "/access-keys", body)["token"]


def openai_client(gateway, token):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)


def anthropic_client(gateway, token):
    return anthropic.Anthropic(base_url=gateway.url, api_key=token, max_retries=0)


def test_openai_chat(gateway, store, mocks):
    token = new_key(store)
    resp = openai_client(gateway, token).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "hello from openai"
    assert resp.usage.total_tokens == 18
    req = mocks["openai"].received()[0]
    assert req["headers"]["authorization"].startswith("Bearer sk-openai-managed-")
    assert token not in str(req)


def test_openai_stream(gateway, store, mocks):
    token = new_key(store)
    stream = openai_client(gateway, token).chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "hello from openai"
    assert mocks["openai"].received()[0]["json"]["model"] == "gpt-4o"


def test_anthropic_message(gateway, store, mocks):
    token = new_key(store)
    msg = anthropic_client(gateway, token).messages.create(
        model="claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "hello from anthropic"
    req = mocks["anthropic"].received()[0]
    assert req["headers"]["x-api-key"].startswith("sk-ant-managed-")
    assert "authorization" not in req["headers"]
    assert token not in str(req)


def test_anthropic_stream(gateway, store, mocks):
    token = new_key(store)
    with anthropic_client(gateway, token).messages.stream(
            model="anthropic/claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "hello from anthropic"
    assert mocks["anthropic"].received()[0]["json"]["model"] == "claude-sonnet-4-6"


def test_exception_classes(gateway, store, mocks):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"sdk-cfg-{uuid.uuid4().hex[:8]}",
        "access": {"providers": {"allow": ["openai"]}, "models": {"allow": ["openai/gpt-4o"]}},
    })["id"]
    token = new_key(store, cfg)
    oa = openai_client(gateway, token)
    with pytest.raises(openai.PermissionDeniedError) as e:
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError):
        openai_client(gateway, "kg-wrong").chat.completions.create(model="gpt-4o", messages=[])
    an = anthropic_client(gateway, token)
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        an.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "provider" in str(e.value)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(gateway, "kg-wrong").messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[])
    assert [r for m in mocks.values() for r in m.received()] == []

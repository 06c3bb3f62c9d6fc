"""Client address allow-lists (`access.clientIps.allow`): the client's
address as Envoy resolves it (`use_remote_address`, and X-Forwarded-For only
as far as KEYGATE_XFF_TRUSTED_HOPS trusts it), 403 `ip_not_allowed` in the
client's dialect otherwise, and nothing reaches a provider."""

import uuid

import anthropic
import openai
import pytest

from conftest import start_gateway

HI = [{"role": "user", "content": "hi"}]


def key_from(store, allow):
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"ips-{uuid.uuid4().hex[:8]}", "access": {"clientIps": {"allow": allow}}})["id"]
    return store.ok("POST", "/access-keys", {"name": "ips", "accessKeyConfigurationId": cfg})["token"]


def chat(gw, token, xff=None):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0,
                           default_headers={"x-forwarded-for": xff} if xff else None)
    return client.chat.completions.create(model="gpt-4o", messages=HI)


@pytest.fixture(scope="module")
def behind_a_proxy(tmp_path_factory, store, provider_keys):
    """A gateway that trusts one proxy hop in front of it."""
    gw = start_gateway(tmp_path_factory.mktemp("xff"), store, KEYGATE_XFF_TRUSTED_HOPS=1)
    yield gw
    gw.stop()


def test_an_allowed_address_passes_and_another_is_refused(gateway, store, mocks):
    assert chat(gateway, key_from(store, ["127.0.0.0/8"])).choices[0].message.content == "hello from openai"
    assert len(mocks["openai"].received()) == 1
    mocks["openai"].reset()
    outside = key_from(store, ["10.0.0.0/8", "2001:db8::/32"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gateway, outside)
    assert e.value.body["code"] == "ip_not_allowed" and "127.0.0.1" in e.value.body["message"]
    with pytest.raises(anthropic.PermissionDeniedError) as e:
        anthropic.Anthropic(base_url=gateway.url, api_key=outside, max_retries=0).messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=HI)
    assert e.value.body["error"]["code"] == "ip_not_allowed"
    assert mocks["openai"].received() == [] and mocks["anthropic"].received() == []


def test_a_forwarded_for_header_is_not_trusted_by_default(gateway, store, mocks):
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gateway, key_from(store, ["10.0.0.0/8"]), xff="10.1.2.3")
    assert e.value.body["code"] == "ip_not_allowed"
    assert mocks["openai"].received() == []


def test_trusted_hops_take_the_client_from_forwarded_for(behind_a_proxy, store, mocks):
    token = key_from(store, ["10.0.0.0/8"])
    assert chat(behind_a_proxy, token, xff="10.1.2.3").choices[0].message.content == "hello from openai"
    # One trusted hop: the client is the rightmost entry, not one the client
    # wrote further left.
    with pytest.raises(openai.PermissionDeniedError):
        chat(behind_a_proxy, token, xff="10.1.2.3, 192.0.2.1")
    with pytest.raises(openai.PermissionDeniedError):
        chat(behind_a_proxy, token)
    assert len(mocks["openai"].received()) == 1


def test_an_empty_list_allows_nobody_and_no_list_allows_anyone(gateway, store, mocks):
    with pytest.raises(openai.PermissionDeniedError):
        chat(gateway, key_from(store, []))
    anyone = store.ok("POST", "/access-keys", {"name": "any"})["token"]
    assert chat(gateway, anyone).choices[0].message.content == "hello from openai"

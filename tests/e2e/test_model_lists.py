"""Honest model lists: `GET /v1/models` shows exactly the provider's models
this key may use (its configuration's model allow-list), in OpenAI's and
Anthropic's list formats, so that SDK model pickers show the truth."""

import uuid

import anthropic
import openai

from test_failover import user_key, user_step

OPENAI_MODELS = {"object": "list", "data": [
    {"id": m, "object": "model", "created": 0, "owned_by": "openai"}
    for m in ("gpt-4o", "gpt-4o-mini", "o3", "text-embedding-3-small")]}
ANTHROPIC_MODELS = {"data": [
    {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
    for m in ("claude-opus-4", "claude-sonnet-4-6", "claude-haiku-4")],
    "has_more": False, "first_id": "claude-opus-4", "last_id": "claude-haiku-4"}


def key_for(store, models, provider, pk):
    body = {"name": f"ml-{uuid.uuid4().hex[:8]}",
            "router": {"rules": [{"provider": provider, "steps": [user_step(pk)]}]}}
    if models is not None:
        body["access"] = {"models": {"allow": models}}
    cfg = store.ok("POST", "/access-key-configurations", body)["id"]
    return store.ok("POST", "/access-keys", {"name": "ml", "accessKeyConfigurationId": cfg})["token"]


def test_each_key_sees_the_models_it_may_use(gateway, store, mocks):
    a, va = user_key(store)
    narrow = key_for(store, ["openai/gpt-4o*"], "openai", a)
    wide = key_for(store, None, "openai", a)
    mocks["openai"].script(va, (200, {}, OPENAI_MODELS), (200, {}, OPENAI_MODELS))
    client = lambda t: openai.OpenAI(base_url=gateway.url + "/v1", api_key=t, max_retries=0)  # noqa: E731
    assert [m.id for m in client(narrow).models.list()] == ["gpt-4o", "gpt-4o-mini"]
    assert [m.id for m in client(wide).models.list()] == ["gpt-4o", "gpt-4o-mini", "o3", "text-embedding-3-small"], \
        "no model list: every model of the provider"
    # What the list shows is what the gateway lets through.
    assert client(narrow).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    try:
        client(narrow).chat.completions.create(model="o3", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("o3 is not in the list and must be refused")
    except openai.PermissionDeniedError as e:
        assert e.body["code"] == "model_not_allowed"


def test_the_anthropic_surface_lists_in_its_own_format(gateway, store, mocks):
    a, va = user_key(store, "anthropic")
    token = key_for(store, ["anthropic/claude-sonnet-*"], "anthropic", a)
    mocks["anthropic"].script(va, (200, {}, ANTHROPIC_MODELS))
    page = anthropic.Anthropic(base_url=gateway.url, api_key=token, max_retries=0).models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-6"]
    # The page cursors stay the provider's, so that paging goes on where its pages end.
    assert (page.first_id, page.last_id) == ("claude-opus-4", "claude-haiku-4")


def test_a_long_list_is_filtered_whole(gateway, store, mocks):
    """Past Envoy's 64 KiB buffer per connection: read whole all the same."""
    a, va = user_key(store)
    token = key_for(store, ["openai/ft:keep-*"], "openai", a)
    many = [{"id": f"ft:{'keep' if i % 500 == 0 else 'drop'}-{i:05d}-" + "x" * 150, "object": "model"} for i in range(1500)]
    mocks["openai"].script(va, (200, {}, {"object": "list", "data": many}))
    shown = [m.id for m in openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0).models.list()]
    assert shown == [m["id"] for m in many if m["id"].startswith("ft:keep-")] and len(shown) == 3

"""Usage for every OpenAI stream: a client that streams without
`stream_options.include_usage` is asked for it all the same, its usage is
recorded from the provider's figures (not an estimate), and the client's
stream is byte for byte what the provider would have sent without it."""

import openai

from test_usage import CHAT, new_key, raw_post, usage_of

HI = [{"role": "user", "content": "hi"}]


def test_a_stream_without_usage_is_recorded_from_the_providers_figures(gateway, store, mocks):
    key_id, token = new_key(store)
    body = {"model": "gpt-4o", "messages": HI, "stream": True}
    status, _, through_gateway = raw_post(gateway.url, CHAT, body, {"authorization": f"Bearer {token}"})
    assert status == 200
    (sent,) = mocks["openai"].received()
    assert sent["json"]["stream_options"] == {"include_usage": True}, "asked for all the same"
    direct_status, _, direct = raw_post(mocks["openai"].base, "/v1/chat/completions", body, {"authorization": "Bearer d"})
    assert direct_status == 200 and through_gateway == direct, "the client's stream as it asked for it"
    [record] = usage_of(store, key_id, 1)
    assert (record["inputTokens"], record["outputTokens"]) == (11, 7), "the provider's figures, not the estimate"
    assert record["estimated"] is False


def test_the_sdk_stream_has_no_chunk_without_choices(gateway, store, mocks):
    _, token = new_key(store)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=HI, stream=True))
    assert chunks and all(c.choices for c in chunks), "chunk.choices[0] works for every chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello from openai"


def test_a_client_that_asks_for_usage_or_chooses_its_options_is_left_alone(gateway, store, mocks):
    key_id, token = new_key(store)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].choices == [], "its own usage chunk"
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=HI, stream=True, stream_options={}))
    assert all(c.usage is None for c in chunks)
    asked = [r["json"].get("stream_options") for r in mocks["openai"].received()]
    assert asked == [{"include_usage": True}, {}], "nothing added to options a client chose"
    records = usage_of(store, key_id, 2)
    # The provider's figures for the first; the estimate (no max_tokens:
    # 4096) for the one whose client chose options without usage.
    assert sorted((r["outputTokens"], r["estimated"]) for r in records) == [(7, False), (4096, True)], \
        "an estimate is marked as such"

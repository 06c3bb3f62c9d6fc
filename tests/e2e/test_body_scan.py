"""The body reader's byte scans as Envoy runs them: the filter is built with
wasm SIMD (`src/scan.rs`, sixteen bytes a step), which only this tier
exercises (the native unit tests run the portable loop). Each case puts the
byte that matters at every offset across three 16-byte blocks of a prompt
string, so a lane or a block the scan got wrong shows up as a request let
through that must be refused, or refused that must pass."""

import json
import uuid

import pytest

from harness import raw_http
from test_hostile import bearer, req

CHAT = "/v1/chat/completions"
OFFSETS = range(0, 48)


@pytest.fixture(scope="module")
def key(gateway, store):
    cfg = store.ok("POST", "/access-key-configurations",
                   {"name": "scan-" + uuid.uuid4().hex[:6], "access": {"models": {"allow": ["openai/gpt-4o-mini"]}}})["id"]
    return store.ok("POST", "/access-keys", {"name": "scan", "accessKeyConfigurationId": cfg})["token"]


def body(content: bytes) -> bytes:
    """A chat request whose one prompt is `content` (raw JSON string
    contents), with `model` after it: read only if the scan got through the
    prompt right."""
    return b'{"messages":[{"role":"user","content":"' + content + b'"}],"model":"gpt-4o-mini"}'


def send(gateway, key, data):
    return raw_http(gateway.port, req("POST", CHAT, bearer(key), data))


@pytest.mark.parametrize("at", OFFSETS)
def test_escapes_and_multibyte_text_pass_at_every_offset(gateway, key, mocks, at):
    # An escaped quote, a decoy `model` inside the string, a backslash, a
    # three-byte character and a four-byte one, each starting at `at`.
    prompt = "a" * at + '","model":"gpt-4o\\' + "€" + "b" * 17 + "😀" + "c" * 20
    content = json.dumps(prompt)[1:-1].encode()
    status, _, text = send(gateway, key, body(content))
    assert status == 200, text[:300]
    (got,) = mocks["openai"].received()
    assert got["json"]["model"] == "gpt-4o-mini"
    assert got["json"]["messages"][0]["content"] == prompt


@pytest.mark.parametrize("what,byte", [("raw quote", b'"'), ("control byte", b"\x01"), ("raw newline", b"\n"),
                                       ("invalid UTF-8", b"\xff"), ("stray continuation byte", b"\x80"),
                                       ("cut sequence", b"\xe2\x82")])
def test_a_bad_byte_in_a_string_is_refused_at_every_offset(gateway, key, mocks, what, byte):
    for at in OFFSETS:
        content = b"a" * at + byte + b"b" * 40
        status, headers, text = send(gateway, key, body(content))
        assert (status, headers.get("x-keygate-error")) == (400, "invalid_json"), (what, at, status, text[:200])
    assert mocks["openai"].received() == [], "nothing may reach a provider"

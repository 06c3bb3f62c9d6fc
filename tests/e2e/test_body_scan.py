"""The body reader's byte scans as Envoy runs them: the filter is built with
wasm SIMD (`src/scan.rs`, sixteen bytes a step), which only this tier
exercises (the native unit tests run the portable loop). Each case puts the
byte that matters at every offset across three 16-byte blocks of a prompt
string, so a lane or a block the scan got wrong shows up as a request let
through that must be refused, or refused that must pass; and a body sent in
two parts, cut inside a UTF-8 sequence at every offset, checks the sequence
carried from one chunk to the next."""

import json
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from harness import WASM, raw_http, wait_until
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
    # Raw UTF-8 (not \u escapes): the multibyte bytes go through the scan.
    content = json.dumps(prompt, ensure_ascii=False)[1:-1].encode()
    assert "€".encode() in content
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


def send_in_two(port, data, cut):
    """Sends `data` (a whole request) in two writes, the first ending at
    `cut`, 50 ms apart: Envoy hands the gate two body chunks."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data[:cut])
        time.sleep(0.05)
        sock.sendall(data[cut:])
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        return int(buf.split(b" ", 2)[1])


@pytest.mark.parametrize("tail,status", [(b"", 200), (b"\x41", 400)], ids=["whole", "broken"])
def test_a_sequence_cut_between_chunks_is_checked_whole(gateway, key, mocks, tail, status):
    # A four-byte character (or, `broken`, its first two bytes and an "A")
    # after `at` ASCII bytes, the body cut after each of its first bytes.
    offsets = range(0, 40, 3)
    for at in offsets:
        char = "😀".encode() if not tail else "😀".encode()[:2] + tail
        data = req("POST", CHAT, bearer(key), body(b"a" * at + char + b"b" * 40))
        start = data.index(b"\r\n\r\n") + 4 + len(b'{"messages":[{"role":"user","content":"') + at
        for cut in (start + 1, start + 2):
            got = send_in_two(gateway.port, data, cut)
            assert got == status, (at, cut, got)
    assert len(mocks["openai"].received()) == (2 * len(offsets) if status == 200 else 0)


def test_the_module_holds_simd():
    """The scans above are the SIMD ones only if the module was built with
    them (`.cargo/config.toml`): without SIMD enabled it must not validate."""
    features = ["--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext",
                "--enable-mutable-globals"]
    wasm_opt = shutil.which("wasm-opt")
    assert wasm_opt, "make wasm installs binaryen"
    ok = subprocess.run([wasm_opt, "--mvp-features", *features, str(WASM), "-o", "/dev/null"], capture_output=True)
    assert ok.returncode != 0 and b"validat" in ok.stdout + ok.stderr, "the module has no SIMD instructions"
    ok = subprocess.run([wasm_opt, "--mvp-features", "--enable-simd", *features, str(WASM), "-o", "/dev/null"],
                        capture_output=True)
    assert ok.returncode == 0, ok.stderr[-300:]


def test_an_answers_usage_is_found_past_its_completion_at_every_offset(gateway, store, mocks):
    """The answer side: keygate finds the top-level `usage` of a provider's
    answer by skipping the rest (`model_json::skip_string`, the same SIMD
    scan). Completions with escaped quotes, backslashes and a decoy `usage`
    inside the text, each at every offset: every record must hold the real
    counts, not the decoy's or none."""
    key = store.ok("POST", "/access-keys", {"name": "scan-usage-" + uuid.uuid4().hex[:6]})
    send(gateway, key["token"], body(b"hi"))
    (first,) = mocks["openai"].received()
    credential = first["headers"]["authorization"][len("Bearer "):]
    real = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    for at in OFFSETS:
        text = "x" * at + '\\"quoted\\" \\\\ ","usage":{"prompt_tokens":999,"completion_tokens":999}' + "é" * 9 + "y" * 20
        answer = {"id": "chatcmpl-scan", "object": "chat.completion", "model": "gpt-4o-mini",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                  "usage": real}
        mocks["openai"].script(credential, (200, {}, json.dumps(answer, ensure_ascii=False).encode()))
    for at in OFFSETS:
        status, _, text = send(gateway, key["token"], body(b"hi"))
        assert status == 200, (at, text[:200])
    records = []

    def flushed():
        nonlocal records
        records = store.ok("GET", f"/usage?accessKeyId={key['id']}")["usage"]
        return len(records) >= len(OFFSETS) + 1

    wait_until(flushed, timeout=10, what="the usage records")
    assert sorted({(r["inputTokens"], r["outputTokens"]) for r in records}) == [(11, 7)], records[:3]

"""The hostile-input tier: attack requests against the real Envoy and store,
sent as raw bytes (so nothing in a client library repairs them). Each row
asserts the refusal (status, and keygate's code where keygate answers) *and*
that no provider received anything. The key the rows use may call one
Azure-style deployment `hazure/cheap`, `openai/gpt-4o-mini` and
`anthropic/claude-haiku-4-5`, and no account endpoint; positive controls
show that same key does get through where it should."""

import json
import uuid
from dataclasses import dataclass, field

import pytest

from harness import raw_http
from keygate_token import well_formed_token

CHAT = "/v1/chat/completions"


@dataclass
class Ctx:
    """What the rows need: the gateway's port and the keys."""
    port: int
    key: str
    files_key: str
    disabled: str
    deleted: str
    expired: str
    unknown: str = field(default_factory=well_formed_token)


def req(method, path, headers=(), body=None, content_type="application/json", length=True):
    """A raw HTTP/1.1 request. `headers` is a list of (name, value), so a row
    can repeat or misspell anything."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway"]
    if body is not None and content_type:
        lines.append(f"Content-Type: {content_type}")
    if body is not None and length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chat(model="gpt-4o-mini", **extra):
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra}


def bearer(t):
    return [("Authorization", f"Bearer {t}")]


# (id, request builder, expected status, keygate's code or None for Envoy's own refusal)
ROWS = []


def row(name, status, code=None):
    def add(build):
        ROWS.append(pytest.param(build, status, code, id=name))
        return build
    return add


def many(name, status, code, builders):
    for i, build in enumerate(builders):
        ROWS.append(pytest.param(build, status, code, id=f"{name}-{i}"))


# ---- authentication -----------------------------------------------------------------------------

many("auth-missing", 401, "missing_access_key", [
    lambda c: req("POST", CHAT, [], chat()),
    lambda c: req("POST", "/v1/messages", [("anthropic-version", "2023-06-01")], chat("claude-haiku-4-5")),
    lambda c: req("GET", "/v1/models", []),
    lambda c: req("POST", CHAT, [("api-key", c.key)], chat()),
    lambda c: req("POST", CHAT, [("x-goog-api-key", c.key)], chat()),
    lambda c: req("POST", CHAT, [("proxy-authorization", f"Bearer {c.key}")], chat()),
    lambda c: req("DELETE", "/v1/files/file-victim", []),
])
many("auth-malformed", 401, "malformed_access_key", [
    lambda c: req("POST", CHAT, [("Authorization", "Bearer")], chat()),
    lambda c: req("POST", CHAT, [("Authorization", "Bearer ")], chat()),
    lambda c: req("POST", CHAT, [("Authorization", f"Basic {c.key}")], chat()),
    lambda c: req("POST", CHAT, [("Authorization", c.key)], chat()),
    lambda c: req("POST", CHAT, bearer(c.key.upper()), chat()),
    lambda c: req("POST", CHAT, bearer(c.key[:-1]), chat()),
    lambda c: req("POST", CHAT, bearer(c.key + "0"), chat()),
    lambda c: req("POST", CHAT, bearer(c.key[:-1] + ("0" if c.key[-1] != "0" else "1")), chat()),
    lambda c: req("POST", CHAT, bearer("sk-" + c.key[3:]), chat()),
    lambda c: req("POST", CHAT, bearer("kg-" + "g" * 48), chat()),
    lambda c: req("POST", CHAT, bearer("kg-" + "0" * 48), chat()),
    lambda c: req("POST", CHAT, bearer("kg-" + "a" * 5000), chat()),
    lambda c: req("POST", CHAT, bearer(c.key + " " + c.key), chat()),
    lambda c: req("POST", CHAT, [("x-api-key", "")], chat()),
    lambda c: req("POST", CHAT, [("x-api-key", "kg-")], chat()),
    # Two Authorization headers: Envoy joins them; never read as one key.
    lambda c: req("POST", CHAT, bearer(c.key) + bearer(c.key), chat()),
    lambda c: req("POST", CHAT, [("Authorization", f"Bearer {c.key},Bearer {c.key}")], chat()),
    lambda c: req("POST", CHAT, [("Authorization", f"Bearer\t{c.key}")], chat()),
    lambda c: req("POST", CHAT, [("Authorization", "Bearer kg-\u00e9".encode().decode("latin-1"))], chat()),
])
many("auth-not-utf8", 401, "malformed_access_key", [
    # Bytes that are not UTF-8 (Envoy passes obs-text on): read, never a crash.
    lambda c: req("POST", CHAT, [("Authorization", "Bearer kg-\xe9")], chat()),
    lambda c: req("POST", CHAT, [("x-api-key", c.key[:-1] + "\xff")], chat()),
])
many("auth-not-utf8-elsewhere", 401, "missing_access_key", [
    lambda c: req("POST", CHAT, [("X-Latin", "caf\xe9")], chat()),
])
many("auth-ambiguous", 401, "ambiguous_access_key", [
    lambda c: req("POST", CHAT, bearer(c.key) + [("x-api-key", c.files_key)], chat()),
    lambda c: req("POST", CHAT, bearer(c.unknown) + [("x-api-key", c.key)], chat()),
])
many("auth-unknown", 401, "invalid_access_key", [
    lambda c: req("POST", CHAT, bearer(c.unknown), chat()),
    lambda c: req("POST", CHAT, bearer(c.deleted), chat()),
    lambda c: req("POST", "/v1/messages", [("x-api-key", c.unknown), ("anthropic-version", "2023-06-01")], chat("claude-haiku-4-5")),
])
many("auth-disabled", 401, "access_key_disabled", [
    lambda c: req("POST", CHAT, bearer(c.disabled), chat()),
    lambda c: req("GET", "/v1/models", bearer(c.disabled)),
])
many("auth-expired", 401, "access_key_expired", [
    lambda c: req("POST", CHAT, bearer(c.expired), chat()),
])

# ---- allow-list evasion -------------------------------------------------------------------------

many("model-not-allowed", 403, "model_not_allowed", [
    lambda c: req("POST", CHAT, bearer(c.key), chat("gpt-4o")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("openai/gpt-4o")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("openai:gpt-4o")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("hazure/expensive")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("hazure/cheap/../expensive")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("hazure/cheap*")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("gpt-4o-mini ")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("gpt-4o-mini\u200b")),
    lambda c: req("POST", CHAT, bearer(c.key), '{"mod\\u0065l":"gpt-4o","max_tokens":8}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"tools":[{"model":"gpt-4o-mini"}],"model":"gpt-4o"}'),
    lambda c: req("POST", "/v1/messages", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")], chat("claude-opus-4-1")),
    lambda c: req("GET", "/v1/models/gpt-4o", bearer(c.key)),
    lambda c: req("POST", "/v1/embeddings", bearer(c.key), {"model": "text-embedding-3-large", "input": "x"}),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1"), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/images/edits", bearer(c.key), form("gpt-image-1"), content_type=FORM_TYPE),
])
many("model-invalid", 400, "invalid_model", [
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini","MODEL":"gpt-4o"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini","Model":"gpt-4o"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini","model":"gpt-4o"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini","mod\\u0065l":"gpt-4o"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":["gpt-4o-mini","gpt-4o"]}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":{"id":"gpt-4o"}}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":42}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":null}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":""}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"   "}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini\\u0000"}'),
    lambda c: req("POST", CHAT, bearer(c.key), json.dumps({"model": "m" * 1_000_000})),
    lambda c: req("POST", CHAT, bearer(c.key), chat("openai/")),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", "gpt-4o-transcribe"), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", name2="MODEL"), content_type=FORM_TYPE),
    # A model field with a Content-Type of its own (a charset a parser might decode it with).
    lambda c: req("POST", "/v1/images/edits", bearer(c.key), form("gpt-image-1").replace(b'name="model"', b'name="model"\r\nContent-Type: text/plain; charset=utf-7'), content_type=FORM_TYPE),
])
many("body-invalid-json", 400, "invalid_json", [
    lambda c: req("POST", CHAT, bearer(c.key), "{not json"),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini"} {"model":"gpt-4o"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini"}\x00'),
    lambda c: req("POST", CHAT, bearer(c.key), '\ufeff{"model":"gpt-4o-mini"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini", /* c */ "n":1}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini","t":NaN}'),
    lambda c: req("POST", CHAT, bearer(c.key), b'{"model":"gpt-4o-mini","x":"\xc0\xaf"}'),
    lambda c: req("POST", CHAT, bearer(c.key), '{"model":"gpt-4o-mini",}'),
    lambda c: req("POST", CHAT, bearer(c.key), "[" * 200 + "]" * 200),
    lambda c: req("POST", "/v1/messages", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")], '{"model":"claude-haiku-4-5"'),
])
many("body-missing-model", 400, "missing_model", [
    lambda c: req("POST", CHAT, bearer(c.key), {"messages": []}),
    lambda c: req("POST", CHAT, bearer(c.key), '[{"model":"gpt-4o-mini"}]'),
    lambda c: req("POST", CHAT, bearer(c.key) + [("Content-Length", "0")], None),
    lambda c: req("POST", CHAT, bearer(c.key), None),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form(None), content_type=FORM_TYPE),
])
many("body-invalid-form", 400, "invalid_multipart", [
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), b"preamble\r\n" + form("whisper-1"), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1"), content_type=FORM_TYPE.replace("kgB", "other")),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1").replace(b'name="model"', b"name*=utf-8''model"), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", "gpt-4o", name2='x"; name*0="model'), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", "gpt-4o", name2="<model>"), content_type=FORM_TYPE),
])
# (HTTP/1 request trailers never reach a filter: Envoy drops them unless
# `enable_trailers` is set. HTTP/2 trailers are refused by the gate.)
many("body-media-type", 415, "unsupported_media_type", [
    # A charset would make some form parsers decode field names (`+AG0-odel` is UTF-7 for `model`).
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", "gpt-4o", name2="+AG0-odel"),
                  content_type=FORM_TYPE.replace("multipart/form-data;", "multipart/form-data; charset=utf-7;")),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1"), content_type=FORM_TYPE + "; boundary*=utf-8''x"),
    lambda c: req("POST", CHAT, bearer(c.key), chat(), content_type="text/plain"),
    lambda c: req("POST", CHAT, bearer(c.key), chat(), content_type="application/x-www-form-urlencoded"),
    lambda c: req("POST", CHAT, bearer(c.key), chat(), content_type=None),
    lambda c: req("POST", CHAT, bearer(c.key), form("gpt-4o-mini"), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), chat("whisper-1")),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1"), content_type="multipart/form-data"),
])
many("provider-not-allowed", 403, "provider_not_allowed", [
    lambda c: req("POST", CHAT, bearer(c.key), chat("my-vllm/llama-3")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("groq/llama-3.3-70b")),
])
many("wrong-api", 400, "unsupported_api", [
    lambda c: req("POST", "/v1/messages", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")], chat("openai/gpt-4o-mini")),
    lambda c: req("POST", CHAT, bearer(c.key), chat("anthropic/claude-haiku-4-5")),
])

# ---- path evasion -------------------------------------------------------------------------------

AZURE = "?api-version=2024-06-01"
many("path-unsupported", 404, "unsupported_path", [
    # Envoy resolves the dot segments first: what is left is outside the table.
    lambda c: req("POST", "/v1/../expensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/%2e%2e/expensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/%2E%2E/expensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/./../expensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/.%2e/expensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1\\..\\expensive\\chat\\completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/chat/completions/../../x", bearer(c.key), chat()),
    lambda c: req("POST", "/V1/chat/completions", bearer(c.key), chat()),
    lambda c: req("POST", "/v2/chat/completions", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/chat/completion", bearer(c.key), chat()),
    lambda c: req("POST", "/chat/completions", bearer(c.key), chat()),
    lambda c: req("GET", "/", bearer(c.key)),
    lambda c: req("GET", "/v1", bearer(c.key)),
    lambda c: req("GET", "/healthz", bearer(c.key)),
    lambda c: req("GET", "/stats", bearer(c.key)),
    lambda c: req("GET", "/v1/lookup/" + "0" * 64, bearer(c.key)),
    lambda c: req("GET", "/v1/changes?since=0", bearer(c.key)),
    lambda c: req("POST", "/v1/usage", bearer(c.key), {"records": []}),
    lambda c: req("POST", "/v1/reserve", bearer(c.key), {}),
    lambda c: req("GET", "/v1/files/.hidden", bearer(c.key)),
    lambda c: req("GET", "/v1/files/" + "a" * 300, bearer(c.key)),
    lambda c: req("GET", "/v1/files/a/b/c", bearer(c.key)),
    lambda c: req("POST", "/v1/realtime", bearer(c.key), chat()),
])
many("path-invalid", 400, "invalid_path", [
    lambda c: req("POST", "/v1/chat/completions;x=1", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/%252e%252e/expensive/chat/completions", bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/chat/completions/", bearer(c.key), chat()),
    lambda c: req("GET", "/v1/files/%2500", bearer(c.key)),
    lambda c: req("GET", "/v1/files/a%20b", bearer(c.key)),
    lambda c: req("GET", "/v1/files/%C3%A9", bearer(c.key)),
    lambda c: req("GET", "/v1/files/a@b", bearer(c.key)),
    lambda c: req("GET", "/v1/files/a!b", bearer(c.key)),
    lambda c: req("GET", "/v1/files/~a", bearer(c.key)),
])
many("path-envoy-refused", 400, None, [
    lambda c: req("POST", "/v1/..%2fexpensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/..%2Fexpensive/chat/completions" + AZURE, bearer(c.key), chat("hazure/cheap")),
    lambda c: req("POST", "/v1/chat%2fcompletions", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/chat%5ccompletions", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/chat/completions\x00", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/chat/completions\x7f", bearer(c.key), chat()),
    lambda c: req("POST", "/v1/chat /completions", bearer(c.key), chat()),
])

# ---- methods ------------------------------------------------------------------------------------

many("method-not-allowed", 405, "method_not_allowed", [
    lambda c: req("TRACE", CHAT, bearer(c.key)),
    lambda c: req("TRACE", "/v1/models", bearer(c.key)),
    lambda c: req("OPTIONS", CHAT, bearer(c.key)),
    lambda c: req("HEAD", "/v1/models", bearer(c.key)),
    lambda c: req("PUT", CHAT, bearer(c.key), chat()),
    lambda c: req("PATCH", CHAT, bearer(c.key), chat()),
    lambda c: req("DELETE", CHAT, bearer(c.key)),
    lambda c: req("DELETE", "/v1/batches/batch_1", bearer(c.key)),
    lambda c: req("POST", "/v1/models", bearer(c.key), chat()),
    lambda c: req("PROPFIND", "/v1/models", bearer(c.key)),
    lambda c: req("GET", "/v1/messages", [("x-api-key", "x"), ("anthropic-version", "2023-06-01")]),
])
many("endpoint-not-allowed", 403, "endpoint_not_allowed", [
    lambda c: req("DELETE", "/v1/files/file-victim", bearer(c.key)),
    lambda c: req("GET", "/v1/files/file-victim/content", bearer(c.key)),
    lambda c: req("GET", "/v1/files", bearer(c.key)),
    lambda c: req("POST", "/v1/files", bearer(c.key), form("x"), content_type=FORM_TYPE),
    lambda c: req("DELETE", "/v1/models/ft:gpt-4o-mini:org::victim", bearer(c.key)),
    lambda c: req("GET", "/v1/responses/resp_victim", bearer(c.key)),
    lambda c: req("DELETE", "/v1/responses/resp_victim", bearer(c.key)),
    lambda c: req("POST", "/v1/batches/batch_victim/cancel", bearer(c.key)),
    lambda c: req("POST", "/v1/batches", bearer(c.key), {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h"}),
    lambda c: req("GET", "/v1/fine_tuning/jobs", bearer(c.key)),
    lambda c: req("GET", "/v1/chat/completions", bearer(c.key)),
    lambda c: req("GET", "/v1/chat/completions/chatcmpl-victim", bearer(c.key)),
    lambda c: req("POST", "/v1/threads/thread_1/runs", bearer(c.key), {"assistant_id": "a"}),
    lambda c: req("GET", "/v1/vector_stores", bearer(c.key)),
    lambda c: req("GET", "/v1/messages/batches", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")]),
    lambda c: req("POST", "/v1/messages/batches/msgbatch_1/cancel", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")]),
    lambda c: req("GET", "/v1/files", [("x-api-key", c.key), ("anthropic-version", "2023-06-01")]),
    # files.read does not give files.write
    lambda c: req("DELETE", "/v1/files/file-victim", bearer(c.files_key)),
    lambda c: req("POST", "/v1/uploads", bearer(c.files_key), {"filename": "x"}),
])
many("unexpected-body", 400, "unexpected_body", [
    lambda c: req("GET", "/v1/models", bearer(c.key), chat()),
    lambda c: req("DELETE", "/v1/files/file-victim", bearer(c.key), "x"),
])

# ---- header smuggling ---------------------------------------------------------------------------

many("smuggle-envoy", 400, None, [
    lambda c: req("POST", CHAT, bearer(c.key) + [("Content-Length", "5")], chat(), length=True),
    lambda c: req("POST", CHAT, bearer(c.key) + [("Transfer-Encoding", "chunked")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("x_api_key", c.key)], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X_Forwarded_For", "1.2.3.4")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Bad Name", "1")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Nul", "a\x00b")], chat()),
    lambda c: req("TRACK", CHAT, bearer(c.key)),
    lambda c: req("BREW", CHAT, bearer(c.key)),
])
many("smuggle-not-implemented", 501, None, [
    lambda c: req("POST", CHAT, bearer(c.key) + [("Transfer-Encoding", "chunked, identity")], chat(), length=False),
    lambda c: req("POST", CHAT, bearer(c.key) + [("Transfer-Encoding", "gzip")], chat(), length=False),
])
many("smuggle-version", 426, None, [
    lambda c: b"POST /v1/chat/completions HTTP/1.2\r\nHost: x\r\n\r\n",
])
many("smuggle-control-in-header", 400, None, [
    # (A bare CR inside a value is dropped by Envoy: `a\rb` arrives as `ab`.)
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Esc", "a\x1bb")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Del", "a\x7fb")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Bell", "a\x07b")], chat()),
])
many("smuggle-lenient-forms-still-need-a-key", 401, "missing_access_key", [
    # Forms Envoy accepts and re-serialises: harmless, and still judged.
    lambda c: b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    lambda c: b"POST /v1/chat/completions  HTTP/1.1\r\nHost: x\r\n\r\n",
    lambda c: b"GET /v1/models HTTP/1.1\nHost: x\n\n",
    lambda c: b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
])
many("smuggle-too-large", 431, None, [
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Big", "a" * 70_000)], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [(f"X-H{i}", "1") for i in range(120)], chat()),
])
many("method-override", 400, "method_override", [
    lambda c: req("GET", "/v1/models", bearer(c.key) + [("X-HTTP-Method-Override", "DELETE")]),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-HTTP-Method", "DELETE")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Method-Override", "PUT")], chat()),
])

# ---- credential leaks ---------------------------------------------------------------------------

many("leak-url", 400, "credential_in_url", [
    lambda c: req("GET", f"/v1/files/{c.key}", bearer(c.key)),
    lambda c: req("GET", f"/v1/models/openai:{c.key}", bearer(c.key)),
    lambda c: req("GET", f"/v1/models/{c.unknown}", bearer(c.key)),
    lambda c: req("DELETE", f"/v1/files/file-{c.key}", bearer(c.files_key)),
])
many("leak-query", 400, "credential_in_url", [
    lambda c: req("POST", f"{CHAT}?key={c.key}", [], chat()),
    lambda c: req("POST", f"{CHAT}?key={c.key}", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?api_key=sk-x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?api-key=sk-x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?access_token=x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?Key=x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?%6bey=x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?a=1;key=x", bearer(c.key), chat()),
    lambda c: req("POST", f"{CHAT}?user={c.key}", bearer(c.key), chat()),
    lambda c: req("POST", CHAT + "?u=" + "".join(f"%{b:02x}" for b in c.key.encode()), bearer(c.key), chat()),
    lambda c: req("GET", f"/v1/models?token={c.unknown}", bearer(c.key)),
])
many("leak-header", 400, "access_key_in_header", [
    lambda c: req("POST", CHAT, bearer(c.key) + [("X-Debug-Key", c.key)], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("Cookie", f"session={c.key}")], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("OpenAI-Organization", c.key)], chat()),
    lambda c: req("POST", CHAT, bearer(c.key) + [("User-Agent", f"app/1.0 ({c.unknown})")], chat()),
])
many("leak-body", 400, "access_key_in_body", [
    lambda c: req("POST", CHAT, bearer(c.key), chat(user=c.key)),
    lambda c: req("POST", CHAT, bearer(c.key), chat(messages=[{"role": "user", "content": f"my key is {c.key}"}])),
    lambda c: req("POST", CHAT, bearer(c.key), chat(metadata={"k": c.unknown})),
    lambda c: req("POST", CHAT, bearer(c.key), chat(messages=[{"role": "user", "content": "x" * 300_000 + c.key}])),
    lambda c: req("POST", "/v1/audio/transcriptions", bearer(c.key), form("whisper-1", extra=c.key), content_type=FORM_TYPE),
    lambda c: req("POST", "/v1/files", bearer(c.files_key), form("x", extra=c.key), content_type=FORM_TYPE),
])

# ---- request helpers used above ----------------------------------------------------------------

BOUNDARY = "kgBoundary7MA4YWxkTrZu0gW"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(model, model2=None, name2="model", extra=None):
    """A multipart form with a file part, `model` (and a second field named
    `name2` when `model2`), and an `extra` text field."""
    parts = [(f'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav', "RIFF....WAVE")]
    if model is not None:
        parts.append(('Content-Disposition: form-data; name="model"', model))
    if model2 is not None or name2 != "model":
        parts.append((f'Content-Disposition: form-data; name="{name2}"', model2 or "gpt-4o"))
    if extra is not None:
        parts.append(('Content-Disposition: form-data; name="prompt"', extra))
    out = "".join(f"--{BOUNDARY}\r\n{h}\r\n\r\n{v}\r\n" for h, v in parts) + f"--{BOUNDARY}--\r\n"
    return out.encode()


# ---- the key store's management and lookup APIs --------------------------------------------------

def mgmt_rows():
    """(id, listener, method, path, headers, body, expected status): abuse of
    the store's APIs. `listener` is "api" or "lookup"; headers may name
    ADMIN, GATEWAY or KEY, replaced by the real values."""
    admin = [("Authorization", "Bearer ADMIN")]
    big = json.dumps({"name": "x" * 100_000})
    rows = [
        ("no-token", "api", "GET", "/access-keys", [], None, 401),
        ("wrong-token", "api", "GET", "/access-keys", [("Authorization", "Bearer wrong")], None, 401),
        ("access-key-as-admin", "api", "GET", "/access-keys", [("Authorization", "Bearer KEY")], None, 401),
        ("gateway-token-as-admin", "api", "GET", "/provider-keys", [("Authorization", "Bearer GATEWAY")], None, 401),
        ("basic-admin", "api", "GET", "/access-keys", [("Authorization", "Basic ADMIN")], None, 401),
        ("admin-token-in-query", "api", "GET", "/access-keys?token=ADMIN", [], None, 401),
        ("create-without-token", "api", "POST", "/provider-keys", [], {"providerId": "openai", "name": "x", "value": "sk-evil-000000"}, 401),
        ("lookup-without-token", "lookup", "GET", "/v1/lookup/" + "0" * 64, [], None, 401),
        ("lookup-with-admin", "lookup", "GET", "/v1/lookup/" + "0" * 64, admin, None, 401),
        ("lookup-with-key", "lookup", "GET", "/v1/lookup/" + "0" * 64, [("Authorization", "Bearer KEY")], None, 401),
        ("changes-without-token", "lookup", "GET", "/v1/changes?since=0", [], None, 401),
        ("usage-ingest-with-admin", "lookup", "POST", "/v1/usage", admin, {"records": []}, 401),
        ("reserve-without-token", "lookup", "POST", "/v1/reserve", [], {}, 401),
        ("management-on-lookup-port", "lookup", "GET", "/access-keys", admin, None, 404),
        ("lookup-on-management-port", "api", "GET", "/v1/lookup/" + "0" * 64, admin, None, 404),
        ("invalid-json", "api", "POST", "/access-keys", admin, "{not json", 400),
        ("unknown-field", "api", "POST", "/access-keys", admin, {"name": "x", "isAdmin": True}, 400),
        ("huge-body", "api", "POST", "/access-keys", admin, big, 413),
        ("bad-endpoint-name", "api", "POST", "/access-key-configurations", admin, {"name": "x", "access": {"endpoints": {"allow": ["files.admin"]}}}, 400),
        ("file-base-url", "api", "POST", "/providers", admin, {"providerId": "evil", "name": "e", "baseUrl": "file:///etc/passwd", "format": "openai"}, 400),
        ("userinfo-base-url", "api", "POST", "/providers", admin, {"providerId": "evil2", "name": "e", "baseUrl": "http://user:pw@127.0.0.1:1/v1", "format": "openai"}, 400),
        ("dotted-base-url", "api", "POST", "/providers", admin, {"providerId": "evil3", "name": "e", "baseUrl": "http://127.0.0.1:1/v1/../admin", "format": "openai"}, 400),
        ("patch-provider-key-value", "api", "PATCH", "/provider-keys/PK", admin, {"value": "sk-new-0000000"}, 400),
        ("control-chars-in-value", "api", "POST", "/provider-keys", admin, {"providerId": "openai", "name": "x", "value": "sk-a\nb"}, 400),
        ("traversal-in-id", "api", "GET", "/access-keys/..%2fprovider-keys", admin, None, 404),
        ("sql-in-id", "api", "GET", "/access-keys/ak_1'%20OR%20'1'='1", admin, None, 404),
        ("negative-limit", "api", "GET", "/access-keys?limit=-1", admin, None, 400),
        ("huge-limit", "api", "GET", "/access-keys?limit=100000000000000000000", admin, None, 400),
        ("grace-too-long", "api", "POST", "/access-keys/AK/rotate", admin, {"gracePeriodSeconds": 10**9}, 400),
        ("method-not-allowed", "api", "PUT", "/access-keys", admin, {"name": "x"}, 405),
        ("too-many-models", "api", "POST", "/access-key-configurations", admin, {"name": "x", "access": {"models": {"allow": [f"openai/m{i}" for i in range(1001)]}}}, 400),
        ("unknown-provider-in-config", "api", "POST", "/access-key-configurations", admin, {"name": "x", "access": {"providers": {"allow": ["nope"]}}}, 400),
    ]
    return [pytest.param(*r[1:], id=r[0]) for r in rows]


# ---- fixtures and the tests ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(gateway, store, mocks):
    base = mocks["openai"].base
    store.ok("POST", "/providers", {"providerId": "hazure", "name": "Azure-style deployment", "baseUrl": base + "/openai/deployments/cheap",
                                    "format": "openai", "auth": "api-key"})
    pk = store.ok("POST", "/provider-keys", {"providerId": "hazure", "name": "hazure key", "value": "az-secret-" + uuid.uuid4().hex})["id"]
    access = {"providers": {"allow": ["openai", "hazure", "anthropic"]},
              "models": {"allow": ["hazure/cheap", "openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]}}
    router = {"rules": [{"provider": "hazure", "steps": [{"type": "user", "keys": [{"id": pk}]}]}]}
    cfg = store.ok("POST", "/access-key-configurations", {"name": "hostile", "access": access, "router": router})["id"]
    files_cfg = store.ok("POST", "/access-key-configurations",
                         {"name": "hostile-files", "access": {**access, "endpoints": {"allow": ["files.read"]}}, "router": router})["id"]

    def key(config=cfg, **fields):
        return store.ok("POST", "/access-keys", {"name": f"hostile-{uuid.uuid4().hex[:6]}", "accessKeyConfigurationId": config, **fields})

    deleted = key()
    store.ok("DELETE", f"/access-keys/{deleted['id']}")
    return Ctx(port=gateway.port, key=key()["token"], files_key=key(files_cfg)["token"],
               disabled=key(disabled=True)["token"], deleted=deleted["token"], expired=None)


@pytest.fixture(scope="module")
def expired_key(store, ctx):
    # expiresAt must be in the future at creation: expire it by waiting.
    import time
    from conftest import future
    doc = store.ok("POST", "/access-keys", {"name": "hostile-expired", "expiresAt": future(1)})
    time.sleep(1.2)
    ctx.expired = doc["token"]
    return doc["token"]


def hazure_credential(mocks):
    (r,) = all_received(mocks)
    return r["headers"]["api-key"]


def all_received(mocks):
    return [r for m in mocks.values() for r in m.received()]


def test_the_tier_has_enough_rows():
    assert len(ROWS) + len(mgmt_rows()) >= 150, len(ROWS) + len(mgmt_rows())


@pytest.mark.parametrize("build,status,code", ROWS)
def test_attack_is_refused_and_nothing_reaches_a_provider(ctx, expired_key, mocks, build, status, code):
    data = build(ctx)
    got, headers, body = raw_http(ctx.port, data)
    assert got == status, f"expected {status} {code}, got {got} {headers} {body[:300]!r}"
    if code is not None and not data.startswith(b"HEAD "):
        assert headers.get("x-keygate-error") == code, (headers, body[:300])
        doc = json.loads(body)
        assert doc.get("type") == "error" or doc["error"]["code"] == code, doc
    assert len(body) < 2048, "an error never echoes client input whole"
    assert all_received(mocks) == [], "nothing may reach a provider"


@pytest.mark.parametrize("listener,method,path,headers,body,status", mgmt_rows())
def test_management_abuse_is_refused(ctx, store, mocks, provider_keys, listener, method, path, headers, body, status):
    page = store.ok("GET", "/access-keys?limit=1")
    ak = next(v for v in page.values() if isinstance(v, list))[0]["id"]
    subst = {"ADMIN": store.admin_token, "GATEWAY": store.gateway_token, "KEY": ctx.key}
    headers = [(k, " ".join(subst.get(w, w) for w in v.split(" "))) for k, v in headers]
    path = path.replace("/PK", "/" + provider_keys["openai"]).replace("/AK/", f"/{ak}/").replace("=ADMIN", "=" + store.admin_token)
    port = store.api_port if listener == "api" else store.lookup_port
    got, _, text = raw_http(port, req(method, path, headers, body))
    assert got == status, (got, text[:300])
    assert all_received(mocks) == []


def test_the_same_key_gets_through_where_it_should(ctx, mocks):
    """Positive controls: the rows above are refused by the rules, not by a
    broken setup."""
    status, _, body = raw_http(ctx.port, req("POST", CHAT + AZURE, bearer(ctx.key), chat("hazure/cheap")))
    assert status == 200, body
    (r,) = all_received(mocks)
    assert r["path"] == "/openai/deployments/cheap/chat/completions" + AZURE
    assert r["json"]["model"] == "cheap"
    assert r["headers"]["api-key"].startswith("az-secret-") and ctx.key not in json.dumps(r)
    for path, model, upstream in [("/v1//chat///completions", "gpt-4o-mini", "/v1/chat/completions"),
                                  (CHAT, "gpt-4o-mini", "/v1/chat/completions")]:
        mocks["openai"].reset()
        status, _, body = raw_http(ctx.port, req("POST", path, bearer(ctx.key), chat(model)))
        assert status == 200, body
        assert [r["path"] for r in all_received(mocks)] == [upstream]
    mocks["openai"].reset()
    assert raw_http(ctx.port, req("GET", "/v1/models/gpt-4o-mini", bearer(ctx.key)))[0] == 200
    assert [r["path"] for r in all_received(mocks)] == ["/v1/models/gpt-4o-mini"]
    mocks["openai"].reset()
    # files.read reaches the files it allows (the mock has no such file: its 404 passes through).
    assert raw_http(ctx.port, req("GET", "/v1/files/file-1/content", bearer(ctx.files_key)))[0] == 404
    assert [(r["method"], r["path"]) for r in all_received(mocks)] == [("GET", "/v1/files/file-1/content")]


def test_a_provider_that_echoes_its_credential_has_it_scrubbed(ctx, mocks):
    raw_http(ctx.port, req("POST", CHAT, bearer(ctx.key), chat("hazure/cheap")))
    secret = hazure_credential(mocks)
    mocks["openai"].reset()
    echo = {"error": {"message": f"Incorrect API key provided: {secret}. ({secret})", "type": "invalid_request_error"}}
    mocks["openai"].script(secret, (400, {"x-echo": f"key={secret}"}, echo), (422, {}, b"x" * 70_000 + secret.encode() + b"y" * 5))
    status, headers, body = raw_http(ctx.port, req("POST", CHAT, bearer(ctx.key), chat("hazure/cheap")))
    assert status == 400
    assert secret not in body.decode() and secret not in json.dumps(headers), (headers, body)
    assert json.loads(body)["error"]["message"] == "Incorrect API key provided: [redacted]. ([redacted])"
    assert headers["x-echo"] == "key=[redacted]"
    # A long error body, in several chunks.
    status, headers, body = raw_http(ctx.port, req("POST", CHAT, bearer(ctx.key), chat("hazure/cheap")))
    assert status == 422 and secret.encode() not in body and body.endswith(b"x[redacted]yyyyy"), body[-40:]


def test_the_output_estimate_takes_the_largest_limit(gateway, store, mocks):
    """max_tokens 10 beside max_completion_tokens 5000 could spend a
    2,000-token budget to 5,011: the estimate takes the largest limit."""
    doc = store.ok("POST", "/access-keys", {"name": "budget-evasion", "budget": {"tokens": 2000}})
    body = chat("gpt-4o-mini", max_tokens=10, max_completion_tokens=5000)
    status, headers, _ = raw_http(gateway.port, req("POST", CHAT, bearer(doc["token"]), body))
    assert (status, headers.get("x-keygate-error")) == (402, "insufficient_credits")
    body = chat("gpt-4o-mini", max_tokens=10, n=500)
    status, headers, _ = raw_http(gateway.port, req("POST", CHAT, bearer(doc["token"]), body))
    assert (status, headers.get("x-keygate-error")) == (402, "insufficient_credits")
    assert all_received(mocks) == []
    assert raw_http(gateway.port, req("POST", CHAT, bearer(doc["token"]), chat("gpt-4o-mini", max_tokens=10)))[0] == 200



def test_a_qualified_model_in_a_form_is_rewritten(ctx, mocks):
    doc = form("openai/gpt-4o-mini", extra="hello")
    status, _, body = raw_http(ctx.port, req("POST", "/v1/audio/transcriptions", bearer(ctx.key), doc, content_type=FORM_TYPE))
    assert status == 200, body
    (r,) = all_received(mocks)
    assert r["path"] == "/v1/audio/transcriptions"
    assert r["raw"].encode() == doc.replace(b"openai/gpt-4o-mini", b"gpt-4o-mini")
    assert int(r["headers"].get("content-length", len(r["raw"]))) == len(r["raw"])


def test_a_client_request_id_carrying_a_key_goes_nowhere(ctx, mocks):
    """Envoy replaces an external client's x-request-id; were it kept, the
    filter would refuse it (and blank it before the access log)."""
    status, headers, _ = raw_http(ctx.port, req("POST", CHAT, bearer(ctx.key) + [("X-Request-Id", ctx.key)], chat()))
    assert status in (200, 400), status
    assert ctx.key not in json.dumps(headers)
    assert ctx.key not in json.dumps(all_received(mocks))

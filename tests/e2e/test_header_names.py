"""Header names that are not UTF-8, and the VM tag kept out of what clients see.

The filter removes an answer header named in such bytes when it echoes a
credential (`answer_headers`, `Edits::remove_raw`); these cases check that
Envoy 1.40 does not let such a name reach the filter at all, from a client
or from a provider.
"""

import socket
import threading
import uuid

from harness import raw_http
from test_gateway import new_config, new_key


def _raw_request(token, extra_header: bytes):
    body = b'{"model":"gpt-4o","max_tokens":1,"messages":[]}'
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n" + extra_header + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def test_a_client_header_name_that_is_not_utf8_never_reaches_the_filter(gateway, store, mocks):
    _, token = new_key(store)
    status, headers, _ = raw_http(gateway.port, _raw_request(token, b"X-\xff: v"))
    assert status == 400, (status, headers)
    assert all(m.received() == [] for m in mocks.values())


class RawProvider:
    """Answers every request with a header whose name is not UTF-8 and whose
    value echoes the provider credential."""

    def __init__(self, secret):
        self.secret = secret.encode()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                body = b'{"id":"x","choices":[]}'
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                             b"X-\xff: bad key " + self.secret + b"\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def test_a_provider_header_name_that_is_not_utf8_never_reaches_the_client(gateway, store, mocks):
    secret = "sk-raw-" + uuid.uuid4().hex
    raw = RawProvider(secret)
    pid = "raw-" + uuid.uuid4().hex[:6]
    store.ok("POST", "/providers", {"providerId": pid, "name": "raw", "baseUrl": f"http://127.0.0.1:{raw.port}/v1",
                                    "format": "openai"})
    key_id = store.ok("POST", "/provider-keys", {"providerId": pid, "name": "raw key", "value": secret,
                                                "managed": False})["id"]
    cfg = new_config(store, router={"rules": [{"provider": pid, "steps": [{"type": "user", "keys": [{"id": key_id}]}]}]})
    _, token = new_key(store, cfg)
    body = ('{"model":"%s/m","max_tokens":1,"messages":[]}' % pid).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
           + b"\r\nConnection: close\r\n\r\n" + body)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(req)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.close()
    print(got[:400])
    assert secret.encode() not in got, got


def test_the_vm_tag_is_not_disclosed_through_a_generated_request_id(gateway, store, mocks):
    """The gate tag's VM part (`Worker::vm_tag`) is also the prefix of the
    request ids the filter makes up (`keygate-<vm_tag>-<n>`), which the
    client gets back in x-keygate-request-id. Behind envoy.yaml Envoy always
    replaces the client's x-request-id, so the filter never makes one up."""
    _, token = new_key(store)
    status, headers, _ = raw_http(gateway.port, _raw_request(token, b"X-Request-Id: " + b"a" * 600))
    rid = headers.get("x-keygate-request-id", "")
    assert not rid.startswith("keygate-"), rid

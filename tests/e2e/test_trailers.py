"""An answer's trailers, end to end: a provider that echoes its credential in
an HTTP/2 trailer must not pass it to the client (`Worker::response_trailers`).

Trailers pass through Envoy only over HTTP/2 on both sides: the plain-http
upstream clusters speak HTTP/1.1, whose codec drops them, so the provider
here is a TLS HTTP/2 server (ALPN h2) with a certificate for `localhost`
from a CA made for the test, which the gateway trusts (KEYGATE_CA_BUNDLE);
the client speaks HTTP/2 to the listener (test_handover's client)."""

import json
import socket
import ssl
import subprocess
import threading
import uuid

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import start_gateway
from harness import record_response, wait_until
from test_handover import H2

OPENSSL = "/usr/bin/openssl"
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def make_certificates(directory):
    """A throwaway CA, and a server certificate it signed for localhost and
    127.0.0.1: (ca.pem, server.pem, server.key)."""
    ca_key, ca, key, csr, cert, ext = (directory / n for n in
                                       ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "server.ext"))

    def run(*args):
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=keygate test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1",
        "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


class TlsH2Provider:
    """An OpenAI-style provider over TLS and HTTP/2 only. Records what it
    receives; answers a chat completion whose trailers echo the credential
    it got when `echo` is set (else harmless ones only); answers 401 to a
    credential in `refuse`, its body echoing it too."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.set_alpn_protocols(["h2"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.alpn = []
        self.echo = True
        self.refuse = set()
        self.tail = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.sock.close()

    def reset(self, echo=True, refuse=(), tail=False):
        """`tail`: a chat is answered 400, its body ending in the first
        bytes of the credential it got (what a scrubber holds back)."""
        with self.lock:
            self.requests.clear()
            self.echo, self.refuse, self.tail = echo, set(refuse), tail

    def received(self):
        with self.lock:
            return list(self.requests)

    def _accept(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw):
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with self.lock:
            self.alpn.append(tls.selected_alpn_protocol())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams = {}
        try:
            tls.sendall(conn.data_to_send())
            while data := tls.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = {"headers": dict(event.headers), "body": b""}
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id]["body"] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._answer(conn, event.stream_id, streams.pop(event.stream_id))
                tls.sendall(conn.data_to_send())
        except OSError:
            pass
        finally:
            tls.close()

    def _answer(self, conn, sid, req):
        auth = req["headers"].get("authorization", "")
        credential = auth.removeprefix("Bearer ")
        with self.lock:
            self.requests.append(req)
            echo, refused, tail = self.echo, credential in self.refuse, self.tail
        model = json.loads(req["body"] or b"{}").get("model", "m")
        if tail:
            data = f'{{"error": {{"message": "unsupported parameter near {credential[:12]}'.encode()
            conn.send_headers(sid, [(":status", "400"), ("content-type", "application/json")])
            conn.send_data(sid, data)
            conn.send_headers(sid, [("x-served-by", "tls-mock")], end_stream=True)
            return
        elif refused:
            status, doc = "401", {"error": {"message": f"Incorrect API key provided: {auth}",
                                            "type": "invalid_request_error"}}
        else:
            status, doc = "200", {
                "id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello over h2"},
                             "finish_reason": "stop"}],
                "usage": USAGE,
            }
        data = json.dumps(doc).encode()
        conn.send_headers(sid, [(":status", status), ("content-type", "application/json"),
                                ("content-length", str(len(data)))])
        conn.send_data(sid, data)
        trailers = [("x-debug", "fine"), ("x-served-by", "tls-mock")]
        if echo:
            trailers = [("x-debug", f"saw {auth}"), ("x-debug", "fine"), ("x-debug", f"again {credential}"),
                        ("x-served-by", "tls-mock")]
        conn.send_headers(sid, trailers, end_stream=True)


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    ca, cert, key = make_certificates(tmp_path_factory.mktemp("tls"))
    p = TlsH2Provider(cert, key)
    p.ca = ca
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory, store, provider):
    gw = start_gateway(tmp_path_factory.mktemp("envoy-trailers"), store, KEYGATE_CA_BUNDLE=provider.ca)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def provider_id(store, provider):
    pid = "tls-" + uuid.uuid4().hex[:6]
    # localhost: the name the certificate is for (auto_sni, auto_san_validation).
    store.ok("POST", "/providers", {"providerId": pid, "name": "TLS HTTP/2", "format": "openai",
                                    "baseUrl": f"https://localhost:{provider.port}/v1"})
    return pid


@pytest.fixture(autouse=True)
def clean_provider(provider):
    provider.reset()


def provider_key(store, pid):
    value = f"sk-tls-{uuid.uuid4().hex}"
    key_id = store.ok("POST", "/provider-keys", {"providerId": pid, "name": "tls key", "value": value,
                                                 "managed": False})["id"]
    return key_id, value


def access_key(store, pid, *key_ids):
    router = {"rules": [{"provider": pid, "steps": [{"type": "user", "keySelectionStrategy": "ordered",
                                                     "keys": [{"id": k} for k in key_ids]}]}]}
    cfg = store.ok("POST", "/access-key-configurations", {"name": f"trl-{uuid.uuid4().hex[:8]}", "router": router})["id"]
    doc = store.ok("POST", "/access-keys", {"name": "trailers", "accessKeyConfigurationId": cfg})
    return doc["id"], doc["token"]


def ask(gateway, token, pid):
    """One chat completion over HTTP/2: the client's stream (status, headers,
    body, trailers), recorded for the canary sweep."""
    body = json.dumps({"model": f"{pid}/m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with H2(gateway.port) as c:
        sid = c.open(token, len(body))
        c.send(sid, body, end=True)
        (got,) = c.wait(sid)
    record_response(f"h2:{gateway.port}", got["status"], list(got["headers"].items()) + got["trailers"], got["body"])
    return got


def assert_answered(got):
    assert got["status"] == 200, (got["headers"], got["body"][:300])
    doc = json.loads(got["body"])
    assert doc["choices"][0]["message"]["content"] == "hello over h2"
    assert doc["usage"] == USAGE


def assert_nowhere(secret, got):
    seen = json.dumps(got["headers"]) + json.dumps(got["trailers"]) + got["body"].decode("utf-8", "replace")
    assert secret not in seen, got


def upstream_requests(gateway):
    """Requests each provider cluster has sent, by cluster name (not the
    store's: the access key's lookup goes there)."""
    names = {s.get("name", ""): s.get("value") for s in gateway.stats()["stats"]}
    return {n.split(".")[1]: v for n, v in names.items()
            if n.startswith("cluster.keygate_") and n.endswith(".upstream_rq_total") and ".keygate_store." not in n}


def assert_went_through(gateway, before, cluster, count):
    """`count` more requests went out through `cluster` (and no other)."""
    def moved():
        now = upstream_requests(gateway)
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)} == {cluster: count}

    wait_until(moved, timeout=2, what=f"{count} requests through {cluster}")


def values(trailers, name):
    return [v for n, v in trailers if n == name]


def test_a_credential_echoed_in_a_trailer_is_scrubbed(tls_gateway, store, provider, provider_id):
    key_id, secret = provider_key(store, provider_id)
    _, token = access_key(store, provider_id, key_id)
    before = upstream_requests(tls_gateway)
    got = ask(tls_gateway, token, provider_id)
    assert_answered(got)
    # One credential: the direct cluster, with no upstream filter.
    assert_went_through(tls_gateway, before, "keygate_direct_https", 1)
    # The credential was there to echo, over HTTP/2 (the only way trailers pass).
    [req] = provider.received()
    assert req["headers"]["authorization"] == f"Bearer {secret}"
    assert token not in json.dumps(req["headers"]) + req["body"].decode()
    assert set(provider.alpn) == {"h2"}, provider.alpn
    assert_nowhere(secret, got)
    # Every copy of the echoing name is kept, in order, each scrubbed.
    assert values(got["trailers"], "x-debug") == ["saw Bearer [redacted]", "fine", "again [redacted]"], got["trailers"]
    assert values(got["trailers"], "x-served-by") == ["tls-mock"], got["trailers"]


def test_trailers_without_an_echo_pass_unchanged(tls_gateway, store, provider, provider_id):
    provider.reset(echo=False)
    key_id, secret = provider_key(store, provider_id)
    _, token = access_key(store, provider_id, key_id)
    got = ask(tls_gateway, token, provider_id)
    assert_answered(got)
    assert [r["headers"]["authorization"] for r in provider.received()] == [f"Bearer {secret}"]
    assert_nowhere(secret, got)
    assert [(n, v) for n, v in got["trailers"] if n in ("x-debug", "x-served-by")] == \
        [("x-debug", "fine"), ("x-served-by", "tls-mock")], got["trailers"]


def test_after_a_failover_the_serving_credential_is_scrubbed_from_the_trailers(tls_gateway, store, provider,
                                                                               provider_id):
    """Two candidate credentials: the request goes through the upstream
    filter's cluster (keygate_upstream_https), the first is refused, the
    second answers and its trailers echo it."""
    (a, va), (b, vb) = provider_key(store, provider_id), provider_key(store, provider_id)
    provider.reset(refuse={va})
    _, token = access_key(store, provider_id, a, b)
    before = upstream_requests(tls_gateway)
    got = ask(tls_gateway, token, provider_id)
    assert_answered(got)
    assert_went_through(tls_gateway, before, "keygate_upstream_https", 2)
    assert [r["headers"]["authorization"] for r in provider.received()] == [f"Bearer {va}", f"Bearer {vb}"]
    assert got["headers"].get("x-keygate-attempts") == "2", got["headers"]
    assert_nowhere(va, got)
    assert_nowhere(vb, got)
    assert values(got["trailers"], "x-debug") == ["saw Bearer [redacted]", "fine", "again [redacted]"], got["trailers"]


def test_a_refused_answer_ended_by_trailers_is_still_replaced(tls_gateway, store, provider, provider_id):
    """The filter holds a failed answer to replace it (all keys failed), and
    replaces it when its last body chunk comes: with trailers, no body chunk
    is the last, so the replacing happens in the trailers' callback, else
    Envoy passes the provider's body on as it is, credential and all."""
    key_id, secret = provider_key(store, provider_id)
    provider.reset(refuse={secret})
    _, token = access_key(store, provider_id, key_id)
    got = ask(tls_gateway, token, provider_id)
    assert got["status"] == 401, got
    assert [r["headers"]["authorization"] for r in provider.received()] == [f"Bearer {secret}"]
    assert json.loads(got["body"])["error"]["code"] == "all_provider_keys_failed", got["body"]
    assert_nowhere(secret, got)
    assert values(got["trailers"], "x-debug") == ["saw Bearer [redacted]", "fine", "again [redacted]"], got["trailers"]


def cut_answers(gateway):
    """`keygate.answers.cut` as the gateway reports it (0 until counted)."""
    names = {s.get("name", ""): s.get("value") for s in gateway.stats()["stats"]}
    return names.get("wasmcustom.keygate.answers.cut", 0)


def test_a_held_back_tail_that_trailers_cut_off_resets_the_answer(tls_gateway, store, provider, provider_id):
    """An error answer is scrubbed as it streams: a chunk's last bytes that
    could begin the credential wait for the next chunk. Trailers end the
    stream instead: that tail has nowhere to go, so the client's stream is
    reset rather than cut short silently, and the tail never passes."""
    key_id, secret = provider_key(store, provider_id)
    provider.reset(tail=True)
    _, token = access_key(store, provider_id, key_id)
    before = cut_answers(tls_gateway)
    got = ask(tls_gateway, token, provider_id)
    assert [r["headers"]["authorization"] for r in provider.received()] == [f"Bearer {secret}"]
    assert got["reset"], got
    assert got["status"] == 400 and got["trailers"] == [], got
    assert secret[:12].encode() not in got["body"], got["body"]
    assert got["body"].startswith(b'{"error": {"message": "unsupported parameter near'), got["body"]
    wait_until(lambda: cut_answers(tls_gateway) == before + 1, timeout=2, what="the cut counted")
    # An answer with nothing held back still ends in its trailers.
    provider.reset(echo=False)
    got = ask(tls_gateway, token, provider_id)
    assert not got["reset"] and got["status"] == 200, got

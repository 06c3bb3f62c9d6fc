"""The gate reads each body as it passes and hands what it found (model,
output limit, any access key) to the keygate filter of the *same* request,
in that request's filter state. These tests hold that handover at
its boundaries on one HTTP/2 connection, where the streams of many requests
interleave on one worker: interleaved bodies, a 413, a reset mid-body,
trailers, and a client that sends the former handover header
(`x-keygate-gate`) itself. The key may use
`openai/gpt-4o-mini` only, so a request judged by another's body would be
visibly wrong."""

import json
import socket
import uuid

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import start_gateway

CHAT = "/v1/chat/completions"
MAX_BODY = 4096


def body(model, pad=0):
    doc = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi" + " " * pad}]}
    return json.dumps(doc).encode()


class H2:
    """A bare HTTP/2 (prior knowledge) client that sends frames in the order
    a test says, so streams interleave exactly as written."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.streams = {}

    def flush(self):
        self.sock.sendall(self.conn.data_to_send())

    def open(self, token, length=None, extra=()):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "gateway"), (":path", CHAT),
                   ("content-type", "application/json"), ("authorization", f"Bearer {token}"), *extra]
        if length is not None:
            headers.append(("content-length", str(length)))
        self.conn.send_headers(sid, headers)
        self.flush()
        self.streams[sid] = {"status": None, "headers": {}, "body": b"", "trailers": [], "done": False,
                             "reset": False}
        return sid

    def send(self, sid, data, end=False):
        self.conn.send_data(sid, data, end_stream=end)
        self.flush()

    def trailers(self, sid, headers):
        self.conn.send_headers(sid, headers, end_stream=True)
        self.flush()

    def reset(self, sid):
        self.conn.reset_stream(sid)
        self.flush()
        self.streams[sid]["done"] = True

    def wait(self, *sids):
        while not all(self.streams[s]["done"] for s in sids):
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the connection closed")
            for event in self.conn.receive_data(data):
                st = self.streams.get(getattr(event, "stream_id", None))
                if isinstance(event, h2.events.ResponseReceived):
                    st["headers"] = dict(event.headers)
                    st["status"] = int(st["headers"][":status"])
                elif isinstance(event, h2.events.DataReceived):
                    st["body"] += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    st["trailers"] = list(event.headers)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and st is not None:
                    st["done"] = True
                    st["reset"] = isinstance(event, h2.events.StreamReset)
            self.flush()
        return [self.streams[s] for s in sids]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, store, mocks):
    gw = start_gateway(tmp_path_factory.mktemp("envoy-handover"), store, KEYGATE_MAX_BODY_BYTES=MAX_BODY)
    access = {"models": {"allow": ["openai/gpt-4o-mini"]}}
    cfg = store.ok("POST", "/access-key-configurations", {"name": f"handover-{uuid.uuid4().hex[:6]}", "access": access})["id"]
    token = store.ok("POST", "/access-keys", {"name": "handover", "accessKeyConfigurationId": cfg})["token"]
    yield gw, token
    gw.stop()


def models_received(mocks):
    return [r["json"]["model"] for r in mocks["openai"].received()]


def code(stream):
    return stream["headers"].get("x-keygate-error")


def test_interleaved_bodies_are_each_judged_by_their_own_request(setup, mocks):
    gw, token = setup
    with H2(gw.port) as c:
        for _ in range(3):
            ok, bad = body("gpt-4o-mini", pad=200), body("gpt-4o", pad=200)
            a = c.open(token, len(ok))
            b = c.open(token, len(bad))
            # Body chunks alternate between the two streams; the refused one ends first.
            c.send(a, ok[:100])
            c.send(b, bad[:100])
            c.send(b, bad[100:], end=True)
            c.send(a, ok[100:], end=True)
            ra, rb = c.wait(a, b)
            assert ra["status"] == 200, (ra["headers"], ra["body"][:300])
            assert (rb["status"], code(rb)) == (403, "model_not_allowed"), (rb["headers"], rb["body"][:300])
    assert models_received(mocks) == ["gpt-4o-mini"] * 3


def test_a_body_over_the_limit_leaves_nothing_for_the_next_request(setup, mocks):
    gw, token = setup
    with H2(gw.port) as c:
        big = c.open(token)  # no content-length: the buffer filter finds out
        c.send(big, body("gpt-4o-mini", pad=MAX_BODY)[:MAX_BODY + 100], end=True)
        (r,) = c.wait(big)
        assert r["status"] == 413
        bad = body("gpt-4o")
        nxt = c.open(token, len(bad))
        c.send(nxt, bad, end=True)
        (r,) = c.wait(nxt)
        assert (r["status"], code(r)) == (403, "model_not_allowed")
    assert models_received(mocks) == []


def test_a_request_reset_mid_body_sends_nothing_and_its_neighbour_is_judged_alone(setup, mocks):
    gw, token = setup
    with H2(gw.port) as c:
        ok, bad = body("gpt-4o-mini"), body("gpt-4o")
        gone = c.open(token, len(ok))
        c.send(gone, ok[:40])
        c.reset(gone)
        b = c.open(token, len(bad))
        c.send(b, bad, end=True)
        (rb,) = c.wait(b)
        assert (rb["status"], code(rb)) == (403, "model_not_allowed")
        a = c.open(token, len(ok))
        c.send(a, ok, end=True)
        (ra,) = c.wait(a)
        assert ra["status"] == 200
    assert models_received(mocks) == ["gpt-4o-mini"]


def test_request_trailers_are_refused_and_nothing_goes_upstream(setup, mocks):
    gw, token = setup
    with H2(gw.port) as c:
        ok = body("gpt-4o-mini")
        s = c.open(token, len(ok))
        c.send(s, ok)
        c.trailers(s, [("x-trailer", "1")])
        (r,) = c.wait(s)
        assert (r["status"], code(r)) == (400, "unexpected_trailers")
    assert models_received(mocks) == []


def test_a_gate_named_by_the_client_is_ignored(setup, mocks):
    gw, token = setup
    with H2(gw.port) as c:
        ok, bad = body("gpt-4o-mini"), body("gpt-4o")
        # Stream 1 uploads an allowed body and waits; stream 3 names every
        # likely gate id itself and carries a refused model.
        a = c.open(token, len(ok))
        c.send(a, ok[:40])
        for guess in range(1, 40):
            b = c.open(token, len(bad), extra=[("x-keygate-gate", str(guess))])
            c.send(b, bad, end=True)
            (rb,) = c.wait(b)
            assert (rb["status"], code(rb)) == (403, "model_not_allowed"), guess
        c.send(a, ok[40:], end=True)
        (ra,) = c.wait(a)
        assert ra["status"] == 200
    received = mocks["openai"].received()
    assert [r["json"]["model"] for r in received] == ["gpt-4o-mini"]
    assert not any(k.startswith("x-keygate") for k in received[0]["headers"]), received[0]["headers"]


def test_a_clients_request_id_is_not_what_the_handover_goes_by(setup, mocks):
    """The gate hands over to the filter just after it, checked by the
    request's `x-request-id`. This listener (`use_remote_address`, no
    trusted addresses) gives every request an id of Envoy's own: two
    interleaved streams that send one id get two, and each is judged by
    its own body. (Two gates with one id, as a gateway that keeps its
    clients' ids would see, are the unit tests'.)"""
    gw, token = setup
    sent = f"dup-{uuid.uuid4().hex[:8]}"
    with H2(gw.port) as c:
        ok, bad = body("gpt-4o-mini"), body("gpt-4o")
        a = c.open(token, len(ok), extra=[("x-request-id", sent)])
        c.send(a, ok[:40])
        b = c.open(token, len(bad), extra=[("x-request-id", sent)])
        c.send(b, bad, end=True)
        (rb,) = c.wait(b)
        assert (rb["status"], code(rb)) == (403, "model_not_allowed")
        c.send(a, ok[40:], end=True)
        (ra,) = c.wait(a)
        assert ra["status"] == 200, ra
    received = mocks["openai"].received()
    assert [r["json"]["model"] for r in received] == ["gpt-4o-mini"]
    seen = received[0]["headers"].get("x-request-id")
    assert seen and seen != sent, seen

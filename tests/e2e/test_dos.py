"""What clients without a valid key can make Envoy hold. Keyless and
malformed keys are refused from the headers, before any body is read; a
well-formed key the store does not know is looked up as soon as its headers
arrive and refused while its body is still uploading. Measured: N such
connections, each sending a large body, grow Envoy's resident memory by less
than the bound the README states."""

import os
import socket
import threading
import time

import pytest

from harness import Envoy, wait_until, http
from keygate_token import well_formed_token

CONNECTIONS = 48
BODY = 7 * 1024 * 1024
# The README's bound for the whole attack (not per connection).
BOUND_MIB = 16


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def upload(port, headers, results, length=BODY):
    """Sends headers and up to `length` bytes of body; notes the status it got."""
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode()
    chunk = b'{"model":"gpt-4o","x":"' + b"a" * (64 * 1024)
    sent = 0
    status = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(head)
            try:
                while sent < length:
                    n = min(len(chunk), length - sent)
                    s.sendall(chunk[:n])
                    sent += n
            except OSError:
                pass  # refused and closed while we were still sending
            try:
                line = s.recv(200).split(b"\r\n", 1)[0]
                status = int(line.split()[1]) if line else None
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    results.append((status, sent))


def attack(envoy, headers_of):
    pid = envoy.proc.pid
    before = rss_mib(pid)
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results = []
    threads = [threading.Thread(target=upload, args=(envoy.port, headers_of(i), results)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    sampler.join()
    return before, peak[0], results


@pytest.fixture
def lone_gateway(tmp_path_factory, store, provider_keys):
    """A fresh Envoy per case: memory Envoy freed is not given back to the
    system, so a case after another would see the earlier peak."""
    e = Envoy(tmp_path_factory.mktemp("dos"), store.lookup_port, store.gateway_token, concurrency=2).start()
    # Warm up: both workers, the VMs, a store lookup.
    for _ in range(20):
        http("POST", e.url + "/v1/chat/completions", {"model": "gpt-4o"}, {"authorization": f"Bearer {well_formed_token()}"})
    yield e
    e.stop()


@pytest.mark.parametrize("who,headers_of,code", [
    ("no key", lambda i: [], 401),
    ("malformed key", lambda i: [("authorization", "Bearer kg-not-a-key")], 401),
    ("unknown well-formed key", lambda i: [("authorization", f"Bearer {well_formed_token()}")], 401),
    # Every connection with the same new key: one lookup, answered through every gate.
    ("one unknown key on every connection", lambda i, t=well_formed_token(): [("authorization", f"Bearer {t}")], 401),
])
def test_clients_without_a_valid_key_cannot_make_envoy_buffer(lone_gateway, mocks, who, headers_of, code):
    before, peak, results = attack(lone_gateway, headers_of)
    grown = peak - before
    sent = sum(s for _, s in results) / 1024 / 1024
    print(f"\n{CONNECTIONS} connections with {who}, {BODY >> 20} MiB bodies: {sent:.0f} MiB sent before the refusal, "
          f"Envoy RSS {before:.0f} -> peak {peak:.0f} MiB (+{grown:.1f} MiB)")
    assert len(results) == CONNECTIONS
    assert all(status in (code, None) for status, _ in results), results
    assert sum(1 for status, _ in results if status == code) >= CONNECTIONS // 2, results
    assert grown <= BOUND_MIB, f"Envoy grew by {grown:.1f} MiB"
    assert [r for m in mocks.values() for r in m.received()] == []


def test_a_refused_small_request_keeps_its_connection(gateway):
    """A small body is read before the refusal is sent, so the client keeps
    its connection (a refusal before the body would make Envoy close it); a
    large one is refused at once."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body=b'{"model":"gpt-4o"}', headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 401 and resp.getheader("connection") != "close"
        sock = conn.sock
        assert sock is not None, "the connection was kept"
    finally:
        conn.close()
    results = []
    upload(gateway.port, [], results, length=1024 * 1024)
    assert results[0][0] == 401

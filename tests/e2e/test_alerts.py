"""Budget alerts end to end: real traffic through Envoy (the official OpenAI
SDK) settles usage past a key's budget threshold, and the store POSTs one
signed delivery to a webhook receiver running in the test, which verifies
the signature as the README shows; a receiver that fails first gets retries
until the delivery is delivered. The session store retries after 100 ms
(KEYGATE_ALERT_RETRY_BASE_MS in harness.Store)."""

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

from harness import wait_until

# Each chat answer of the mock counts 11 input + 7 output tokens.
TOKENS_PER_REQUEST = 18
TOLERANCE_SECONDS = 300


def verify(secret, headers, body, now=None):
    """A receiver's check (the README's, in Python): HMAC-SHA256 of
    "<t>.<raw body>" under the secret, compared in constant time, and a
    timestamp within 5 minutes (an older one is a replay)."""
    fields = dict(part.split("=", 1) for part in headers["x-keygate-signature"].split(","))
    t = int(fields["t"])
    if abs((now or time.time()) - t) > TOLERANCE_SECONDS:
        raise ValueError("stale timestamp: a replay?")
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, fields["v1"]):
        raise ValueError("bad signature")
    return json.loads(body)


class Receiver:
    """A webhook receiver on 127.0.0.1: verifies each delivery, records it and
    answers the scripted statuses in turn, then 200 (401 if unverified)."""

    def __init__(self, statuses=()):
        self.secret = None
        self.statuses = list(statuses)
        self.got = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload, verified = verify(receiver.secret, headers, body), True
                except (KeyError, ValueError):
                    payload, verified = None, False
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.got.append({"headers": headers, "body": body, "payload": payload,
                                         "verified": verified, "status": status, "at": time.monotonic()})
                self.send_response(status if verified else 401)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/keygate-alerts"

    def received(self):
        with self.lock:
            return list(self.got)

    def stop(self):
        self.server.shutdown()


def setup(store, receiver, thresholds):
    """A configuration of its own (so no other test's budget reaches this
    webhook), a webhook scoped to it, and a key with a 100-token daily budget."""
    name = f"alerts-{uuid.uuid4().hex[:8]}"
    cfg = store.ok("POST", "/access-key-configurations", {"name": name})["id"]
    hook = store.ok("POST", "/alert-webhooks", {"url": receiver.url, "configurationId": cfg,
                                                "thresholds": thresholds, "events": ["budget"]})
    assert hook["secret"].startswith("whsec_")
    receiver.secret = hook["secret"]
    key = store.ok("POST", "/access-keys", {"name": name, "accessKeyConfigurationId": cfg,
                                            "budget": {"tokens": 100, "window": "daily"}})
    return hook, key


def chat(gateway, store, key, n):
    """n requests through Envoy with the OpenAI SDK, each waiting for its usage
    to be flushed and settled (a pending reservation would hold the budget).
    Returns when the last answer came back."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["token"], max_retries=0)
    answered = None
    for _ in range(n):
        before = store.ok("GET", f"/access-keys/{key['id']}")["budgetUsage"]["tokens"]
        resp = client.chat.completions.create(model="gpt-4o", max_tokens=16,
                                              messages=[{"role": "user", "content": "hi"}])
        answered = time.monotonic()
        assert resp.usage.total_tokens == TOKENS_PER_REQUEST
        wait_until(lambda: store.ok("GET", f"/access-keys/{key['id']}")["budgetUsage"]["tokens"]
                   == before + TOKENS_PER_REQUEST, timeout=10, what="usage flushed and settled")
    return answered


def deliveries(store, hook):
    return store.ok("GET", f"/alert-webhooks/{hook['id']}/deliveries")["deliveries"]


def test_crossing_a_budget_threshold_sends_exactly_one_signed_delivery(gateway, store, mocks):
    receiver = Receiver()
    try:
        hook, key = setup(store, receiver, [30, 90])
        start = time.monotonic()
        chat(gateway, store, key, 1)  # 18 %: nothing
        time.sleep(0.3)
        assert receiver.received() == []
        answered = chat(gateway, store, key, 1)  # 36 %: 30 crossed
        wait_until(lambda: len(receiver.received()) == 1, timeout=10, what="the delivery")
        latency = receiver.received()[0]["at"] - answered
        chat(gateway, store, key, 1)  # 54 %: 30 already sent, 90 not reached
        time.sleep(1.5)
        [got] = receiver.received()
        assert got["verified"], got
        p = got["payload"]
        assert p["event"] == "budget.threshold" and got["headers"]["x-keygate-event"] == "budget.threshold"
        assert got["headers"]["x-keygate-delivery"] == p["id"]
        assert got["headers"]["content-type"] == "application/json"
        assert p["threshold"] == 30 and p["unit"] == "tokens"
        assert (p["used"], p["limit"], p["usedPercent"]) == (36, 100, 36.0)
        assert p["subject"] == {"type": "access_key", "id": key["id"], "name": key["name"]}
        assert p["window"]["kind"] == "daily" and p["window"]["start"].endswith("T00:00:00.000Z")
        assert receiver.secret.encode() not in got["body"]
        # Tampering is caught; so is the same delivery replayed 10 minutes later.
        forged = got["body"].replace(b'"used":36', b'"used":1')
        assert forged != got["body"]
        for body, now in [(forged, None), (got["body"], time.time() + 600)]:
            try:
                verify(receiver.secret, got["headers"], body, now)
                raise AssertionError("accepted a forged or replayed delivery")
            except ValueError:
                pass
        [d] = deliveries(store, hook)
        assert (d["status"], d["attempts"], d["lastStatus"], d["lastError"]) == ("delivered", 1, 200, None)
        assert d["id"] == p["id"] and d["payload"] == p
        # The secret: in the create answer only.
        assert "secret" not in store.ok("GET", f"/alert-webhooks/{hook['id']}")
        assert receiver.secret not in json.dumps(deliveries(store, hook))
        print(f"\nthe answer that crossed 30 % -> its delivery received: {latency * 1000:.0f} ms, the usage flush "
              f"included; traffic, flushes and the wait for a second delivery: {time.monotonic() - start:.1f} s")
    finally:
        receiver.stop()


def test_a_receiver_that_fails_first_gets_retries_and_the_delivery_ends_delivered(gateway, store, mocks):
    receiver = Receiver(statuses=[500, 500])
    try:
        hook, key = setup(store, receiver, [30])
        answered = chat(gateway, store, key, 2)  # 36 %
        wait_until(lambda: deliveries(store, hook) and deliveries(store, hook)[0]["status"] == "delivered",
                   timeout=15, what="the delivery, after retries")
        [d] = deliveries(store, hook)
        assert (d["attempts"], d["lastStatus"], d["lastError"]) == (3, 200, None)
        assert [a["status"] for a in d["attemptLog"]] == [500, 500, 200]
        assert [a["error"] for a in d["attemptLog"]] == ["HTTP 500", "HTTP 500", None]
        got = receiver.received()
        assert [g["status"] for g in got] == [500, 500, 200]
        assert all(g["verified"] for g in got)
        assert len({g["headers"]["x-keygate-delivery"] for g in got}) == 1, "one delivery, three attempts"
        assert len({g["body"] for g in got}) == 1, "the same bytes each time"
        gaps = [b["at"] - a["at"] for a, b in zip(got, got[1:])]
        took = got[-1]["at"] - answered
        # Backoff: 100 ms, then 200 ms (the worker may wake a little late, never early).
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
        print(f"\n500, 500, 200: delivered {took * 1000:.0f} ms after the answer that crossed 30 % "
              f"(gaps {', '.join(f'{g * 1000:.0f} ms' for g in gaps)})")
    finally:
        receiver.stop()

"""The Istio tier: keygate as the Istio ingress gateway runs it
(tests/e2e/istio_mesh.py) — the downstream half a WasmPlugin delivered over
ECDS, in a VM Istio configures (no vm_id), the upstream half the EnvoyFilter's
cluster filter in a VM of its own, the VirtualService's retry policy. The
halves share nothing but each request's filter state. Everything the plain
gateway promises must hold here too, and through a plugin update."""

import hashlib
import threading
import time
import uuid
from collections import Counter

import anthropic
import openai
import pytest

import harness
from conftest import STACKS
from istio_mesh import IstioGateway, rebuilt
from test_failover import chat, credentials_seen, key_with_steps, user_key, user_step
from test_revocation import HARD_BOUND_S, Conn, time_to_refusal, worker_connections


@pytest.fixture(scope="module")
def istio(tmp_path_factory, store, provider_keys):
    gw = IstioGateway(tmp_path_factory.mktemp("istio"), store, concurrency=2).start()
    STACKS.append(gw)
    yield gw
    gw.stop()


def openai_client(gw, token):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0)


def new_token(store, **fields):
    return store.ok("POST", "/access-keys", {"name": f"istio-{uuid.uuid4().hex[:8]}", **fields})["token"]


def test_a_managed_key_through_the_sdks(istio, store, mocks):
    token = new_token(store)
    raw = openai_client(istio, token).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "hello from openai"
    assert raw.headers["x-keygate-attempts"] == "1"
    (req,) = mocks["openai"].received()
    assert req["headers"]["authorization"].startswith("Bearer sk-openai-managed-")
    assert token not in str(req)

    msg = anthropic.Anthropic(base_url=istio.url, api_key=token, max_retries=0).messages.create(
        model="claude-sonnet-4-6", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "hello from anthropic"
    (req,) = mocks["anthropic"].received()
    assert req["headers"]["x-api-key"].startswith("sk-ant-managed-")
    assert "authorization" not in req["headers"] and token not in str(req)


def test_failover_429_then_401_then_success(istio, store, mocks):
    (a, va), (b, vb), (c, vc) = user_key(store), user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b, c)])
    mocks["openai"].script(va, (429, {"retry-after": "30"}, {"error": {"message": "rate limited"}}))
    mocks["openai"].script(vb, (401, {}, {"error": {"message": "invalid key"}}))
    raw = openai_client(istio, token).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content == "hello from openai"
    assert credentials_seen(mocks["openai"]) == [va, vb, vc], "A, then B, then C, each once"
    for req, own in zip(mocks["openai"].received(), [va, vb, vc]):
        others = {va, vb, vc} - {own}
        assert not any(o in str(req["headers"]) for o in others), "each attempt carries only its own credential"
        assert token not in str(req)
    assert raw.headers["x-keygate-attempts"] == "3"
    assert raw.headers["x-keygate-provider-key"] == c


def test_every_key_failing_names_each_attempt(istio, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (500, {}, {"error": {"message": "boom"}}))
    mocks["openai"].script(vb, (502, {}, {"error": {"message": "bad gateway"}}))
    client = openai_client(istio, token)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502 and e.value.code == "all_provider_keys_failed"
    msg = e.value.body["message"]
    assert f"{a}: 500" in msg and f"{b}: 502" in msg
    assert va not in msg and vb not in msg
    assert e.value.response.headers["x-keygate-attempts"] == "2"
    assert credentials_seen(mocks["openai"]) == [va, vb]


def test_cooldown_skips_a_rate_limited_key_until_retry_after(istio, store, mocks):
    (a, va), (b, vb) = user_key(store), user_key(store)
    token = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, (429, {"retry-after": "2"}, {"error": {"message": "slow down"}}))
    assert chat(istio, token)[0] == 200
    assert credentials_seen(mocks["openai"]) == [va, vb]
    mocks["openai"].reset()
    for _ in range(6):  # fresh connections, over both workers: the cooldown is process-wide
        status, _, headers = chat(istio, token)
        assert status == 200 and headers["x-keygate-attempts"] == "1"
    assert set(credentials_seen(mocks["openai"])) == {vb}
    time.sleep(2.2)
    mocks["openai"].reset()
    assert chat(istio, token)[0] == 200
    assert credentials_seen(mocks["openai"]) == [va], "A is used again after its Retry-After"


def test_a_rate_limited_key_is_refused_past_its_limit(istio, store, mocks):
    limit = 4
    cfg = store.ok("POST", "/access-key-configurations", {"name": f"rl-{uuid.uuid4().hex[:8]}",
                                                           "rateLimits": {"requestsPerMinute": limit}})["id"]
    client = openai_client(istio, new_token(store, accessKeyConfigurationId=cfg))
    # The WasmPlugin's window is a minute: stay inside one.
    if time.time() % 60 > 55:
        time.sleep(60.5 - time.time() % 60)
    for _ in range(limit):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert e.value.code == "rate_limit_exceeded"
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.response.headers["x-ratelimit-limit-requests"] == str(limit)
    assert len(mocks["openai"].received()) == limit


def test_a_revoked_key_is_refused_by_every_worker(istio, store, mocks):
    doc = store.ok("POST", "/access-keys", {"name": f"istio-rev-{uuid.uuid4().hex[:8]}"})
    conns = [Conn(istio.port) for _ in range(12)]
    for c in conns:
        assert c.status(doc["token"]) == 200
    workers = worker_connections(istio)
    assert len([w for w, n in workers.items() if n > 0]) == 2, f"connections must cover both workers: {workers}"
    per_conn = time_to_refusal(conns, doc["token"], lambda: store.ok("DELETE", f"/access-keys/{doc['id']}"), 401)
    print(f"\nrevocation seen by every connection after {max(per_conn) * 1000:.0f}ms")
    assert max(per_conn) <= HARD_BOUND_S


class Traffic:
    """Requests without pause, one thread per sender; every answer is kept."""

    def __init__(self, senders):
        self.stop, self.results = threading.Event(), []
        self.threads = [threading.Thread(target=self.run, args=(send,)) for send in senders]

    def run(self, send):
        while not self.stop.is_set():
            status, doc, headers = send()
            self.results.append((time.monotonic(), status, doc, headers))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.mark.parametrize("failover", [False, True], ids=["single-key", "failover"])
def test_plugin_update_under_traffic(istio, store, mocks, provider_keys, tmp_path, failover):
    """Two WasmPlugin updates while requests flow: the agent's copy of the
    same module under a new image digest (Envoy keeps the VM), then a new
    build (Envoy starts a new VM for the downstream half). No request may
    fail or reach the provider with a wrong credential or none."""
    single = new_token(store)
    (a, va), (b, vb) = user_key(store), user_key(store)
    multi = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, *[(500, {}, {"error": {"message": "down"}})] * 100000)
    senders = [lambda: chat(istio, single)] * 3 + ([lambda: chat(istio, multi)] * 2 if failover else [])
    configured = istio.log().count("keygate: configured (keygate)")
    version = int(istio.resource_version)
    with Traffic(senders) as traffic:
        time.sleep(1)
        digest = hashlib.sha256(f"rebuilt image {time.time()}".encode()).hexdigest()
        istio.update_plugin(str(version + 1), istio.agent_fetch(istio.module, image_digest=digest))
        time.sleep(1)
        istio.update_plugin(str(version + 2), istio.agent_fetch(rebuilt(harness.WASM, uuid.uuid4().hex[:8], tmp_path)))
        updated = time.monotonic()
        time.sleep(3)
    assert [c["version"] for c in istio.ecds_configs()] == [str(version + 2)]
    assert istio.log().count("keygate: configured (keygate)") >= configured + 2, "the new build runs on each worker"
    results = traffic.results
    statuses = Counter(r[1] for r in results)
    assert set(statuses) == {200}, statuses
    assert len([r for r in results if r[0] > updated]) >= 20, "traffic went on after the update"
    keys = Counter((r[3].get("x-keygate-provider-key"), r[3].get("x-keygate-attempts")) for r in results)
    assert set(keys) <= {(provider_keys["openai"], "1"), (b, "2")}, keys
    seen = Counter(credentials_seen(mocks["openai"]))
    managed = next((c for c in seen if c.startswith("sk-openai-managed-")), None)
    assert set(seen) <= {managed, va, vb}, "every attempt carried one of its request's credentials"
    assert seen[managed] == keys[(provider_keys["openai"], "1")]
    assert seen[va] == seen[vb] == keys[(b, "2")]
    if failover:
        assert keys[(b, "2")] >= 20, "failover traffic ran"


@pytest.fixture(scope="module")
def istio_pre_118(tmp_path_factory, store, provider_keys):
    """The same gateway as an agent before Istio 1.18 configured it: the
    resource version stays in the VM's environment, and changes with each edit."""
    gw = IstioGateway(tmp_path_factory.mktemp("istio-pre-118"), store, concurrency=2, strip_meta=False).start()
    STACKS.append(gw)
    yield gw
    gw.stop()


def test_a_new_resource_version_in_the_vm_environment_under_traffic(istio_pre_118, store, mocks):
    """The shape the issue names: ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION in
    vm_config's environment. A version-only edit changes it; failover traffic
    goes on through the update without a failure."""
    gw = istio_pre_118
    assert [c["env_version"] for c in gw.ecds_configs()] == ["1"]
    (a, va), (b, vb) = user_key(store), user_key(store)
    multi = key_with_steps(store, [user_step(a, b)])
    mocks["openai"].script(va, *[(429, {"retry-after": "0.001"}, {"error": {"message": "slow"}})] * 100000)
    with Traffic([lambda: chat(gw, multi)] * 3) as traffic:
        time.sleep(1)
        gw.update_plugin("2")
        updated = time.monotonic()
        time.sleep(2)
    assert [(c["version"], c["env_version"]) for c in gw.ecds_configs()] == [("2", "2")]
    results = traffic.results
    assert Counter(r[1] for r in results) == Counter({200: len(results)}), Counter(r[1] for r in results)
    assert len([r for r in results if r[0] > updated]) >= 10, "traffic went on after the update"
    assert {r[3].get("x-keygate-provider-key") for r in results} <= {a, b}
    assert set(credentials_seen(mocks["openai"])) <= {va, vb}


def test_per_request_limits_hold_without_a_gate(istio, store, mocks):
    """Istio has no gate: the output limit comes from json_to_metadata."""
    cfg = store.ok("POST", "/access-key-configurations", {
        "name": f"istio-rl-{uuid.uuid4().hex[:8]}", "requestLimits": {"maxOutputTokens": 100, "maxInputTokens": 2000}})
    token = new_token(store, accessKeyConfigurationId=cfg["id"])
    client = openai_client(istio, token)
    hi = [{"role": "user", "content": "hi"}]
    assert client.chat.completions.create(model="gpt-4o", messages=hi, max_tokens=50).choices
    for kwargs in ({"max_tokens": 101}, {"max_tokens": 60, "n": 2}, {"max_tokens": 10, "max_completion_tokens": 500}, {}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="gpt-4o", messages=hi, **kwargs)
        assert e.value.body["code"] == "output_tokens_exceeded", kwargs
    assert len(mocks["openai"].received()) == 1


def test_fallback_models_never_reach_the_provider_without_a_gate(istio, store, mocks):
    """No gate reads `models` here (json_to_metadata cannot tell a list from
    a missing key): the keygate filter blanks it unread, so the request is
    served by its `model` alone and nothing unchecked goes upstream."""
    client = openai_client(istio, new_token(store))
    hi = [{"role": "user", "content": "hi"}]
    for models in (["my-vllm/llama-3"], [], "not-a-list"):
        assert client.chat.completions.create(model="gpt-4o", messages=hi, extra_body={"models": models}).choices
    sent = mocks["openai"].received()
    assert len(sent) == 3 and mocks["vllm"].received() == []
    for req in sent:
        assert req["json"] == {"model": "gpt-4o", "messages": hi}, req["raw"]
        assert "models" not in req["raw"] and req["headers"].get("content-length") == str(len(req["raw"]))

    # Every copy a provider could read goes: repeated, escaped, or `models` but for case.
    import http.client
    mocks["openai"].reset()
    token = new_token(store)
    for raw in (b'{"model":"gpt-4o","messages":[],"models":[],"models":["openai/gpt-4o-mini"]}',
                b'{"model":"gpt-4o","messages":[],"models":["a"],"mod\\u0065ls":["openai/gpt-4o-mini"]}',
                b'{"model":"gpt-4o","messages":[],"Models":["openai/gpt-4o-mini"]}'):
        conn = http.client.HTTPConnection("127.0.0.1", int(istio.url.rsplit(":", 1)[1]), timeout=10)
        conn.request("POST", "/v1/chat/completions", body=raw,
                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
        assert conn.getresponse().status == 200, raw
    for req in mocks["openai"].received():
        assert req["json"] == {"model": "gpt-4o", "messages": []}, req["raw"]


def test_the_gateway_log_is_clean(istio):
    """Runs last: what every test above left in Envoy's log."""
    log = istio.log()
    for line in ("upstream attempt without a plan", "sent without credentials"):
        assert line not in log
    leaked = [s[:12] for s in harness.CANARIES if len(s) >= 8 and s in log]
    assert leaked == [], "credentials or access tokens in Envoy's log"


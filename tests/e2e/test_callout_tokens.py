"""Callouts of two roots in one VM. The gate and the keygate filter share a
VM (`vm_id: keygate`): the gate looks keys up for requests with a body, the
keygate filter for requests without one (and polls the change feed), each
through its own root. The filter keys a callout by Envoy's token alone
(`filter::CALLOUTS`), which holds because Envoy numbers callouts per VM, not
per root (older Envoys kept a counter per root context, from 1 each: there
the two roots' tokens would collide). With both roots' lookups in flight at
once, each answer must reach the request that asked."""

import threading
import time

from delayproxy import DelayProxy
from harness import Envoy, http
from keygate_token import well_formed_token


def test_lookups_of_the_gate_and_of_the_keygate_filter_in_flight_at_once_each_get_their_answer(tmp_path, store):
    # A slow store keeps every lookup in flight while the others start; one
    # worker, so that both roots are in one VM.
    slow = DelayProxy(store.lookup_port, delay=0.4)
    gw = Envoy(tmp_path, slow.port, store.gateway_token, concurrency=1).start()
    try:
        n = 40  # each root's tokens run from about 1 to n (plus the feed's polls)
        results = {}
        barrier = threading.Barrier(2 * n)

        def ask(i, with_body):
            token = well_formed_token()
            barrier.wait()
            started = time.monotonic()
            if with_body:  # the gate looks it up
                status, body, _ = http("POST", gw.url + "/v1/chat/completions",
                                       {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                                       {"authorization": f"Bearer {token}"}, timeout=8)
            else:  # no body: the keygate filter looks it up
                status, body, _ = http("GET", gw.url + "/v1/models", headers={"authorization": f"Bearer {token}"},
                                       timeout=8)
            results[(i, with_body)] = (status, body, time.monotonic() - started)

        threads = [threading.Thread(target=ask, args=(i, b)) for i in range(n) for b in (True, False)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wrong = {k: v for k, v in results.items() if v[0] != 401 or v[1]["error"]["code"] != "invalid_access_key"}
        assert len(results) == 2 * n and not wrong, wrong
        slowest = max(v[2] for v in results.values())
        print(f"\n{2 * n} lookups in flight at once, two roots: all 401, the slowest in {slowest:.2f}s")
        assert slowest < 4, "every lookup answered (the store takes 0.4 s)"
    finally:
        gw.stop()
        slow.close()

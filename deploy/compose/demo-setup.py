#!/usr/bin/env python3
"""Compose demo provisioning (profile `demo`): points the built-in `openai` and
`anthropic` providers at the mock provider, gives each a managed provider key
(a dummy value: the mock accepts anything), and creates one access key, whose
token it prints. Standard library only; safe to run again (one more access key
each time). Never run it against a store that talks to the real providers: it
rewrites their base URLs.

Environment: KEYGATE_API_URL (http://store:8081), KEYGATE_ADMIN_TOKEN,
MOCK_PROVIDER_URL (http://mock-provider:8000).
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request

API = os.environ.get("KEYGATE_API_URL", "http://store:8081").rstrip("/")
MOCK = os.environ.get("MOCK_PROVIDER_URL", "http://mock-provider:8000").rstrip("/")
TOKEN = os.environ.get("KEYGATE_ADMIN_TOKEN", "")


def call(method, path, body=None):
    req = urllib.request.Request(API + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        sys.exit(f"demo-setup: {method} {path} -> {e.code} {e.read().decode(errors='replace')}")


def main():
    if not TOKEN:
        sys.exit("demo-setup: KEYGATE_ADMIN_TOKEN is not set")
    for _ in range(50):
        try:
            urllib.request.urlopen(API + "/healthz", timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    existing = {k.get("name") for k in call("GET", "/provider-keys?limit=100").get("providerKeys", [])}
    for provider in ("openai", "anthropic"):
        call("PATCH", f"/providers/{provider}", {"baseUrl": f"{MOCK}/v1"})
        name = f"demo {provider} (mock)"
        if name not in existing:
            call("POST", "/provider-keys", {"providerId": provider, "name": name, "value": f"demo-{provider}-key", "managed": True})
    key = call("POST", "/access-keys", {"name": "demo"})
    print("keygate demo is provisioned: openai and anthropic point at the mock provider.")
    print(f"access key: {key['token']}")
    print(f"KEYGATE_ACCESS_KEY={key['token']}", flush=True)


if __name__ == "__main__":
    main()

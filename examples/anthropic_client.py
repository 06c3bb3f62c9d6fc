#!/usr/bin/env python3
"""One message through keygate with the official Anthropic SDK, unchanged:
only base_url and api_key differ.

    pip install anthropic
    KEYGATE_URL=http://127.0.0.1:10000 KEYGATE_ACCESS_KEY=kg-... python3 examples/anthropic_client.py
"""
import os

from anthropic import Anthropic

client = Anthropic(
    base_url=os.environ.get("KEYGATE_URL", "http://127.0.0.1:10000").rstrip("/"),
    api_key=os.environ["KEYGATE_ACCESS_KEY"],  # a keygate access key, not a provider key
)
msg = client.messages.create(
    model=os.environ.get("KEYGATE_MODEL", "claude-sonnet-4-6"),
    max_tokens=256,
    messages=[{"role": "user", "content": "Say hello in one sentence."}],
)
print("".join(block.text for block in msg.content if block.type == "text"))

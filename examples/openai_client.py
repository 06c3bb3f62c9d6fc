#!/usr/bin/env python3
"""One chat completion through keygate with the official OpenAI SDK, unchanged:
only base_url and api_key differ.

    pip install openai
    KEYGATE_URL=http://127.0.0.1:10000 KEYGATE_ACCESS_KEY=kg-... python3 examples/openai_client.py
"""
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("KEYGATE_URL", "http://127.0.0.1:10000").rstrip("/") + "/v1",
    api_key=os.environ["KEYGATE_ACCESS_KEY"],  # a keygate access key, not a provider key
)
resp = client.chat.completions.create(
    model=os.environ.get("KEYGATE_MODEL", "gpt-4o"),  # or "openai/gpt-4o", "anthropic/claude-sonnet-4-6", ...
    messages=[{"role": "user", "content": "Say hello in one sentence."}],
)
print(resp.choices[0].message.content)

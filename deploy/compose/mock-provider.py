#!/usr/bin/env python3
"""Runs the test suite's mock AI provider (tests/e2e/mockprovider.py, mounted
beside this file) as a standalone server for the compose demo: OpenAI
(`/v1/chat/completions`) and Anthropic (`/v1/messages`) answers, JSON and SSE.

    mock-provider.py [--host 0.0.0.0] [--port 8000] [--name mock]
"""
import argparse
import os
import sys
from http.server import ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mockprovider import MockProvider  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default="mock", help='replies read "hello from NAME"')
    args = p.parse_args()

    mock = MockProvider(args.name)
    # MockProvider listens on 127.0.0.1 (tests); the demo needs the container network.
    mock.server.server_close()
    mock.server = ThreadingHTTPServer((args.host, args.port), mock._handler())
    mock.server.daemon_threads = True
    print(f"mock provider {args.name!r} listening on http://{args.host}:{mock.server.server_address[1]}", flush=True)
    try:
        mock.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

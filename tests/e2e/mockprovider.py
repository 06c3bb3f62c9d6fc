"""Mock AI providers: OpenAI- and Anthropic-compatible HTTP servers that record
every request they receive and answer as the real APIs do (JSON and SSE).

Behaviour can be scripted per credential (the value the gateway injected), so a
test row carries both its canned answer and its assertion."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def credential_of(headers):
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    for name in ("x-api-key", "x-goog-api-key", "api-key"):
        if name in headers:
            return headers[name]
    return None


class MockProvider:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.requests = []
        self.scripts = {}  # credential -> list of (status, headers, body)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.scripts.clear()

    def received(self):
        with self.lock:
            return list(self.requests)

    def script(self, credential, *responses):
        """Answer the next requests carrying `credential` with these
        (status, headers, body) tuples, then normally. A fourth element may
        hold options: {"delay": seconds} before answering, or {"cut": True}
        to start a 200 event stream and drop the connection mid-way."""
        with self.lock:
            self.scripts.setdefault(credential, []).extend(responses)

    def _next_scripted(self, credential):
        with self.lock:
            queue = self.scripts.get(credential)
            return queue.pop(0) if queue else None

    def _handler(self):
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _send(self, status, body, headers=None, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, events):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for event in events:
                    chunk = event.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    time.sleep(0.01)
                self.wfile.write(b"0\r\n\r\n")

            def _cut_stream(self):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                chunk = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"partial"},"finish_reason":null}]}\n\n'
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.05)
                self.close_connection = True
                self.connection.shutdown(2)

            def _handle(self):
                raw = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                record = {"method": self.command, "path": self.path, "headers": headers, "raw": raw.decode("utf-8", "replace"), "json": body}
                with mock.lock:
                    mock.requests.append(record)
                scripted = mock._next_scripted(credential_of(headers))
                if scripted:
                    status, extra, payload = scripted[:3]
                    options = scripted[3] if len(scripted) > 3 else {}
                    time.sleep(options.get("delay", 0))
                    if options.get("cut"):
                        return self._cut_stream()
                    return self._send(status, payload, extra)
                path = self.path.split("?")[0]
                if path.endswith("/chat/completions"):
                    return self._openai_chat(body or {})
                if path.endswith("/messages"):
                    return self._anthropic_messages(body or {})
                if path.endswith("/audio/transcriptions"):
                    return self._send(200, {"text": "hello from " + mock.name})
                if "/models/" in path:
                    model_id = path.rsplit("/", 1)[-1]
                    if self.command == "DELETE":
                        return self._send(200, {"id": model_id, "object": "model", "deleted": True})
                    return self._send(200, {"id": model_id, "object": "model", "created": 0, "owned_by": mock.name})
                if path.endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "created": 0, "owned_by": mock.name}]})
                return self._send(404, {"error": {"message": "no such route", "type": "invalid_request_error", "code": None}})

            do_GET = do_POST = do_DELETE = _handle

            def _openai_chat(self, req):
                model = req.get("model", "unknown")
                text = f"hello from {mock.name}"
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                if req.get("stream"):
                    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": model}
                    events = []
                    for i, word in enumerate(text.split(" ")):
                        delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
                        events.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
                    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    if (req.get("stream_options") or {}).get("include_usage"):
                        events.append({**base, "choices": [], "usage": usage})
                    return self._stream([f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"])
                return self._send(200, {
                    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": usage,
                })

            def _anthropic_messages(self, req):
                model = req.get("model", "unknown")
                text = f"hello from {mock.name}"
                if req.get("stream"):
                    msg = {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
                           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}
                    events = [("message_start", {"type": "message_start", "message": msg}),
                              ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
                    for i, word in enumerate(text.split(" ")):
                        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}}))
                    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}}),
                               ("message_stop", {"type": "message_stop"})]
                    return self._stream([f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events])
                return self._send(200, {
                    "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 12, "output_tokens": 5},
                })

        return Handler

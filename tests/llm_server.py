"""A real OpenAI-compatible HTTP server on loopback with scripted behaviour, for tests of the
LLM layer and of the LLM rules (no mocked client)."""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time


class ScriptedServer:
    """POST /v1/chat/completions; each request takes the next scripted behaviour, else `default`.

    Behaviours: ("reply", text), ("reply", text, {token: logprob}), ("reply", text, alternatives
    or None, usage dict), ("truncated", text) (cut off at max_tokens: finish_reason "length"),
    ("status", code, headers, body) (401, 403, 429 with Retry-After, ...), ("hang", seconds), or a
    callable(request_json) -> behaviour. `headers` keeps each request's headers (`authorizations`
    their Authorization values)."""

    def __init__(self, default=("reply", "ok"), delay_s: float = 0.0):
        self.script: collections.deque = collections.deque()
        self.default, self.delay_s = default, delay_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.answered = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(self.headers)
                    behaviour = server.script.popleft() if server.script else server.default
                if callable(behaviour):
                    behaviour = behaviour(body)
                time.sleep(server.delay_s)
                if behaviour[0] == "hang":
                    time.sleep(behaviour[1])
                    return
                if behaviour[0] == "status":
                    _, code, headers, payload = behaviour
                    self._send(code, payload, headers)
                    return
                text = behaviour[1]
                finish_reason = "length" if behaviour[0] == "truncated" else "stop"
                choice = {"index": 0, "finish_reason": finish_reason,
                          "message": {"role": "assistant", "content": text}}
                if body.get("logprobs"):
                    # ("reply", text, {token: logprob}) scripts the alternatives; else the text is certain
                    alternatives = behaviour[2] if len(behaviour) > 2 and behaviour[2] else {text: 0.0}
                    top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in alternatives.items()]
                    choice["logprobs"] = {"content": [{"token": text, "logprob": max(alternatives.values()),
                                                       "bytes": None, "top_logprobs": top}]}
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [choice],
                                 "usage": behaviour[3] if len(behaviour) > 3 else
                                 {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})
                with server.lock:
                    server.answered += 1

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def authorizations(self) -> list[str | None]:
        with self.lock:
            return [headers.get("Authorization") for headers in self.headers]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

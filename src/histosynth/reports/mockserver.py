"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Each request names its case by a `CASE:<name>` marker in the report text; the case's script is a
list of actions played one per request (the last one repeats):

    ("good", summary)      200, JSON reply {"findings": [...], "summary": summary}
    ("text", content)      200, `content` verbatim as the message
    ("empty",)             200, empty message
    ("429", seconds)       429 with Retry-After: seconds
    ("500",)               500
    ("malformed",)         200 with a body that is not JSON
    ("slow", seconds, summary)  like "good", after sleeping `seconds`

Every request is logged (case, time, action), so tests can count calls per case.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_CASE = re.compile(r"CASE:([\w-]+)")


class ScriptedServer:
    def __init__(self, scripts: dict[str, list[tuple]] | None = None, latency_s: float = 0.0,
                 default: tuple = ("good", "Invasive ductal carcinoma; grade 2.")):
        self.scripts = dict(scripts or {})
        self.latency_s = latency_s
        self.default = default
        self.log: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def calls(self, case: str) -> list[float]:
        return [t for c, t, _ in self.log if c == case]

    def next_action(self, case: str) -> tuple:
        with self.lock:
            n = sum(1 for c, _, _ in self.log if c == case)
            script = self.scripts.get(case) or [self.default]
            action = script[min(n, len(script) - 1)]
            self.log.append((case, time.monotonic(), action[0]))
        return action

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                text = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
                case = m[1] if (m := _CASE.search(text)) else "default"
                action = server.next_action(case)
                if server.latency_s:
                    time.sleep(server.latency_s)
                kind = action[0]
                if kind == "429":
                    return self.send(429, {"error": {"message": "rate limited"}}, {"Retry-After": str(action[1])})
                if kind == "500":
                    return self.send(500, {"error": {"message": "server error"}})
                if kind == "malformed":
                    return self.send_raw(200, b'{"id": "x", "choices": [', "application/json")
                if kind == "slow":
                    time.sleep(action[1])
                    content = json.dumps({"findings": ["scripted"], "summary": action[2]})
                elif kind == "good":
                    content = json.dumps({"findings": ["scripted"], "summary": action[1]})
                elif kind == "text":
                    content = action[1]
                else:
                    content = ""
                self.send(200, completion(body.get("model", "scripted"), content))

            def send(self, status, payload, headers=None):
                self.send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def send_raw(self, status, data, ctype, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        return Handler


def completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": "fp_scripted",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }

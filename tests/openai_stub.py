"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the openai backend tests.

Speaks just enough of the protocol (`POST /v1/chat/completions`) for the official `openai` client. Each request
takes the next scripted action; when the script is empty, `responder(body)` (if set) gives the action from the
request itself; else the default answer "<answer>Yes</answer>":

    {"status": 429, "retry_after": "0.05"}   an error status (JSON error body), optional Retry-After header
    {"sleep": 0.5}                           a slow reply (then the default answer)
    {"reply": "text", "logprobs": [...]}     a normal reply; logprobs: [(token, [(candidate, logprob), ...]), ...]
    {"refuse": "I'm sorry, ..."}             a refusal written as content
    {"refusal_field": "..."}                 a refusal flagged in `message.refusal` (content null)
    {"error_message": "..."}                 with "status": the error message text

Bounded: loopback only, daemon threads, a short socket timeout, stopped by the fixture.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubServer:
    def __init__(self) -> None:
        self.script: deque[dict[str, Any]] = deque()
        self.responder: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.requests: list[dict[str, Any]] = []  # {"headers": {lower-case name: value}, "body": {...}, "t": time}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a thread for long

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub.lock:
                    stub.requests.append(
                        {
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "t": time.monotonic(),
                        }
                    )
                    action = stub.script.popleft() if stub.script else None
                if action is None:
                    action = stub.responder(body) if stub.responder else {}
                with stub.lock:
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    stub._answer(self, body, action)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> StubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _answer(self, h: BaseHTTPRequestHandler, body: dict, action: dict) -> None:
        if "sleep" in action:
            time.sleep(action["sleep"])
        if "status" in action:
            msg = action.get("error_message", f"scripted status {action['status']}")
            payload = json.dumps({"error": {"message": msg, "type": "test", "code": action["status"]}}).encode()
            h.send_response(action["status"])
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            if "retry_after" in action:
                h.send_header("Retry-After", action["retry_after"])
            h.end_headers()
            h.wfile.write(payload)
            return
        content: str | None = action.get("refuse", action.get("reply", "<answer>Yes</answer>"))
        refusal = action.get("refusal_field")
        if refusal:
            content = None
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if "logprobs" in action:
            choice["logprobs"] = {
                "content": [
                    {
                        "token": tok,
                        "logprob": cands[0][1] if cands else 0.0,
                        "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in cands],
                    }
                    for tok, cands in action["logprobs"]
                ]
            }
        payload = json.dumps(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "stub"),
                "choices": [choice],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
            }
        ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

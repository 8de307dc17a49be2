"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the describe tests.

It speaks the real HTTP protocol (``POST /v1/chat/completions``), so the tests exercise the ``openai``
client, our retry policy and our thread pool end to end. Behaviour is scripted per request: queued
``Reply`` objects are served first, then ``responder`` decides. Every request is logged, and the
server tracks the largest number of requests it was handling at the same time.

Hostile servers: ``Reply(drip=s)`` sends the whole response (status line and headers included) one
byte every ``s`` seconds, and ``endless=True`` never finishes it; both stop when the client hangs up
or the server is shut down, so no test thread outlives its test. :func:`echo_headers` answers with
the request's headers, as a server that reflects the ``Authorization`` header would. The server
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server sends back for one request."""

    content: str | None = "A small thing with a distinctive shape."
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a timeout test sets this past the timeout)
    raw: bytes | None = None  # sent verbatim instead of a chat completion (malformed bodies, error bodies)
    finish_reason: str = "stop"
    drip: float = 0.0  # > 0: send the response one byte at a time, this many seconds apart
    endless: bool = False  # with drip: after the headers, pad the body with spaces forever


@dataclass(frozen=True)
class Seen:
    """One logged request."""

    path: str
    body: dict[str, Any]
    authorization: str | None
    started: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        """The last user message: what was asked."""
        return [m["content"] for m in self.body.get("messages", []) if m.get("role") == "user"][-1]


def echo_headers(seen: Seen) -> Reply:
    """A responder that puts the request's headers into its answer (a reflecting, hostile server)."""
    return Reply("It has fins. You sent: " + "; ".join(f"{k}: {v}" for k, v in seen.headers.items()))


def completion_body(reply: Reply, model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    ).encode("utf-8")


class FakeLLM:
    """Start with ``with FakeLLM(responder) as server:``; ``server.url`` is the ``/v1`` base URL."""

    def __init__(self, responder: Callable[[Seen], Reply] | None = None, work_time: float = 0.0) -> None:
        self.responder = responder or (lambda seen: Reply())
        self.work_time = work_time  # every request takes at least this long (lets requests overlap)
        self.requests: list[Seen] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()  # ends dripping handlers at shutdown
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply) -> None:
        """Serve these replies, in order, before falling back to ``responder``."""
        with self._lock:
            self._script.extend(replies)

    def count(self, predicate: Callable[[Seen], bool] = lambda seen: True) -> int:
        with self._lock:
            return sum(1 for seen in self.requests if predicate(seen))

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            scripted = self._script.popleft() if self._script else None
        return scripted or self.responder(seen)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                seen = Seen(self.path, body, self.headers.get("Authorization"), time.monotonic(),
                            dict(self.headers.items()))
                reply = server._next_reply(seen)
                try:
                    time.sleep(max(reply.delay, server.work_time))
                    if self.path.rstrip("/") != "/v1/chat/completions":
                        reply = Reply(status=404, raw=b'{"error": {"message": "no such route"}}')
                    payload = reply.raw if reply.raw is not None else completion_body(reply, body.get("model", ""))
                    if reply.drip > 0:
                        self._drip(reply, payload)
                        return
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    server._done()

            def _drip(self, reply: Reply, payload: bytes) -> None:
                """The raw response, byte by byte (an endless one pads its body with spaces: valid JSON
                whitespace that never ends), until done, the client hangs up or the server closes."""
                head = (f"HTTP/1.1 {reply.status} OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {10**9 if reply.endless else len(payload)}\r\n\r\n").encode()

                def stream() -> Iterator[bytes]:
                    for i in range(len(head)):
                        yield head[i : i + 1]
                    while reply.endless:
                        yield b" "
                    for i in range(len(payload)):
                        yield payload[i : i + 1]

                for byte in stream():
                    if server._closing.wait(reply.drip):
                        return
                    self.wfile.write(byte)
                    self.wfile.flush()

        return Handler

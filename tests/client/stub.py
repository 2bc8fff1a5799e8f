"""A scripted HTTP server on 127.0.0.1 for the client's retry and concurrency tests: it
answers each request with the next reply of its script (the last one repeats), after an
optional delay, and records when each request came, its headers, and the most requests
it ever had in flight at once."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


#: A valid segment answer with no mask (the client's parsing needs no more).
EMPTY_ANSWER = {"width": 4, "height": 3, "masks": [], "timings_ms": {"total": 1.0}}


def error_reply(status: int, code: str, headers: dict[str, str] | None = None, **extra) -> Reply:
    """The server's error shape."""
    body = {"error": {"code": code, "message": f"stub {code}", **extra}}
    return Reply(status, body, headers or {})


@dataclass(frozen=True)
class Seen:
    """One request as the stub saw it."""

    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]


class Stub:
    """``with Stub([Reply(429, ...), Reply()]) as stub: ... stub.url, stub.seen``."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies, self.seen = list(replies), []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for it, and tests stop many stubs.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _next(self, seen: Seen) -> Reply:
        with self.lock:
            index = len(self.seen)
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return self.replies[min(index, len(self.replies) - 1)]

    def _done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)  # the whole upload, as a real server would
                reply = stub._next(Seen(time.monotonic(), self.path, dict(self.headers)))
                try:
                    time.sleep(reply.delay_s)
                    body = json.dumps(reply.body or EMPTY_ANSWER).encode()
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    stub._done()

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

"""The door (service/door.py, service/server.py) against a live server, over raw sockets.

Raw HTTP because the point is what happens *before* a well-behaved client would finish:
headers without their body, bodies that dribble, heads that never end, garbage.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

MULTIPART = "multipart/form-data; boundary=xyz"
#: The start of a valid form (so that the form parser keeps reading what follows).
FORM_START = (
    b"--xyz\r\n"
    b'Content-Disposition: form-data; name="image"; filename="x.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)
KEY = "k-secret"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def error(self) -> dict:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)["error"]


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the (lower-cased) headers of a response head."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def parse_replies(raw: bytes) -> list[Reply]:
    """Every response in ``raw`` (a ``100 Continue`` counts as one)."""
    replies = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"incomplete response: {raw[:300]!r}"
        status, headers = parse_head(head)
        length = int(headers.get("content-length", 0))
        assert len(rest) >= length, f"truncated body: {raw[:300]!r}"
        replies.append(Reply(status, headers, rest[:length]))
        raw = rest[length:]
    return replies


def connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def head(method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def until_closed(sock: socket.socket, timeout: float = 5.0) -> list[Reply]:
    """Everything the server sends until it closes the connection (fails after ``timeout``)."""
    deadline, raw = time.monotonic() + timeout, b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break  # closed on us while we were still sending; what came before counts
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout} s: {raw!r}") from None
        if not data:
            break
        raw += data
    return parse_replies(raw)


def one_reply(sock: socket.socket, timeout: float = 10.0) -> Reply:
    """One complete response on a connection that stays open."""
    deadline, raw = time.monotonic() + timeout, b""
    while True:
        head_end = raw.find(b"\r\n\r\n")
        if head_end >= 0:
            length = int(parse_head(raw[:head_end])[1].get("content-length", 0))
            if len(raw) >= head_end + 4 + length:
                (reply,) = parse_replies(raw)
                return reply
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(65536)
        assert data, f"connection closed: {raw!r}"
        raw += data


def send_until_answered(sock: socket.socket, pieces: Iterable[bytes], interval: float) -> None:
    """Send ``pieces`` ``interval`` s apart; stop once the server answers or hangs up."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except OSError:
            return
        if select.select([sock], [], [], interval)[0]:
            return


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def a_real_request(path: str = "/v1/segment/text", **headers: str) -> bytes:
    """The bytes of a valid /segment/text request (built by httpx)."""
    files = {"image": ("x.png", encode(random_image(16, 16)), "image/png")}
    request = httpx.Request("POST", "http://test" + path, data={"prompt": "a"}, files=files)
    body = request.read()
    fields = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    return head("POST", path, **fields, **headers) + body


def assert_still_serving(server: LiveServer, headers: dict | None = None) -> None:
    """After the abuse: no request task or connection is left over, and a normal request
    gets its 200."""
    state = server.server.server_state
    wait_until(lambda: not state.tasks and not state.connections)
    files = {"image": ("x.png", encode(random_image(16, 16)), "image/png")}
    ok = httpx.post(
        server.url + "/v1/segment/text", data={"prompt": "a"}, files=files, headers=headers
    )
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


def test_no_key_is_answered_from_the_head_before_the_body_is_read(serve):
    # 19 MB is under the upload limit and the body timeout is 30 s: an answer within a
    # second to a body that never comes means the body was never waited for.
    declared = {"Content-Type": MULTIPART, "Content-Length": "19000000"}
    with serve(api_keys=[KEY], body_timeout_s=30.0) as server:
        with connect(server) as sock:
            started = time.monotonic()
            sock.sendall(head("POST", "/v1/segment/text", **declared) + b"x" * 4096)
            replies = until_closed(sock, timeout=2.0)
            assert time.monotonic() - started < 1.0
        (reply,) = replies
        assert reply.status == 401 and reply.error()["code"] == "unauthorized"
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.headers["connection"] == "close"

        # uvicorn sends "100 Continue" on the app's first receive(): none without a key...
        with connect(server) as sock:
            sock.sendall(head("POST", "/v1/segment/text", Expect="100-continue", **declared))
            assert [r.status for r in until_closed(sock, timeout=2.0)] == [401]
        # ... and one with it (the control: this is how a read body shows).
        with connect(server) as sock:
            auth = {"Authorization": f"Bearer {KEY}", "Expect": "100-continue"}
            sock.sendall(head("POST", "/v1/segment/text", **auth, **declared))
            assert one_reply(sock, timeout=2.0).status == 100
        assert_still_serving(server, {"Authorization": f"Bearer {KEY}"})


def test_operational_endpoints_are_behind_the_key_but_the_probes_and_docs_are_not(serve):
    with serve(api_keys=[KEY, "other"]) as server:
        for path in ("/metrics", "/info"):
            denied = httpx.get(server.url + path)
            assert denied.status_code == 401, path
            assert denied.json()["error"]["code"] == "unauthorized"
            wrong = httpx.get(server.url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            assert httpx.get(server.url + path, headers={"Authorization": KEY}).status_code == 401
            ok = httpx.get(server.url + path, headers={"Authorization": f"bearer {KEY}"})
            assert ok.status_code == 200, path
        # A browser loads the pages, their assets and the spec before "Authorize" exists.
        public = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json")
        for path in (*public, "/docs-assets/swagger-ui.css"):
            assert httpx.get(server.url + path).status_code == 200, path
        # The open prefix reaches the static files only (raw: httpx would normalise "..").
        for path in ("/docs-assets/../info", "/docs-assets/%2e%2e/info"):
            with connect(server) as sock:
                sock.sendall(head("GET", path))
                escape = one_reply(sock)
            assert escape.status == 404 and b"variant" not in escape.body, path
        spec = httpx.get(server.url + "/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "Authorization: Bearer <key>" in scheme["description"]
    assert "security" not in spec  # per operation instead:
    for path in ("/healthz", "/readyz"):
        assert "security" not in spec["paths"][path]["get"]
    protected = ["/v1/segment/text", "/v1/segment/visual", "/segment/text", "/info", "/metrics"]
    for path in protected:
        (operation,) = spec["paths"][path].values()
        assert operation["security"] == [{"bearerAuth": []}], path


def test_without_keys_everything_is_open_and_undocumented(serve):
    with serve() as server:
        assert httpx.get(server.url + "/metrics").status_code == 200
        spec = httpx.get(server.url + "/openapi.json").json()
    assert "security" not in spec
    assert "securitySchemes" not in spec.get("components", {})


def test_a_dribbling_body_is_cut_off_with_408(serve):
    with serve(body_timeout_s=1.0) as server, connect(server) as sock:
        started = time.monotonic()
        fields = {"Content-Type": MULTIPART, "Content-Length": "1000"}
        sock.sendall(head("POST", "/v1/segment/text", **fields))
        dribble = (FORM_START[i : i + 1] for i in range(len(FORM_START)))  # 1 byte / 100 ms
        send_until_answered(sock, dribble, interval=0.1)
        replies = until_closed(sock, timeout=3.0)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed <= 2.0, elapsed
        (reply,) = replies  # exactly one answer: the app's own 400 was swallowed
        assert reply.status == 408 and reply.headers["connection"] == "close"
        assert reply.error()["code"] == "body_timeout"
        assert "CLIPSEG_BODY_TIMEOUT_S" in reply.error()["message"]
        assert_still_serving(server)
        metrics = httpx.get(server.url + "/metrics").text
    assert 'clipseg_requests_total{route="/v1/segment/text",status="408"} 1.0' in metrics
    assert 'status="400"' not in metrics


def test_a_request_head_that_never_ends_is_cut_off_with_408(serve):
    with serve(header_timeout_s=0.5) as server:
        partial = b"POST /segment/text HTTP/1.1\r\nHost: test\r\nContent-Ty"
        for first_bytes in (partial, b""):  # part of a head, or nothing at all
            with connect(server) as sock:
                started = time.monotonic()
                sock.sendall(first_bytes)
                (reply,) = until_closed(sock, timeout=3.0)
                assert 0.4 <= time.monotonic() - started <= 1.5
                assert reply.status == 408 and reply.error()["code"] == "header_timeout"
                assert "CLIPSEG_HEADER_TIMEOUT_S" in reply.error()["message"]
        # The timer also runs from the end of a response: a kept-alive connection that
        # starts its next request and stalls (which stops uvicorn's idle timer) is cut too.
        with connect(server) as sock:
            sock.sendall(head("GET", "/healthz"))
            assert one_reply(sock).status == 200
            started = time.monotonic()
            sock.sendall(b"GET /hea")
            (reply,) = until_closed(sock, timeout=3.0)
            assert 0.4 <= time.monotonic() - started <= 1.5
            assert reply.status == 408
        assert_still_serving(server)


def test_the_head_timer_spares_slow_answers_and_busy_keep_alive_connections(serve, factory):
    with serve(header_timeout_s=0.5) as server, connect(server) as sock:
        factory.gate.clear()  # the model holds this request for a second
        threading.Timer(1.0, factory.gate.set).start()
        sock.sendall(a_real_request())
        reply = one_reply(sock)
        assert reply.status == 200 and reply.headers["content-type"] == "image/png"
        for _ in range(3):  # 0.3 s gaps: each next head comes within the timeout
            time.sleep(0.3)
            sock.sendall(head("GET", "/healthz"))
            assert one_reply(sock).status == 200


def test_a_chunked_body_over_the_limit_gets_413(serve):
    limit = 64 * 1024
    with serve(max_upload_bytes=limit) as server, connect(server) as sock:
        fields = {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}
        sock.sendall(head("POST", "/v1/segment/text", **fields))
        sock.sendall(b"%x\r\n%s\r\n" % (len(FORM_START), FORM_START))
        chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
        send_until_answered(sock, (chunk for _ in range(4 * limit // 0x2000)), interval=0.01)
        (reply,) = until_closed(sock)  # one answer: not also the app's 400 for the form
        assert reply.status == 413 and reply.headers["connection"] == "close"
        error = reply.error()
        assert error["code"] == "upload_too_large"
        assert str(limit) in error["message"] and "CLIPSEG_MAX_UPLOAD_BYTES" in error["message"]
        assert_still_serving(server)
        metrics = httpx.get(server.url + "/metrics").text
    assert 'clipseg_requests_total{route="/v1/segment/text",status="413"} 1.0' in metrics
    assert 'status="400"' not in metrics


def test_a_declared_length_over_the_limit_gets_413_unread(serve):
    limit = 64 * 1024
    with serve(max_upload_bytes=limit) as server, connect(server) as sock:
        fields = {"Content-Type": MULTIPART, "Content-Length": str(limit + 1)}
        sock.sendall(head("POST", "/v1/segment/text", Expect="100-continue", **fields))
        (reply,) = until_closed(sock, timeout=2.0)  # no "100 Continue" first: never read
        assert reply.status == 413 and reply.error()["code"] == "upload_too_large"
        assert_still_serving(server)


def test_uvicorns_own_400_is_json(serve):
    with serve() as server:
        for garbage in (b"NOT AN HTTP REQUEST\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            with connect(server) as sock:
                sock.sendall(garbage)
                (reply,) = until_closed(sock)
                assert reply.status == 400 and reply.error()["code"] == "invalid_http"
        assert_still_serving(server)


def test_cors_preflights_and_rejections(serve):
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    with serve(cors_origins=[origin], api_keys=[KEY]) as server:
        url = server.url + "/v1/segment/text"
        allowed = httpx.options(url, headers=preflight)  # no key: browsers send none here
        other = httpx.options(url, headers={**preflight, "Origin": "https://evil.example"})
        unauthorized = httpx.post(url, headers={"Origin": origin})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert other.headers["content-type"] == "application/json"
    assert other.json()["error"] == {
        "code": "cors_rejected",
        "message": "Disallowed CORS origin",
        "request_id": other.headers["x-request-id"],
    }
    # A browser can read the 401: it carries the CORS headers.
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == origin


def test_over_the_connection_limit_gets_json_503(serve):
    with serve(max_connections=2, header_timeout_s=30.0) as server:
        state = server.server.server_state
        idle = [connect(server), connect(server)]
        wait_until(lambda: len(state.connections) == 2)
        with connect(server) as sock:
            sock.sendall(head("GET", "/healthz"))
            (reply,) = until_closed(sock)
        assert reply.status == 503 and reply.error()["code"] == "over_capacity"
        assert "CLIPSEG_MAX_CONNECTIONS" in reply.error()["message"]
        assert reply.headers["retry-after"] == "1"
        idle.pop().close()  # two connections (the idle one and this) are within the limit
        wait_until(lambda: len(state.connections) == 1)
        assert httpx.get(server.url + "/healthz").status_code == 200
        idle.pop().close()
        assert_still_serving(server)


async def failing_app(scope, receive, send) -> None:
    """Handles the lifespan, then fails every request before answering it."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["path"] == "/raise":
        raise RuntimeError("failed before responding")
    # any other path: return without responding


def test_an_app_that_fails_before_responding_gets_json_500():
    with LiveServer(failing_app, ready=False, settings=make_settings()) as server:
        for path in ("/raise", "/silent"):
            response = httpx.get(server.url + path)
            assert response.status_code == 500, path
            assert response.json()["error"]["code"] == "internal_error"
            assert response.headers["connection"] == "close"

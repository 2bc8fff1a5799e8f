"""The uvicorn server, built one way for ``clipseg-serve`` and for the tests.

``build_server`` returns a ``uvicorn.Server`` whose HTTP protocol is ``DoorH11Protocol``,
a subclass of uvicorn's h11 protocol that closes the gaps the ASGI middlewares in
``service/door.py`` cannot reach, because uvicorn answers them before (or around) the app:

- **Request-head timeout.** uvicorn only has a keep-alive idle timer, armed after a
  response and cancelled by the first byte of the next request; a connection that sends a
  request line and then one header byte now and then is held forever (slowloris), and so
  is a fresh connection that sends nothing. ``DoorH11Protocol`` runs a timer from the
  connection's start and from the end of each response until the complete request head
  has arrived; on expiry it answers 408 JSON ``header_timeout`` and closes
  (``CLIPSEG_HEADER_TIMEOUT_S``).
- **JSON for uvicorn's own answers**: 400 for an unparsable request (``invalid_http``), 500
  when the app fails (or returns) before it responds (``internal_error``), 503 over the
  connection limit (``over_capacity``), in our error shape instead of plain text. The
  limit (``CLIPSEG_MAX_CONNECTIONS``): a request is refused when more than that many
  connections are open, or requests in flight, counting its own.

The h11 protocol is used whatever is installed: with ``http="auto"`` uvicorn would switch
to httptools as soon as someone installs ``uvicorn[standard]``, silently dropping both of
the above. httptools is not a dependency (nor in the image), so a second subclass could not
be tested here; h11's parsing cost is small next to multipart parsing and the model.

Logging: ``log_config=None``, so uvicorn adds no handlers or formatters of its own and its
loggers propagate to the root logger that ``service/logs.py`` configures (one format for
everything). ``DoorServer`` reports the bound URL once listening (for the "ready" line),
and delays the stop a signal asks for by ``CLIPSEG_SHUTDOWN_DELAY_S``: during the delay it
keeps accepting and serving while ``/readyz`` says 503, so a load balancer that routes on
readiness stops sending before the listening socket closes (without it, a connection
the balancer opened just before the close is dropped with its request unread).

uvicorn internals overridden (read in 0.30.0 and 0.54.0, the same in both; hence
``uvicorn>=0.30,<0.60``): ``H11Protocol.__init__`` / ``connection_made`` /
``connection_lost`` / ``handle_events`` / ``handle_websocket_upgrade`` /
``on_response_complete`` (extended, each calls the original), ``send_400_response``
(replaced), and the attributes ``app`` (wrapped), ``limit_concurrency`` (taken over:
uvicorn's own check answers with a plain-text app named by a module global, so the protocol
sets it to ``None`` and applies the limit in its app wrapper), ``connections``, ``tasks``,
``cycle`` (``.scope``, ``.disconnected``), ``conn``, ``transport``, ``loop``, ``logger``,
``server_state.default_headers``, and the module's ``STATUS_PHRASES``. Nothing is
monkeypatched: the class is passed as ``http=``. ``Server.startup`` (extended: it calls the
original, then reads ``servers[0].sockets``), ``Server.handle_exit`` (the first signal
starts the delay, recorded in ``_captured_signals`` as the original does, so it is
re-raised after the stop; any later signal is the original's) and ``Server.on_tick``
(extended: ends the delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from clipseg_serve.service import request_id
from clipseg_serve.service.config import Settings
from clipseg_serve.service.door import encode_error, error_headers, send_error

#: Seconds an idle keep-alive connection stays open (uvicorn's default, as before).
KEEP_ALIVE_S = 5

#: The request-head timeout when the config does not say (the setting's default).
HEADER_TIMEOUT_S: float = Settings.model_fields["header_timeout_s"].default


class DoorConfig(uvicorn.Config):
    """``uvicorn.Config`` plus what ``DoorH11Protocol`` needs: ``header_timeout_s``."""

    def __init__(self, app: ASGIApp, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s


class DoorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and JSON for its own answers."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s: float = getattr(config, "header_timeout_s", HEADER_TIMEOUT_S)
        # uvicorn's own concurrency check answers with a plain-text app taken from a module
        # global; _guarded_app checks the limit instead and answers JSON.
        self.max_connections: int | None = self.limit_concurrency
        self.limit_concurrency = None
        self.inner_app = self.app
        self.app = self._guarded_app
        self.header_timer: asyncio.TimerHandle | None = None
        self.timed_cycle: object | None = None  # the cycle current when the timer was armed

    # The request-head timer ------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        # A complete request head creates a new cycle: from here on the app (and the body
        # timeout in door.py) own the request.
        if self.header_timer is not None and self.cycle is not self.timed_cycle:
            self._disarm_header_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_header_timer()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        # Armed before the original runs: it may parse a pipelined request at once, which
        # disarms the timer again in handle_events.
        if not self.transport.is_closing():
            self._arm_header_timer()
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self.timed_cycle = self.cycle
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timed_out(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is not h11.IDLE:
            # Still draining the body of a request that was already answered: there is
            # nothing to answer, only a connection to free.
            self.transport.close()
            return
        seconds = f"{self.header_timeout_s:g}"
        message = f"the request head did not arrive within {seconds} s (CLIPSEG_HEADER_TIMEOUT_S)"
        self._answer_and_close(408, "header_timeout", message)

    # uvicorn's own answers, as JSON --------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """An unparsable request (uvicorn's message, e.g. "Invalid HTTP request received.")."""
        self._answer_and_close(400, "invalid_http", msg)

    def _answer_and_close(self, status: int, code: str, message: str) -> None:
        """Write a JSON error through h11 outside any ASGI cycle, then close."""
        body = encode_error(code, message)
        headers = [*self.server_state.default_headers, *error_headers(body)]
        try:
            chunks = [
                self.conn.send(
                    h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status])
                ),
                self.conn.send(h11.Data(data=body)),
                self.conn.send(h11.EndOfMessage()),
            ]
            self.transport.write(b"".join(chunk for chunk in chunks if chunk))
        except h11.LocalProtocolError:
            pass  # a response is already under way: closing is all that is left
        self.transport.close()

    async def _guarded_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, behind the connection limit (503) and a JSON 500 if it fails before
        responding. uvicorn still logs the exception and closes the connection."""
        if self._over_capacity():
            self.logger.warning("Exceeded concurrency limit (%s).", self.max_connections)
            message = (
                f"more than {self.max_connections} connections or requests in flight "
                "(CLIPSEG_MAX_CONNECTIONS); retry shortly"
            )
            await send_error(send, 503, "over_capacity", message, [(b"retry-after", b"1")])
            return
        cycle = self.cycle if self.cycle is not None and self.cycle.scope is scope else None
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.inner_app(scope, receive, watched_send)
        except BaseException:
            if not started:
                with contextlib.suppress(Exception):
                    await _internal_error(send)
            raise  # uvicorn logs "Exception in ASGI application" with the traceback
        if not started and not (cycle is not None and cycle.disconnected):
            self.logger.error("ASGI callable returned without starting response.")
            await _internal_error(send)

    def _over_capacity(self) -> bool:
        limit = self.max_connections
        # Both sets include this connection and this request's task.
        return limit is not None and (len(self.connections) > limit or len(self.tasks) > limit)


async def _internal_error(send: Send) -> None:
    # The request's ID, when the app got far enough to take one (request_id.py leaves it
    # set in this task's context): the header every answer carries, as the body does.
    rid = request_id.current()
    extra = [(request_id.HEADER.lower().encode(), rid.encode())] if rid is not None else []
    await send_error(send, 500, "internal_error", "internal error; see the server log", extra)


def build_config(
    app: ASGIApp, *, host: str, port: int, log_level: str, settings: Settings
) -> DoorConfig:
    """The uvicorn configuration of the service (one worker: it owns one device)."""
    return DoorConfig(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # service/logs.py configures the root logger for everyone
        http=DoorH11Protocol,
        lifespan="on",
        workers=1,
        header_timeout_s=settings.header_timeout_s,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=KEEP_ALIVE_S,
        # Long enough for the requests in flight to meet their deadline on SIGTERM.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )


class DoorServer(uvicorn.Server):
    """``uvicorn.Server`` that calls ``on_listening(url)`` once its socket is bound and,
    given a ``shutdown_delay_s``, serves that long after a stop signal (having called
    ``on_draining()``) before it stops accepting."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_listening: Callable[[str], None] | None = None,
        *,
        shutdown_delay_s: float = 0.0,
        on_draining: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.on_listening = on_listening
        self.shutdown_delay_s = shutdown_delay_s
        self.on_draining = on_draining
        self.draining_since: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        url = self.url()
        if self.on_listening is not None and url is not None:
            self.on_listening(url)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.shutdown_delay_s <= 0 or self.draining_since is not None or self.should_exit:
            super().handle_exit(sig, frame)  # no delay, or a second signal: stop now
            return
        self._captured_signals.append(sig)  # re-raised once stopped, like uvicorn's own
        self.draining_since = time.monotonic()
        if self.on_draining is not None:
            self.on_draining()

    async def on_tick(self, counter: int) -> bool:
        if self.draining_since is not None and not self.should_exit:
            self.should_exit = time.monotonic() - self.draining_since >= self.shutdown_delay_s
        return await super().on_tick(counter)

    def url(self) -> str | None:
        """``http://host:port`` of the first listening TCP socket (the real port when the
        config asked for 0), or None (a unix socket, or not listening)."""
        for server in getattr(self, "servers", ()):
            for sock in server.sockets or ():
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    port = sock.getsockname()[1]
                    host = self.config.host or "0.0.0.0"
                    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return None


def build_server(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    settings: Settings,
    on_listening: Callable[[str], None] | None = None,
    on_draining: Callable[[], None] | None = None,
) -> uvicorn.Server:
    """A ``uvicorn.Server`` for ``app``; ``server.run()`` blocks, ``should_exit`` stops it
    (at once; a signal stops it after ``settings.shutdown_delay_s``)."""
    config = build_config(app, host=host, port=port, log_level=log_level, settings=settings)
    return DoorServer(
        config,
        on_listening,
        shutdown_delay_s=settings.shutdown_delay_s,
        on_draining=on_draining,
    )


def serve_app(app: Starlette, settings: Settings) -> uvicorn.Server:
    """``build_server`` for an app made by ``create_app``: host, port and log level from
    its settings, and the app told its real URL once it listens (for the ready line)."""
    return build_server(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        settings=settings,
        on_listening=app.state.service.listening,
        on_draining=app.state.service.start_draining,
    )

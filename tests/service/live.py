"""Run the app under the production uvicorn server (``service.server``) on 127.0.0.1
(ephemeral port) in a thread."""

from __future__ import annotations

import threading
import time

import httpx

from clipseg_serve.service.config import Settings
from clipseg_serve.service.server import build_server


class LiveServer:
    """``with LiveServer(app) as server: httpx.get(server.url + "/healthz")``."""

    def __init__(
        self,
        app,
        *,
        ready: bool = True,
        timeout: float = 60.0,
        settings: Settings | None = None,
        log_level: str = "warning",
    ) -> None:
        # The server-level settings (timeouts, connection limit) are the app's own unless
        # given: the app built by create_app keeps them in its state.
        service = getattr(getattr(app, "state", None), "service", None)
        settings = settings or getattr(service, "settings", None) or Settings(_env_file=None)
        self.server = build_server(
            app,
            host="127.0.0.1",
            port=0,
            log_level=log_level,
            settings=settings,
            on_listening=service.listening if service is not None else None,
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait_ready, self.timeout = ready, timeout
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if self.wait_ready:
            self.until_ready(deadline)
        return self

    def until_ready(self, deadline: float) -> None:
        while httpx.get(self.url + "/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server never became ready")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __exit__(self, *exc) -> None:
        self.stop()

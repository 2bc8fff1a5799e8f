"""``clipseg-serve`` whose weights load only once a file exists: a replica "still loading".

The same app, server and loader as ``clipseg-serve`` (settings from ``CLIPSEG_*``); the
predictor factory first waits for ``--gate`` to appear, so the process listens, answers
``/healthz`` 200 and ``/readyz`` 503 (``not_ready``) exactly as a replica does while it
downloads or loads its weights, for as long as the caller wants. Not a test.

    CLIPSEG_WEIGHTS=random:tiny python -m bench.gated_server --port 8001 --gate /tmp/go
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from clipseg_serve.service.config import Settings
from clipseg_serve.service.logs import configure_logging
from clipseg_serve.service.server import serve_app
from clipseg_serve.service.state import default_predictor_factory


def gated_factory(gate: Path):
    def factory(settings: Settings) -> Predictor:
        while not gate.exists():  # runs in a worker thread (ServiceState.load)
            time.sleep(0.05)
        return default_predictor_factory(settings)

    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gate", type=Path, required=True, help="load once this file exists")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    settings = Settings(host="127.0.0.1", port=args.port, log_level=args.log_level)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, predictor_factory=gated_factory(args.gate))
    server = serve_app(app, settings)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


if __name__ == "__main__":
    main()

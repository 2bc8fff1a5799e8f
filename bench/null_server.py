"""The real service stack around ``NullPredictor``, for host-path benchmarks. Not a test.

Same app (``service.app.create_app``), middlewares, scheduler, batcher and uvicorn server
(``service.server.serve_app``) as ``clipseg-serve``; only the predictor factory is
``bench.null_model.null_factory``. Settings come from the ``CLIPSEG_*`` environment like
the real server's (``CLIPSEG_WEIGHTS`` is ignored). ``--stage-cpu`` adds per-stage CPU
accounting and ``GET /bench/cpu`` (``bench/stage_cpu.py``); ``--device-decode`` leaves JPEG
decoding to the batch, as ``CLIPSEG_DECODE=gpu`` does.

    python -m bench.null_server --port 8001 [--stage-cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import functools

from bench.null_model import null_factory
from clipseg_serve.service.app import create_app
from clipseg_serve.service.config import Settings
from clipseg_serve.service.logs import configure_logging
from clipseg_serve.service.server import serve_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--stage-cpu", action="store_true", help="per-stage CPU accounting")
    parser.add_argument(
        "--device-decode",
        action="store_true",
        help="decode JPEGs in the batch (the model thread) as a GPU server does",
    )
    args = parser.parse_args()
    settings = Settings(host=args.host, port=args.port, log_level=args.log_level)
    configure_logging(settings.log_level, settings.log_format)
    decode = "device" if args.device_decode else "cpu"
    app = create_app(settings, predictor_factory=functools.partial(null_factory, decode=decode))
    if args.stage_cpu:
        from bench import stage_cpu

        stage_cpu.install(app)
    server = serve_app(app, settings)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()


if __name__ == "__main__":
    main()

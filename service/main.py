"""``clipseg-serve``: run the service with uvicorn (one worker: it owns one device)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence

from .config import Settings

#: Exit status when the server could not start (uvicorn.run's own), or when it stopped
#: because it could not serve (weights failed to load, the model worker died or hung):
#: non-zero, so Docker's restart policy and Kubernetes restart the container.
STARTUP_FAILURE = 3
FATAL_FAILURE = 3


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipseg-serve",
        description="Serve CLIPSeg over HTTP. Every setting is also a CLIPSEG_* environment "
        "variable (see the README); flags override them.",
    )
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--weights", default=None, help=f"weights source ({settings.weights})")
    parser.add_argument("--device", default=None, help=f"auto | cpu | cuda ({settings.device})")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from .app import create_app
    from .server import build_server

    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    overrides = {k: v for k, v in {"weights": args.weights, "device": args.device}.items() if v}
    settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    fatal: list[str] = []

    def stop_on_fatal(reason: str) -> None:
        # Graceful stop (queued jobs still finish), then a non-zero exit below.
        logging.getLogger("service").error("exiting: %s", reason)
        fatal.append(reason)
        server.should_exit = True

    on_fatal = stop_on_fatal if settings.exit_on_fatal else None
    # One worker per process: each worker holds its own model and batch queue.
    server = build_server(
        create_app(settings, on_fatal=on_fatal),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        settings=settings,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if fatal:
        sys.exit(FATAL_FAILURE)


if __name__ == "__main__":
    main()

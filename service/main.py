"""``clipseg-serve``: run the service with uvicorn (one worker: it owns one device)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from .config import Settings


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
    import uvicorn

    from .app import create_app

    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    overrides = {k: v for k, v in {"weights": args.weights, "device": args.device}.items() if v}
    settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    # One worker per process: each worker holds its own model and batch queue.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=1,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )


if __name__ == "__main__":
    main()

"""``clipseg-serve``: run the service with uvicorn (one worker: it owns one device).

The arguments are parsed before anything heavy is imported: torch, open_clip, FastAPI
and uvicorn take seconds to import, and ``--help`` (or a typo) should answer at once.
Only ``service.config`` (pydantic-settings) is imported up front, for the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, get_args

from clipseg_serve.service.config import LogLevel, Settings

#: Exit status when the server could not start (uvicorn.run's own), or when it stopped
#: because it could not serve (weights failed to load, the model worker died or hung):
#: non-zero, so Docker's restart policy and Kubernetes restart the container.
STARTUP_FAILURE = 3
FATAL_FAILURE = 3

#: (flag, setting, help) for every option; each is also CLIPSEG_<SETTING>.
OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--host", "host", "bind address"),
    ("--port", "port", "HTTP port"),
    (
        "--weights",
        "weights",
        "weights source: a HuggingFace hub id, a checkpoint directory, an official decoder "
        "file, or random:<variant> for a smoke run (e.g. random:tiny)",
    ),
    ("--device", "device", "auto | cpu | cuda | cuda:N"),
    ("--log-level", "log_level", "log level"),
    ("--log-format", "log_format", "text, or json: one JSON object per line"),
)


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag says its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="clipseg-serve",
        description="Serve CLIPSeg over HTTP. Every setting is also a CLIPSEG_* environment "
        "variable (the README lists them all); flags override them. Offline, or just to "
        "try it: clipseg-serve --weights random:tiny.",
    )
    choices = {"log_level": get_args(LogLevel), "log_format": ("text", "json")}
    for flag, name, text in OPTIONS:
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            type=int if name == "port" else str,
            choices=choices.get(name),
            help=f"{text} (CLIPSEG_{name.upper()}; default: {_default(name)})",
        )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the flags that were given on top."""
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    # Validated like the environment (model_copy would not validate).
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:  # pydantic's ValidationError: a bad CLIPSEG_* value
        parser.exit(2, f"clipseg-serve: invalid settings: {exc}\n")

    from clipseg_serve.service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Heavy imports only now, and after logging is set up (their warnings are logged).
    from clipseg_serve.service.app import create_app
    from clipseg_serve.service.server import serve_app

    fatal: list[str] = []

    def stop_on_fatal(reason: str) -> None:
        # The reason is already logged (one ERROR line); graceful stop (queued jobs still
        # finish), then a non-zero exit below.
        logging.getLogger("clipseg_serve.service").warning(
            "stopping with exit status %d (CLIPSEG_EXIT_ON_FATAL=false keeps the process "
            "up, with /healthz 503)",
            FATAL_FAILURE,
        )
        fatal.append(reason)
        server.should_exit = True

    on_fatal = stop_on_fatal if settings.exit_on_fatal else None
    app = create_app(settings, on_fatal=on_fatal)
    # One worker per process: each worker holds its own model and batch queue.
    server = serve_app(app, settings)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if fatal:
        sys.exit(FATAL_FAILURE)


if __name__ == "__main__":
    main()

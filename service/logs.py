"""One log format for the whole process: the app's loggers, uvicorn's and Python warnings.

The root logger gets one handler; uvicorn is configured with ``log_config=None``
(service/server.py), so its ``uvicorn.error`` and ``uvicorn.access`` loggers keep no
handlers of their own and propagate here. Every line carries its level name and the
request ID when there is one (service/request_id.py).

``text``: ``2025-01-31 12:00:00,123 INFO service.state [<request id or ->] message``.
``json``: one object per line with ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, ``request_id`` (when known) and ``exception`` (the traceback, when any).
The JSON formatter is the few lines below rather than python-json-logger: the record has
six fixed keys and ``json.dumps`` does the only hard part (escaping); a dependency would
buy options nobody here sets.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import IO, Literal

from clipseg_serve.service import request_id

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

#: Loggers too chatty at DEBUG for a service log (PIL logs every PNG chunk it reads).
_QUIET = {"PIL": logging.INFO}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id``: the current request's ID, or ``-`` outside requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.current() or "-"
        return True


class OneLineWarnings(logging.Filter):
    """Python warnings as one line: ``logging.captureWarnings`` logs
    ``file:line: Category: message`` *plus* the offending source line under it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":
            text = record.getMessage().strip()
            record.msg, record.args = (text.splitlines()[0] if text else text), ()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry: dict[str, str] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(fmt: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with the format and both filters."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(OneLineWarnings())
    return handler


def configure_logging(
    level: str = "info", fmt: LogFormat = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Route every logger and Python's warnings through one handler; returns it.

    Replaces the root logger's handlers, so calling it again reconfigures rather than
    duplicating lines.
    """
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    # Shown once per place, as Python does by default, but as log lines in this format.
    logging.captureWarnings(True)
    return handler

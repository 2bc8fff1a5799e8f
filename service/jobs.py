"""What travels through the scheduler: a ready model request plus its bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from clipseg_serve.model.inference.batch import Segmentation, SegmentRequest
from clipseg_serve.service.cost import HostWork, Work
from clipseg_serve.service.request_id import current as current_request_id
from clipseg_serve.service.scheduler import Ticket


@dataclass(frozen=True)
class Cost:
    """What a request will cost, known before its pixels are decoded.

    work: on the model thread; host: its decoding and encoding; image_key: the upload's
    content key (requests for the same image share its backbone pass); asked_s: the
    client's own ``X-Request-Timeout`` (None: the server's timeout applies).
    """

    work: Work
    host: HostWork
    image_key: str
    asked_s: float | None = None


@dataclass(frozen=True)
class Estimates:
    """The seconds admission expected this request to take, alone: on the model thread
    and on the host (decoding and encoding)."""

    model: float
    host: float


@dataclass(eq=False)
class SegmentJob:
    """One HTTP request's work for the model thread.

    deadline: a ``time.monotonic()`` value; arrived: the request's arrival on the same
    clock (None: when it is admitted). abandoned: set on the event loop when the
    request gave up (client gone, deadline passed); the model thread reads it before
    rendering the job's masks and skips them. request_id: the HTTP request's ID (taken
    where the job is made), for the model thread's log lines.
    """

    request: SegmentRequest
    deadline: float
    cost: Cost
    arrived: float | None = None
    future: asyncio.Future[Segmentation] | None = None
    ticket: Ticket | None = None
    abandoned: bool = False
    model_seconds: float = 0.0
    request_id: str | None = field(default_factory=current_request_id)

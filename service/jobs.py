"""What travels through the scheduler: a ready model request plus its bookkeeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from model.batch import Segmentation, SegmentRequest

from .cost import Work, work_for
from .request_id import current as current_request_id
from .scheduler import Ticket


def request_work(request: SegmentRequest) -> Work:
    """``work_for`` a decoded request (the same figures the headers gave before)."""
    supports = 0 if request.supports is None else int(request.supports.shape[0])
    return work_for(request.output_pixels, request.rows, request.mask_count, request.soft, supports)


@dataclass(eq=False)
class SegmentJob:
    """One HTTP request's work for the model thread.

    deadline: a ``time.monotonic()`` value. abandoned: set on the event loop when the
    request gave up (client gone, deadline passed); the model thread reads it before
    rendering the job's masks and skips them. request_id: the HTTP request's ID (taken
    where the job is made), for the model thread's log lines.
    """

    request: SegmentRequest
    deadline: float
    future: asyncio.Future[Segmentation] | None = None
    ticket: Ticket | None = None
    abandoned: bool = False
    model_seconds: float = 0.0
    request_id: str | None = field(default_factory=current_request_id)

    @property
    def work(self) -> Work:
        return request_work(self.request)

"""What travels through the batching queue: a ready model request plus queue bookkeeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from model.batch import SegmentRequest


@dataclass
class SegmentJob:
    """One HTTP request's work: ``request`` (tensors, prompts, options) for the model
    thread, its deadline (a ``time.monotonic()`` value) and the future it resolves."""

    request: SegmentRequest
    deadline: float = float("inf")
    enqueued_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None

    @property
    def rows(self) -> int:
        """Decoder rows this job adds to a batch."""
        return self.request.rows

    @property
    def image_key(self) -> str:
        return self.request.image_key

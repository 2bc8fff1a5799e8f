"""Host <-> device copies that overlap with compute: pinned buffers, side streams, events.

On CUDA, ``to_device`` stages a host tensor in page-locked memory and copies it on an
upload stream (the compute stream waits for that copy, not for everything before it), and
``to_host`` copies results into page-locked buffers on a download stream once the compute
that produced them is done, returning at once; ``HostCopy.wait`` blocks only the thread that
needs the data. So while one batch computes, the next one's inputs travel up and the
previous one's masks travel down.

On a CPU device every copy is the identity and nothing waits: the same code path, the same
tensors, bit-identical results (which is what lets the CPU tests cover the pipeline).

This module imports torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["HostCopy", "Transfers"]


@dataclass
class HostCopy:
    """Tensors on their way to the host; ``wait()`` returns them once they have arrived."""

    tensors: list[torch.Tensor]
    done: torch.cuda.Event | None = None

    def wait(self) -> list[torch.Tensor]:
        """The host tensors (blocks this thread until the copies have finished)."""
        if self.done is not None:
            self.done.synchronize()
        return self.tensors


class Transfers:
    """Copies for one device (see the module docstring); cheap to make, one per Predictor."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._upload = torch.cuda.Stream(device) if self.cuda else None
        self._download = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, copied from pinned memory on the upload stream.

        The current (compute) stream waits for the copy; the copy's memory is recorded as
        used by the compute stream, so the caching allocator cannot hand it out early.
        """
        if not self.cuda or host.device.type != "cpu":
            return host.to(self.device)
        pinned = host if host.is_pinned() else host.pin_memory()
        compute = torch.cuda.current_stream(self.device)
        assert self._upload is not None
        with torch.cuda.stream(self._upload):
            on_device = pinned.to(self.device, non_blocking=True)
        compute.wait_stream(self._upload)
        on_device.record_stream(compute)
        return on_device

    def to_host(self, tensors: Sequence[torch.Tensor]) -> HostCopy:
        """Start copying ``tensors`` (device) to pinned host buffers; returns at once.

        The download stream waits for the compute enqueued so far, then copies; the
        sources are recorded as in use by that stream until the copies finish.
        """
        if not self.cuda:
            return HostCopy([t.cpu() for t in tensors])
        assert self._download is not None
        self._download.wait_stream(torch.cuda.current_stream(self.device))
        out = []
        with torch.cuda.stream(self._download):
            for tensor in tensors:
                tensor.record_stream(self._download)
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                out.append(host.copy_(tensor, non_blocking=True))
        done = torch.cuda.Event()
        done.record(self._download)
        return HostCopy(out, done)

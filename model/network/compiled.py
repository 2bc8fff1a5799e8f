"""The vision tower through ``torch.compile`` at a few fixed batch sizes.

The backbone is nearly all of a batch's FLOPs, and on a GPU its eager form pays a kernel
launch per op and unfused elementwise work. Compiled with static shapes it is a handful of
fused kernels; but every new shape is a new compilation (tens of seconds), so batches are
padded with blank images up to the next of a few bucket sizes (and cut into chunks of the
largest), and every bucket is compiled during warm-up, before /readyz turns 200 — never on
a user's request. The padding images are independent of the real ones (a ViT treats each
image alone), and their rows are dropped. The decoder, cheap and shaped by the prompt
count too, stays eager.

This module imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["DEFAULT_BUCKETS", "BucketedTower"]

#: Batch sizes compiled by default: a lone request, a moderate batch, a full default batch.
DEFAULT_BUCKETS = (1, 4, 8, 16, 32)

Features = Callable[[torch.Tensor], list[torch.Tensor]]


class BucketedTower:
    """``image_features`` compiled per bucket: [B, 3, S, S] -> taps, each [B, T, W].

    Args:
        features: the eager ``ClipSeg.image_features``.
        buckets: batch sizes to compile (sorted, de-duplicated).
        compiler: ``torch.compile`` or a stand-in (the tests use an eager backend).
    """

    def __init__(
        self,
        features: Features,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        compiler: Callable[..., Features] | None = None,
    ) -> None:
        if not buckets or min(buckets) < 1:
            raise ValueError(f"compile buckets must be positive batch sizes, got {buckets}")
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        compile_fn = compiler or torch.compile
        self.compiled = compile_fn(features, dynamic=False)
        self.calls: dict[int, int] = {size: 0 for size in self.buckets}

    def bucket(self, count: int) -> int:
        """The compiled size a batch of ``count`` images runs at (chunks of the largest)."""
        return next((b for b in self.buckets if b >= count), self.buckets[-1])

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        largest = self.buckets[-1]
        if images.shape[0] > largest:
            chunks = [self(chunk) for chunk in images.split(largest)]
            return [torch.cat(taps) for taps in zip(*chunks, strict=True)]
        count = int(images.shape[0])
        size = self.bucket(count)
        if size > count:
            blank = images.new_zeros((size - count, *images.shape[1:]))
            images = torch.cat([images, blank])
        self.calls[size] += 1
        return [tap[:count] for tap in self.compiled(images)]

    def warm_up(self, example: torch.Tensor) -> None:
        """Compile every bucket now with ``example`` ([1, 3, S, S], on the device)."""
        for size in self.buckets:
            self.compiled(example.expand(size, *example.shape[1:]).contiguous())

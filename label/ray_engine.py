"""The Ray engine: the same job on a Ray cluster (``--engine ray``).

Ray Data holds the images still to label, cut into the local engine's own chunks of
``batch_images`` images (the same batches: the same masks);
``map_batches`` runs an actor pool — one predictor per worker, on one GPU each, or on
``cpus_per_worker`` CPUs — over them, each actor reading, decoding and labelling a chunk
with the local engine's functions (``label.local.prepare_item`` and ``label_chunk``). The
driver writes the records into the same shards as the local engine as batches come back,
so resuming, the output files and the summary are the same.

With no address it starts a local Ray instance on this machine; ``address`` joins an
existing cluster ("auto", or ``ray://host:10001``); under ``ray job submit`` the job's
own cluster is found by ``ray.init()``. Ray itself is an optional dependency.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from clipseg_serve.label.local import (
    Progress,
    RunStats,
    ShardWriter,
    label_chunk,
    prepare_item,
)
from clipseg_serve.label.options import LabelOptions
from clipseg_serve.label.shards import ShardStore
from clipseg_serve.label.sources import Item


class LabelActor:
    """One predictor in a Ray worker; ``__call__`` labels a batch of items.

    ``load``: keyword arguments of ``load_predictor``; ``threads``: this worker's CPU
    share — torch's intra-op threads, and the threads that read and decode a chunk's
    images side by side (Pillow and file reads release the GIL).
    """

    def __init__(self, load: dict[str, Any], options: LabelOptions, threads: int) -> None:
        import torch

        from clipseg_serve.model.backends import load_predictor

        torch.set_num_threads(max(1, threads))
        self.predictor = load_predictor(**load)
        self.options = options
        self.readers = ThreadPoolExecutor(max(1, threads), thread_name_prefix="clipseg-read")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of chunks (JSON lists of [index, uri, prompts]) -> their records (JSON)."""
        records = []
        for text in batch["chunk"]:
            items = {int(i): Item(uri, tuple(prompts) if prompts else None)
                     for i, uri, prompts in json.loads(text)}  # fmt: skip
            prepared = self.readers.map(
                lambda item: prepare_item(self.predictor, item, self.options), items.values()
            )
            chunk = list(zip(items, prepared, strict=True))
            records += label_chunk(self.predictor, items, chunk, self.options)
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def label_items_on_ray(
    load: dict[str, Any],
    items: Sequence[Item],
    options: LabelOptions,
    store: ShardStore,
    *,
    workers: int = 2,
    batch_images: int = 8,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    progress: Progress | None = None,
) -> RunStats:
    """Label every item not yet in ``store`` on Ray (see the module docstring)."""
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'ray[data]'") from None
    todo = store.remaining(len(items))
    rows = [
        {
            "chunk": json.dumps(
                [[i, items[i].uri, items[i].prompts] for i in todo[k : k + batch_images]]
            )
        }
        for k in range(0, len(todo), batch_images)
    ]
    if not rows:
        return RunStats()
    writer = ShardWriter(store, len(todo), progress)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")  # fmt: skip
    try:
        dataset = ray.data.from_items(rows).map_batches(
            LabelActor,
            fn_constructor_kwargs={
                "load": load, "options": options, "threads": int(max(1, cpus_per_worker)),
            },
            batch_size=1,  # one chunk: one batch plan, as the local engine's
            concurrency=workers,
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )  # fmt: skip
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            writer.write([json.loads(text) for text in batch["record"]])
    finally:
        if started_here:
            ray.shutdown()
    return writer.finish()

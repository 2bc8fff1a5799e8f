"""The local engine: a streaming pipeline on one machine that keeps the device busy.

Worker threads read and decode images (``prepare_image``: EXIF, resize, the guide for
refinement) ahead of the model — at most ``2 x batch_images`` images in memory, whatever
the dataset's size; the calling thread runs one batch plan over ``batch_images`` images
(one backbone pass per image, every prompt in the decoder) while a worker encodes the
previous batch's masks; each batch becomes one shard (``label.shards``), written in
order. An image that cannot be read or decoded becomes an error record, and the run goes
on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from clipseg_serve.label.options import LabelOptions
from clipseg_serve.label.records import error_record, image_record
from clipseg_serve.label.shards import ShardStore
from clipseg_serve.label.sources import Item, read_bytes
from clipseg_serve.model.errors import ClipSegError
from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.inference.preparation import PreparedImage

#: Progress callback: (images done, images to do, seconds since the start).
Progress = Callable[[int, int, float], None]


@dataclass
class RunStats:
    """What a run did: images labelled and failed in this run, masks written, seconds."""

    labelled: int = 0
    failed: int = 0
    annotations: int = 0
    seconds: float = 0.0

    def count(self, records: Sequence[dict]) -> None:
        """Add a chunk's records (``label.records``) to the counts."""
        for record in records:
            if "error" in record:
                self.failed += 1
            else:
                self.labelled += 1
                self.annotations += len(record["annotations"])

    @property
    def done(self) -> int:
        """Images labelled or failed so far."""
        return self.labelled + self.failed


class ShardWriter:
    """Where both engines put each chunk's records as it finishes: a new shard, the run's
    counts, and a progress report over ``todo`` images."""

    def __init__(self, store: ShardStore, todo: int, progress: Progress | None) -> None:
        self.store, self.todo, self.progress = store, todo, progress
        self.stats, self.started = RunStats(), time.monotonic()

    def write(self, records: list[dict]) -> None:
        self.store.write(records)
        self.stats.count(records)
        if self.progress is not None:
            self.progress(self.stats.done, self.todo, time.monotonic() - self.started)

    def finish(self) -> RunStats:
        """This run's counts, with its seconds."""
        self.stats.seconds = time.monotonic() - self.started
        return self.stats


def label_items(
    predictor: Predictor,
    items: Sequence[Item],
    options: LabelOptions,
    store: ShardStore,
    *,
    batch_images: int = 8,
    workers: int = 2,
    progress: Progress | None = None,
) -> RunStats:
    """Label every item not yet in ``store``; returns this run's ``RunStats``."""
    if batch_images < 1 or workers < 1:
        raise ValueError("batch_images and workers must be >= 1")
    todo = store.remaining(len(items))
    writer = ShardWriter(store, len(todo), progress)
    with ThreadPoolExecutor(workers, thread_name_prefix="clipseg-label") as pool:
        encoding: Future[list[dict]] | None = None
        for chunk in _prepared_chunks(pool, predictor, items, todo, options, batch_images):
            segmented = segment_chunk(predictor, items, chunk, options)
            if encoding is not None:
                # in order; at most one chunk's masks wait to be encoded
                writer.write(encoding.result())
            encoding = pool.submit(chunk_records, items, segmented, options)
        if encoding is not None:
            writer.write(encoding.result())
    return writer.finish()


Prepared = tuple[int, PreparedImage | str]  # (index, the image or why it failed)


def _prepared_chunks(
    pool: ThreadPoolExecutor,
    predictor: Predictor,
    items: Sequence[Item],
    todo: list[int],
    options: LabelOptions,
    size: int,
) -> Iterator[list[Prepared]]:
    """Chunks of ``size`` prepared images in ``todo``'s order, decoding one chunk ahead."""

    def prepare(index: int) -> PreparedImage | str:
        return prepare_item(predictor, items[index], options)

    def submit(start: int) -> list[tuple[int, Future]]:
        return [(i, pool.submit(prepare, i)) for i in todo[start : start + size]]

    ahead = submit(0)
    for start in range(0, len(todo), size):
        current, ahead = ahead, submit(start + size)
        yield [(i, future.result()) for i, future in current]


def prepare_item(predictor: Predictor, item: Item, options: LabelOptions) -> PreparedImage | str:
    """One image read and decoded for the model, or why it could not be."""
    try:
        return predictor.prepare_image(read_bytes(item.uri), guide=options.guide)
    except (OSError, ClipSegError) as exc:
        return f"{type(exc).__name__}: {exc}"


Segmented = tuple[int, Segmentation | str]  # (index, its masks or why it has none)


def segment_chunk(
    predictor: Predictor,
    items: Mapping[int, Item] | Sequence[Item],
    chunk: list[Prepared],
    options: LabelOptions,
) -> list[Segmented]:
    """One batch plan over a chunk's decodable images (``items[index]`` for each), in the
    chunk's order; images that failed keep their reason."""
    reasons: dict[int, str] = {}
    requests, indexes = [], []
    for index, prepared in chunk:
        if isinstance(prepared, str):
            reasons[index] = prepared
            continue
        try:
            requests.append(options.request(prepared, items[index].uri, items[index].prompts))
            indexes.append(index)
        except (ValueError, ClipSegError) as exc:
            reasons[index] = str(exc)
    results = predictor.segment_batch(requests) if requests else []
    found: dict[int, Segmentation | str] = dict(reasons)
    for index, result in zip(indexes, results, strict=True):
        assert result is not None  # nothing is skipped here
        found[index] = result
    return [(index, found[index]) for index, _ in chunk]


def chunk_records(
    items: Mapping[int, Item] | Sequence[Item], segmented: list[Segmented], options: LabelOptions
) -> list[dict]:
    """The records (``label.records``) of a segmented chunk: the masks encoded."""
    return [
        error_record(index, items[index].uri, found)
        if isinstance(found, str)
        else image_record(
            index, items[index].uri, found, options.segmentation, options.polygon_tolerance
        )
        for index, found in segmented
    ]


def label_chunk(
    predictor: Predictor,
    items: Mapping[int, Item] | Sequence[Item],
    chunk: list[Prepared],
    options: LabelOptions,
) -> list[dict]:
    """The records of one chunk of prepared images: segmented, then encoded."""
    return chunk_records(items, segment_chunk(predictor, items, chunk, options), options)

"""Bounded-concurrency maps for ``segment_many``: a thread pool (sync) or a semaphore
(async); results come back in input order, a failed item as its exception unless
``fail_fast`` asks to stop the run at the first failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Progress(Protocol):
    """What a progress bar needs (tqdm's interface)."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str = "segment") -> Progress:
    """A tqdm bar when ``enabled`` (the ``progress`` extra), else a no-op.

    Raises:
        ImportError: ``enabled`` and tqdm is not installed.
    """
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm: pip install 'clipseg-client[progress]'"
        ) from exc
    return tqdm(total=total, desc=desc, unit="image")


def _check(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")


def map_threaded(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    concurrency: int,
    fail_fast: bool,
    bar: Progress,
) -> list[R | Exception]:
    """``fn`` over ``items`` on at most ``concurrency`` threads, results in input order.

    A failed item's slot holds its exception; with ``fail_fast`` the first failure is
    raised instead and the items not yet started are cancelled.
    """
    _check(concurrency)
    results: list[R | Exception] = [None] * len(items)  # type: ignore[list-item]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="clipseg") as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in futures:
            future.add_done_callback(lambda _: bar.update(1))
        if fail_fast:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                pool.shutdown(wait=True, cancel_futures=True)
                raise min(failed, key=futures.__getitem__).exception()  # type: ignore[misc]
        for future, i in futures.items():
            exc = future.exception()
            results[i] = exc if isinstance(exc, Exception) else future.result()
    return results


async def map_async(
    fn: Callable[[T], Awaitable[R]],
    items: Sequence[T],
    *,
    concurrency: int,
    fail_fast: bool,
    bar: Progress,
) -> list[R | Exception]:
    """``await fn(item)`` for every item, at most ``concurrency`` at a time, results in
    input order; failures as in :func:`map_threaded` (``fail_fast`` cancels the rest)."""
    _check(concurrency)
    gate = asyncio.Semaphore(concurrency)
    results: list[R | Exception] = [None] * len(items)  # type: ignore[list-item]

    async def one(i: int, item: T) -> None:
        async with gate:
            try:
                results[i] = await fn(item)
            except Exception as exc:
                if fail_fast:
                    raise
                results[i] = exc
            finally:
                bar.update(1)

    tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results


def per_image(
    segment_text: Callable[..., T],
    segment_visual: Callable[..., T],
    prompts: str | Sequence[str] | None,
    supports: Sequence[Any] | None,
    options: dict[str, Any],
) -> Callable[[Any], T]:
    """What ``segment_many`` does with each image: a visual call with ``supports`` when
    they are given (``prompts``, then one string, makes it hybrid), else a text call.

    Raises:
        ValueError: neither prompts nor supports, or several prompts with supports.
    """
    if supports is None:
        if prompts is None:
            raise ValueError("segment_many needs prompts or supports")
        return lambda image: segment_text(image, prompts, **options)
    if prompts is not None and not isinstance(prompts, str):
        raise ValueError("a visual segment_many takes at most one prompt (a hybrid text)")
    return lambda image: segment_visual(image, supports, prompt=prompts, **options)

"""The asyncio client (``httpx.AsyncClient``): the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from .base import DEFAULT_URL, CallPlan, Settings, segmentation_of
from .calls import Call, Combine, Format, Support, Template, text_call, visual_call
from .errors import ClipSegError, NotReady
from .images import ImageInput
from .many import map_async, per_image, progress_bar
from .options import PostOptions
from .results import Segmentation
from .retry import NO_RETRY, RetryPolicy


class AsyncClient:
    """``async with AsyncClient(url) as client: await client.segment_text(...)``.

    Arguments as :class:`clipseg_client.Client` (``transport`` an
    ``httpx.AsyncBaseTransport``). Image encoding (PNG of arrays/PIL images) runs in a
    worker thread, so it does not stall the event loop.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        deadline_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = Settings.make(url, api_key, timeout, retry, deadline_s)
        self._http = httpx.AsyncClient(
            base_url=self.settings.url,
            headers=self.settings.base_headers(),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def segment_text(
        self,
        image: ImageInput,
        prompts: str | Sequence[str],
        *,
        negative_prompts: str | Sequence[str] = (),
        combine: Combine = "none",
        threshold: float | Sequence[float] | None = None,
        template: Template = "none",
        soft: bool = False,
        format: Format = "rle",
        post: PostOptions | None = None,
        timeout: float | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> Segmentation:
        """Segment ``image`` from text prompts; see ``Client.segment_text``."""
        call = await asyncio.to_thread(
            text_call, image, prompts, negative_prompts=negative_prompts, combine=combine,
            threshold=threshold, template=template, soft=soft, fmt=format, post=post,
        )  # fmt: skip
        return await self._segment(call, timeout, deadline_s, request_id)

    async def segment_visual(
        self,
        image: ImageInput,
        supports: Sequence[Support],
        *,
        prompt: str | None = None,
        text_weight: float | None = None,
        threshold: float | None = None,
        soft: bool = False,
        format: Format = "rle",
        post: PostOptions | None = None,
        timeout: float | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> Segmentation:
        """Segment what the support masks mark; see ``Client.segment_visual``."""
        call = await asyncio.to_thread(
            visual_call, image, supports, prompt=prompt, text_weight=text_weight,
            threshold=threshold, soft=soft, fmt=format, post=post,
        )  # fmt: skip
        return await self._segment(call, timeout, deadline_s, request_id)

    async def segment_many(
        self,
        images: Iterable[ImageInput],
        prompts: str | Sequence[str] | None = None,
        *,
        supports: Sequence[Support] | None = None,
        concurrency: int = 4,
        progress: bool = False,
        fail_fast: bool = False,
        **options: Any,
    ) -> list[Segmentation | Exception]:
        """``segment_text`` (or ``segment_visual`` with ``supports``) for every image, at
        most ``concurrency`` in flight (an
        ``asyncio.Semaphore``); results in input order, a failed item as its exception
        unless ``fail_fast`` (see ``Client.segment_many``)."""
        items = list(images)
        bar = progress_bar(len(items), progress)
        try:
            return await map_async(
                per_image(self.segment_text, self.segment_visual, prompts, supports, options),
                items,
                concurrency=concurrency,
                fail_fast=fail_fast,
                bar=bar,
            )
        finally:
            bar.close()

    async def info(self) -> dict[str, Any]:
        """``GET /info``."""
        return (await self._get("/info")).json()

    async def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no retry). Raises ``NotReady`` when the server is unhealthy."""
        return (await self._get("/healthz", NO_RETRY)).json()

    async def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 now (no retry)."""
        try:
            await self._get("/readyz", NO_RETRY)
        except ClipSegError:
            return False
        return True

    async def wait_ready(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        """Wait until the server is ready.

        Raises:
            NotReady: it was not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() + interval > deadline:
                raise NotReady(f"not ready after {timeout:g} s", code="not_ready")
            await asyncio.sleep(interval)

    async def _segment(
        self, call: Call, timeout: float | None, deadline_s: float | None, rid: str | None
    ) -> Segmentation:
        plan = CallPlan(
            self.settings, "POST", call.path, call, timeout=timeout, deadline_s=deadline_s,
            request_id=rid,
        )  # fmt: skip
        return segmentation_of(await self._run(plan), plan.request_id)

    async def _get(self, path: str, retry: RetryPolicy | None = None) -> httpx.Response:
        return await self._run(CallPlan(self.settings, "GET", path, retry=retry))

    async def _run(self, plan: CallPlan) -> httpx.Response:
        """One call: attempts until a 2xx, a final error, or the budget's end."""
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    **plan.request()
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = plan.after(outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return outcome
            await asyncio.sleep(delay)

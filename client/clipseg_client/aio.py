"""The asyncio client (``httpx.AsyncClient``): the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from .base import (
    DEFAULT_URL,
    Settings,
    call_headers,
    error_of,
    new_request_id,
    request_args,
    segmentation_of,
    wait_or_raise,
)
from .calls import Call, Combine, Format, Support, Template, text_call, visual_call
from .errors import ClipSegError, NotReady, connection_failed
from .images import ImageInput
from .many import map_async, progress_bar
from .results import Segmentation
from .retry import Attempts, RetryPolicy


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
        threshold: float | None = None,
        template: Template = "none",
        soft: bool = False,
        format: Format = "rle",
        timeout: float | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> Segmentation:
        """Segment ``image`` from text prompts; see ``Client.segment_text``."""
        call = await asyncio.to_thread(
            text_call, image, prompts, negative_prompts=negative_prompts, combine=combine,
            threshold=threshold, template=template, soft=soft, fmt=format,
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
        timeout: float | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
    ) -> Segmentation:
        """Segment what the support masks mark; see ``Client.segment_visual``."""
        call = await asyncio.to_thread(
            visual_call, image, supports, prompt=prompt, text_weight=text_weight,
            threshold=threshold, soft=soft, fmt=format,
        )  # fmt: skip
        return await self._segment(call, timeout, deadline_s, request_id)

    async def segment_many(
        self,
        images: Iterable[ImageInput],
        prompts: str | Sequence[str],
        *,
        concurrency: int = 4,
        progress: bool = False,
        fail_fast: bool = False,
        **options: Any,
    ) -> list[Segmentation | Exception]:
        """``segment_text`` for every image, at most ``concurrency`` in flight (an
        ``asyncio.Semaphore``); results in input order, a failed item as its exception
        unless ``fail_fast`` (see ``Client.segment_many``)."""
        items = list(images)
        bar = progress_bar(len(items), progress)
        try:
            return await map_async(
                lambda image: self.segment_text(image, prompts, **options),
                items,
                concurrency=concurrency,
                fail_fast=fail_fast,
                bar=bar,
            )
        finally:
            bar.close()

    async def info(self) -> dict[str, Any]:
        """``GET /info``."""
        return (await self._send("GET", "/info", None, None, None, None)).json()

    async def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no retry). Raises ``NotReady`` when the server is unhealthy."""
        return (await self._once("GET", "/healthz")).json()

    async def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 now (no retry)."""
        try:
            await self._once("GET", "/readyz")
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
        rid = rid or new_request_id()
        response = await self._send("POST", call.path, call, timeout, deadline_s, rid)
        return segmentation_of(response, rid)

    async def _once(self, method: str, path: str) -> httpx.Response:
        rid = new_request_id()
        try:
            response = await self._http.request(
                method, path, headers=call_headers(rid, None), timeout=self.settings.timeout
            )
        except httpx.TransportError as exc:
            raise connection_failed(exc, rid, 1) from exc
        if not response.is_success:
            raise error_of(response, rid, 1)
        return response

    async def _send(
        self,
        method: str,
        path: str,
        call: Call | None,
        timeout: float | None,
        deadline_s: float | None,
        rid: str | None,
    ) -> httpx.Response:
        """One call: attempts until a 2xx, a final error, or the budget's end."""
        settings, rid = self.settings, rid or new_request_id()
        attempts = Attempts(settings.retry)
        headers = call_headers(rid, deadline_s if deadline_s is not None else settings.deadline_s)
        per_attempt = timeout if timeout is not None else settings.timeout
        while True:
            attempts.made += 1
            args = request_args(method, path, call, headers, attempts.timeout(per_attempt))
            try:
                response = await self._http.request(**args)
            except httpx.TransportError as exc:
                delay = wait_or_raise(attempts, rid, exc)
            else:
                if response.is_success:
                    return response
                delay = wait_or_raise(attempts, rid, response)
            await asyncio.sleep(delay)

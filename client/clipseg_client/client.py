"""The synchronous client (``httpx.Client``); thread-safe, so one instance can serve a
thread pool (``segment_many`` does exactly that)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from .base import DEFAULT_URL, CallPlan, Settings, segmentation_of
from .calls import Call, Combine, Format, Support, Template, text_call, visual_call
from .errors import ClipSegError, NotReady
from .images import ImageInput
from .many import map_threaded, per_image, progress_bar
from .options import PostOptions
from .results import Segmentation
from .retry import NO_RETRY, RetryPolicy


class Client:
    """A client of one clipseg-serve server.

    Args:
        url: the server's base URL.
        api_key: sent as ``Authorization: Bearer <key>``; default: ``$CLIPSEG_API_KEY``.
        timeout: seconds for each attempt's connect/read/write (None: no limit); always
            cut to what is left of the retry budget.
        retry: how 429/503 answers and connection failures are retried.
        deadline_s: ask the server to give up after this many seconds
            (``X-Request-Timeout``; it never extends the server's own deadline).
        transport: an httpx transport (tests, proxies, Unix sockets); default: TCP.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        deadline_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = Settings.make(url, api_key, timeout, retry, deadline_s)
        self._http = httpx.Client(
            base_url=self.settings.url,
            headers=self.settings.base_headers(),
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- segmentation -------------------------------------------------------------------

    def segment_text(
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
        """Segment ``image`` from text prompts.

        Args:
            image: a path, encoded bytes, a PIL image or a uint8 array ``(H, W[, 3|4])``.
            prompts: one string or several; one mask per prompt unless ``combine``.
            negative_prompts: remove pixels where one of these is likelier.
            combine: ``none`` (a mask per prompt), ``union``/``intersection`` (one mask),
                ``argmax`` (exclusive masks).
            threshold: in [0, 1], or one per prompt; default: the server's calibrated one.
            template: ``none`` (raw phrase), ``photo`` or ``ensemble``.
            soft: also return each mask's probability map (``Mask.probabilities``).
            format: the wire encoding of the masks, ``rle`` (smaller) or ``png``; the
                result is the same bool array either way.
            post: refinement and post-processing (``PostOptions``).
            timeout, deadline_s: override the client's for this call.
            request_id: this call's ``X-Request-ID`` (default: a fresh one).

        Returns:
            The :class:`Segmentation`, masks as bool arrays at the image's size.

        Raises:
            ClipSegError: a subclass per failure (``InvalidInput``, ``Overloaded``...).
        """
        call = text_call(
            image, prompts, negative_prompts=negative_prompts, combine=combine,
            threshold=threshold, template=template, soft=soft, fmt=format, post=post,
        )  # fmt: skip
        return self._segment(call, timeout, deadline_s, request_id)

    def segment_visual(
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
        """Segment what the support masks mark (one-shot, or k-shot with several).

        Args:
            image: the image to segment (as in :meth:`segment_text`).
            supports: ``(support image, support mask)`` pairs; a mask is a path, bytes,
                PIL image or a bool/uint8 array ``(H, W)`` of its image's size
                (nonzero = object).
            prompt: optional text for a hybrid prompt...
            text_weight: ...mixed as ``w * text + (1 - w) * visual`` (server default 0.5).
            threshold, soft, format, timeout, deadline_s, request_id: as in
                :meth:`segment_text`.

        Returns:
            The :class:`Segmentation` with one mask (prompt ``visual``).
        """
        call = visual_call(
            image, supports, prompt=prompt, text_weight=text_weight, threshold=threshold,
            soft=soft, fmt=format, post=post,
        )  # fmt: skip
        return self._segment(call, timeout, deadline_s, request_id)

    def segment_many(
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
        """:meth:`segment_text` for every image (or :meth:`segment_visual` with the same
        ``supports`` when they are given; ``prompts`` is then an optional hybrid text), at
        most ``concurrency`` requests at once (a thread pool).

        Returns:
            One entry per image, **in input order**: its ``Segmentation``, or the
            exception it failed with (a ``ClipSegError``, or e.g. ``FileNotFoundError``),
            so one bad image does not lose the others' results.

        Args:
            progress: show a tqdm progress bar (``pip install 'clipseg-client[progress]'``).
            fail_fast: raise the first failure instead, cancelling what has not started.
            options: the other keyword arguments of :meth:`segment_text` (or of
                :meth:`segment_visual`).
        """
        items = list(images)
        bar = progress_bar(len(items), progress)
        try:
            return map_threaded(
                per_image(self.segment_text, self.segment_visual, prompts, supports, options),
                items,
                concurrency=concurrency,
                fail_fast=fail_fast,
                bar=bar,
            )
        finally:
            bar.close()

    # --- operations ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /info``: variant, weights, device, batching settings, version."""
        return self._get("/info").json()

    def health(self) -> dict[str, Any]:
        """``GET /healthz`` (no retry). Raises ``NotReady`` when the server is unhealthy."""
        response = self._get("/healthz", NO_RETRY)
        return response.json()

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 now (no retry)."""
        try:
            self._get("/readyz", NO_RETRY)
        except ClipSegError:
            return False
        return True

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        """Block until the server is ready.

        Raises:
            NotReady: it was not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() + interval > deadline:
                raise NotReady(f"not ready after {timeout:g} s", code="not_ready")
            time.sleep(interval)

    # --- the retry loop -----------------------------------------------------------------

    def _segment(
        self, call: Call, timeout: float | None, deadline_s: float | None, rid: str | None
    ) -> Segmentation:
        plan = CallPlan(
            self.settings, "POST", call.path, call, timeout=timeout, deadline_s=deadline_s,
            request_id=rid,
        )  # fmt: skip
        return segmentation_of(self._run(plan), plan.request_id)

    def _get(self, path: str, retry: RetryPolicy | None = None) -> httpx.Response:
        return self._run(CallPlan(self.settings, "GET", path, retry=retry))

    def _run(self, plan: CallPlan) -> httpx.Response:
        """One call: attempts until a 2xx, a final error, or the budget's end."""
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    **plan.request()
                )
            except httpx.TransportError as exc:
                outcome = exc
            delay = plan.after(outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return outcome
            time.sleep(delay)

"""Helpers for the demo page's real-browser tests: Debian's Chromium under Playwright, a
record of every request, console message and page error, and canvas pixels read back."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
#: No sandbox (root in a container), nothing phoned home: no component updates, sync,
#: field trials or QUIC probes that would show up as requests leaving the origin.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@dataclass
class PageLog:
    """What one page did: requests, console errors and uncaught exceptions."""

    requests: list = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("request", lambda r: self.requests.append(r))
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def _console(self, message) -> None:
        # CSP violations and failed loads are console errors in Chromium.
        if message.type in ("error", "warning"):
            self.console_errors.append(message.text)

    def api_calls(self) -> list:
        return [r for r in self.requests if "/v1/" in r.url]

    def assert_clean(self, origin: str, expected_statuses: tuple[int, ...] = ()) -> None:
        """Every request same-origin (or data:/blob:), no page error, no console error
        but the browser's own "Failed to load resource" line for an expected status."""
        foreign = [
            r.url
            for r in self.requests
            if urlparse(r.url).scheme not in ("data", "blob") and not r.url.startswith(origin)
        ]
        assert foreign == [], foreign
        assert self.page_errors == []
        allowed = [f"status of {s} " for s in expected_statuses]
        unexpected = [
            text
            for text in self.console_errors
            if not (text.startswith("Failed to load resource") and any(a in text for a in allowed))
        ]
        assert unexpected == [], unexpected


def canvas_pixels(page, selector: str) -> np.ndarray:
    """The canvas's pixels as uint8 [H, W, 4]."""
    data_url = page.eval_on_selector(selector, "c => c.toDataURL('image/png')")
    return png_data_url_to_array(data_url)


def bare_image_pixels(page, input_selector: str) -> np.ndarray:
    """The file chosen in ``input_selector``, decoded by the same browser: [H, W, 4]."""
    data_url = page.eval_on_selector(
        input_selector,
        """async input => {
            const bitmap = await createImageBitmap(input.files[0]);
            const canvas = document.createElement("canvas");
            canvas.width = bitmap.width;
            canvas.height = bitmap.height;
            canvas.getContext("2d").drawImage(bitmap, 0, 0);
            return canvas.toDataURL("image/png");
        }""",
    )
    return png_data_url_to_array(data_url)


def png_data_url_to_array(data_url: str) -> np.ndarray:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    return np.array(Image.open(io.BytesIO(raw)).convert("RGBA"))


def soft_map(entry: dict) -> np.ndarray:
    """A mask entry's 8-bit probability map, uint8 [H, W]."""
    return np.array(Image.open(io.BytesIO(base64.b64decode(entry["soft_png"]))))


@dataclass
class RecordedRequest:
    """An API request as the server received it (Chromium does not hand Playwright the
    body of a multipart request built from Blobs, so it is recorded at the server)."""

    path: str
    headers: dict[str, str]
    body: bytes

    def parts(self) -> list[tuple[str, bytes]]:
        """(field name, content) of every part of the multipart body."""
        boundary = self.headers["content-type"].split("boundary=", 1)[1].encode()
        parts = []
        for chunk in self.body.split(b"--" + boundary)[1:-1]:
            head, _, content = chunk.partition(b"\r\n\r\n")
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            parts.append((name, content[: -len(b"\r\n")]))
        return parts

    def fields(self) -> dict[str, bytes]:
        return dict(self.parts())

    def values(self, name: str) -> list[bytes]:
        return [content for key, content in self.parts() if key == name]


class BodyRecorder:
    """Pure ASGI middleware: appends every /v1/ request to ``recorded``."""

    def __init__(self, app, recorded: list[RecordedRequest]) -> None:
        self.app, self.recorded = app, recorded

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        entry = RecordedRequest(scope["path"], headers, b"")
        self.recorded.append(entry)

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                entry.body += message.get("body", b"")
            return message

        await self.app(scope, recording_receive, send)

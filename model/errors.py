"""Domain errors of the CLIPSeg library.

Every error a caller can cause with bad input derives from ``ClipSegError`` so that a
server can map it to a 4xx answer without guessing. Errors are also ``ValueError`` where
they describe a bad value, so plain library users can catch the usual exception.
"""

from __future__ import annotations


class ClipSegError(Exception):
    """Base class of every error this library raises on purpose."""


class ImageDecodeError(ClipSegError, ValueError):
    """Bytes or a file that are not a readable image (truncated, wrong type, empty)."""


class UnsupportedImageFormatError(ClipSegError, ValueError):
    """An image in a format PIL recognises but the caller does not accept (ICO, EPS, PSD...).

    Raised from the leading bytes alone, before any format plugin parses the file, so a
    refused format never runs its decoder (EPS would start Ghostscript, ICO decodes its
    embedded PNG while opening).
    """


class ImageTooLargeError(ClipSegError, ValueError):
    """An image whose pixel count exceeds the configured limit (decompression bomb guard)."""


class InvalidMaskError(ClipSegError, ValueError):
    """A support mask that is empty, of the wrong size, or not a 2-D mask."""


class InvalidPromptError(ClipSegError, ValueError):
    """A prompt that is empty or otherwise unusable, or an unknown template mode."""


class PolygonTooComplexError(ClipSegError, ValueError):
    """A mask whose COCO polygons would need more than ``limit`` vertices: a noisy mask
    (specks, holes, ragged edges) traced at a small tolerance. Fixes: a larger tolerance,
    dropping small pieces (``min_area``), RLE instead of polygons, or a larger limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the polygons need more than {limit} vertices; raise the tolerance, drop "
            "small pieces (min_area), use RLE, or raise the vertex limit"
        )


class WeightsError(ClipSegError):
    """A checkpoint that cannot be loaded: wrong format, variant, or missing/unexpected keys."""


class WeightsUnavailableError(WeightsError):
    """Weights that cannot be had on this machine: the HuggingFace hub is unreachable (or
    ``HF_HUB_OFFLINE`` is set) and the HF cache lacks them, the hub has no such repository,
    or a local path that does not exist.

    ``str()`` is one line: the cause, then the fixes, worded for ``clipseg-serve``.
    ``problem()`` and ``fixes(flag, env)`` let another CLI word its own (the trainer's
    ``--init``). ``source``: what was asked for; ``cause``: why it is not here.
    """

    def __init__(self, source: str, cause: str) -> None:
        self.source, self.cause = source, cause
        super().__init__(f"{self.problem()}. {self.fixes()}")

    def problem(self) -> str:
        """The cause alone: ``cannot load the weights '<source>': <cause>``."""
        return f"cannot load the weights {self.source!r}: {self.cause}"

    def fixes(self, flag: str = "--weights", env: str | None = "CLIPSEG_WEIGHTS") -> str:
        """What to do about it, for a CLI whose weights flag is ``flag`` (env var ``env``)."""
        smoke = f"{flag} random:tiny" + (f" ({env}=random:tiny)" if env else "")
        # No path with two slashes in here: clients see this text with paths redacted.
        return (
            f"Fixes: a smoke run with random weights, {smoke}; a local checkpoint "
            f"directory, {flag} ./my-checkpoint; or fill the HF cache where the hub is "
            f"reachable (hf download <repo id>), copy it to this machine's HF_HOME and set "
            "HF_HUB_OFFLINE=1"
        )

"""The multipart form of each endpoint, built once per call (and re-sent as is on a
retry): every field of ``POST /v1/segment/text`` and ``POST /v1/segment/visual``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .images import ImageInput, Upload, to_upload
from .options import PostOptions

Combine = Literal["none", "union", "intersection", "argmax"]
Template = Literal["none", "photo", "ensemble"]
Format = Literal["rle", "png"]
#: One support for a visual prompt: (support image, its mask; nonzero = object).
Support = tuple[ImageInput, ImageInput]

TEXT_PATH = "/v1/segment/text"
VISUAL_PATH = "/v1/segment/visual"


@dataclass(frozen=True)
class Call:
    """One POST: its path, form fields (repeated names as lists) and file parts."""

    path: str
    data: dict[str, str | list[str]]
    files: list[tuple[str, Upload]]

    def file_parts(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        """The files as httpx takes them (a list, so names can repeat)."""
        return [(name, upload.part()) for name, upload in self.files]


def _prompt_list(prompts: str | Sequence[str], what: str) -> list[str]:
    # A bare string is one prompt, not a sequence of one-letter prompts.
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not all(isinstance(p, str) for p in items):
        raise TypeError(f"{what} must be strings")
    return items


def _common(
    threshold: float | Sequence[float] | None,
    fmt: Format,
    soft: bool,
    post: PostOptions | None = None,
) -> dict[str, str | list[str]]:
    data: dict[str, str | list[str]] = {"format": fmt, "soft": "true" if soft else "false"}
    if isinstance(threshold, Sequence):
        data["threshold"] = [repr(float(t)) for t in threshold]  # one per prompt
    elif threshold is not None:
        data["threshold"] = repr(float(threshold))
    if post is not None:
        data |= post.form()
    return data


def text_call(
    image: ImageInput,
    prompts: str | Sequence[str],
    *,
    negative_prompts: str | Sequence[str] = (),
    combine: Combine = "none",
    threshold: float | Sequence[float] | None = None,
    template: Template = "none",
    soft: bool = False,
    fmt: Format = "rle",
    post: PostOptions | None = None,
) -> Call:
    """The form of a text-prompted request (see ``Client.segment_text``).

    Raises:
        ValueError: no prompt.
    """
    items = _prompt_list(prompts, "prompts")
    if not items:
        raise ValueError("at least one prompt is needed")
    data = _common(threshold, fmt, soft, post)
    data |= {"prompt": items, "combine": combine, "template": template}
    negatives = _prompt_list(negative_prompts, "negative_prompts")
    if negatives:
        data["negative_prompt"] = negatives
    return Call(TEXT_PATH, data, [("image", to_upload(image, "image"))])


def visual_call(
    image: ImageInput,
    supports: Sequence[Support],
    *,
    prompt: str | None = None,
    text_weight: float | None = None,
    threshold: float | None = None,
    soft: bool = False,
    fmt: Format = "rle",
    post: PostOptions | None = None,
) -> Call:
    """The form of a visual (support image + mask, k-shot) request, optionally hybrid
    with a text ``prompt`` weighted by ``text_weight`` (see ``Client.segment_visual``).

    Raises:
        ValueError: no support, or a support that is not an (image, mask) pair.
    """
    pairs = list(supports)
    if not pairs:
        raise ValueError("at least one (support image, support mask) pair is needed")
    files = [("image", to_upload(image, "image"))]
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"support {i} must be an (image, mask) pair")
        files.append(("support_image", to_upload(pair[0], f"support_{i}")))
        files.append(("support_mask", to_upload(pair[1], f"support_mask_{i}")))
    data = _common(threshold, fmt, soft, post)
    if prompt is not None:
        data["prompt"] = prompt
    if text_weight is not None:
        data["text_weight"] = repr(float(text_weight))
    return Call(VISUAL_PATH, data, files)

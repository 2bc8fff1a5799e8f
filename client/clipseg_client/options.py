"""Refinement and post-processing options of a segment request (the server's fields of the
same names; its README's "Refinement and post-processing" has the order and meaning)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Refine = Literal["none", "guided", "pamr"]
Background = Literal["threshold", "prompt"]


@dataclass(frozen=True)
class PostOptions:
    """What to do with the masks after the model; every field is optional.

    Attributes:
        refine: ``guided`` (edges follow the image) or ``pamr`` (affinity refinement, then
            guided); ``none`` is plain bilinear upsampling.
        refine_radius, refine_eps, pamr_iterations: the refiners' parameters (server
            defaults when None).
        min_area: drop connected pieces of fewer pixels. fill_holes: fill enclosed holes.
        erode, dilate: shrink / grow by discs of this radius in pixels (erode first).
        feather: mask PNGs become alpha mattes ramping over this many pixels (``Mask.alpha``).
        instances: one mask per connected piece (``Mask.instance``, ``Mask.max_score``).
        background, background_factor: ``combine="argmax"`` only: ``prompt`` scores the
            background as factor x the probability of the prompt "background".
    """

    refine: Refine | None = None
    refine_radius: int | None = None
    refine_eps: float | None = None
    pamr_iterations: int | None = None
    min_area: int | None = None
    fill_holes: bool | None = None
    erode: int | None = None
    dilate: int | None = None
    feather: int | None = None
    instances: bool | None = None
    background: Background | None = None
    background_factor: float | None = None

    def form(self) -> dict[str, str]:
        """The set fields as form values (booleans as ``true``/``false``)."""
        out: dict[str, str] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            out[spec.name] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return out

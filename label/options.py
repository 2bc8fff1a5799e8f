"""What every image is labelled with: prompts and the model's and post-processing's
options, as one frozen record (the job's fingerprint is built from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.inference.preparation import PreparedImage
from clipseg_serve.model.masks.postprocess import DEFAULT_POST, Combine, PostProcess, Refine
from clipseg_serve.model.network.text import Template


@dataclass(frozen=True)
class LabelOptions:
    """prompts: the run's (an image from a manifest may bring its own); the rest as the
    service's fields of the same names. segmentation: "rle" or "polygon";
    polygon_tolerance: the polygons' simplification, in pixels."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...] = ()
    template: Template = Template.NONE
    threshold: float | tuple[float, ...] | None = None
    combine: Combine = Combine.NONE
    post: PostProcess = field(default=DEFAULT_POST)
    segmentation: str = "rle"
    polygon_tolerance: float = 1.0

    @property
    def guide(self) -> bool:
        """Whether images keep their full-size pixels (refinement needs them)."""
        return self.post.refine is not Refine.NONE

    def request(self, prepared: PreparedImage, key: str, prompts: tuple[str, ...] | None
                ) -> SegmentRequest:  # fmt: skip
        """The model request for one prepared image (``prompts``: the image's own).

        Raises:
            ValueError: the image has its own prompts and the run one threshold per prompt
                (they belong to the run's prompts).
        """
        if prompts and isinstance(self.threshold, tuple):
            raise ValueError("one threshold per prompt does not fit an image's own prompts")
        return SegmentRequest(
            prepared.pixels,
            prepared.size,
            key,
            prompts=prompts or self.prompts,
            negative_prompts=self.negative_prompts,
            template=self.template,
            threshold=self.threshold,
            combine=self.combine,
            runs=self.segmentation == "rle",
            post=self.post,
            guide=prepared.guide,
        )

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the output, as JSON-able data."""
        data = asdict(self)
        data["post"] = {k: getattr(v, "value", v) for k, v in asdict(self.post).items()}
        data["template"], data["combine"] = self.template.value, self.combine.value
        return data

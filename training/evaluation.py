"""A model's metrics on a dataset, predicted as the reference evaluation does.

Sigmoid, bilinear upsample of the 352x352 map to each image's own size, then threshold
over the fixed grid of ``training.metrics`` (whose docstring has the definitions). With
``refine`` the maps reach the image's size through the service's own refinement
(``model.masks.render.render_probabilities``), so its effect is measured with the same metrics.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from clipseg_serve.model.imaging.transforms import to_guide_pixels
from clipseg_serve.model.masks.postprocess import (
    DEFAULT_POST,
    PostProcess,
    Refine,
    probabilities_at_size,
)
from clipseg_serve.model.masks.render import render_probabilities
from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.network.text import Template
from clipseg_serve.model.weights.loader import load_model
from clipseg_serve.training.batching import image_batch
from clipseg_serve.training.data import Sample, SampleDataset
from clipseg_serve.training.datasets import build_dataset
from clipseg_serve.training.metrics import SegmentationMetrics
from clipseg_serve.training.progress import progress


@torch.inference_mode()
def evaluate_dataset(
    model: ClipSeg,
    dataset: SampleDataset,
    device: torch.device,
    *,
    max_samples: int | None = None,
    batch_size: int = 16,
    template: Template | str = Template.NONE,
    show_progress: bool = False,
    post: PostProcess | None = None,
) -> dict[str, Any]:
    """``SegmentationMetrics.compute()`` of ``model`` (text prompts) on the first
    ``max_samples`` of ``dataset``; the samples' ``label`` is the class for mIoU.

    ``show_progress``: a progress bar (or log lines) on stderr, one step per sample.
    ``post``: its refinement (the threshold-free steps) is applied to the maps.
    """
    post = post or DEFAULT_POST
    config, mode = model.config, Template(template)
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if count == 0:
        raise ValueError("the evaluation dataset is empty")
    metrics = SegmentationMetrics()
    bar = progress(count, "eval") if show_progress else None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, count, batch_size):
            samples = [dataset[i] for i in range(start, min(count, start + batch_size))]
            images = image_batch([s.image for s in samples], config).to(device)
            logits = model(images, model.embed_phrases([s.phrase for s in samples], mode))
            for sample, row in zip(samples, logits, strict=True):
                probs = _probabilities(row[None], sample, post, device, config.grid_size)
                target = torch.from_numpy(sample.mask.astype(bool))[None]
                metrics.update(probs.cpu(), target, [sample.phrase], [sample.label])
            if bar is not None:
                bar.update(len(samples))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return metrics.compute()


def _probabilities(
    logits: torch.Tensor, sample: Sample, post: PostProcess, device: torch.device, grid: int
) -> torch.Tensor:
    """[1, H, W] maps at the sample's size: the reference's bilinear, or refined."""
    if post.refine is Refine.NONE:
        return probabilities_at_size(logits, sample.mask.shape)
    guide = to_guide_pixels(sample.image).to(device)
    return render_probabilities(logits, sample.mask.shape, post, guide, grid)


def load_and_evaluate(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``clipseg-eval``'s work: the dataset first (a bad path fails before the slow model
    load), then the weights, then ``evaluate_dataset``."""
    options = {"augment": False, **args.options}
    dataset = build_dataset(args.dataset, args.data, args.split, args.seed, **options)
    model = load_model(args.weights, variant=args.variant, backbone=args.backbone).model
    return evaluate_dataset(
        model.to(device),
        dataset,
        device,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        template=args.template,
        show_progress=args.progress,
        post=PostProcess(
            refine=args.refine,
            radius=args.refine_radius,
            eps=args.refine_eps,
            pamr_iterations=args.pamr_iterations,
        ),
    )

"""``clipseg-eval``: foreground IoU, mIoU, binary IoU and AP of a checkpoint on a dataset.

    clipseg-eval --weights runs/exp1/best --dataset phrasecut --data /datasets/phrasecut

Predictions follow the reference evaluation: sigmoid, bilinear upsample to each image's
own size, then threshold over a fixed grid (``training.metrics``). Prints a table and
writes the full result (per threshold, per prompt) as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from model.clipseg import ClipSeg
from model.postprocess import probabilities_at_size
from model.text import Template
from model.weights.loader import load_model

from .batching import image_batch
from .data import SampleDataset
from .datasets import build_dataset
from .distributed import pick_device
from .metrics import SegmentationMetrics, format_table

log = logging.getLogger("clipseg.eval")


@torch.inference_mode()
def evaluate_dataset(
    model: ClipSeg,
    dataset: SampleDataset,
    device: torch.device,
    *,
    max_samples: int | None = None,
    batch_size: int = 16,
    template: Template | str = Template.NONE,
) -> dict[str, Any]:
    """Metrics of ``model`` (text prompts) on the first ``max_samples`` of ``dataset``."""
    config, mode = model.config, Template(template)
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if count == 0:
        raise ValueError("the evaluation dataset is empty")
    metrics = SegmentationMetrics()
    was_training = model.training
    model.eval()
    try:
        for start in range(0, count, batch_size):
            samples = [dataset[i] for i in range(start, min(count, start + batch_size))]
            images = image_batch([s.image for s in samples], config).to(device)
            phrases = [s.phrase for s in samples]
            logits = model(images, model.embed_phrases(phrases, mode))
            for sample, row in zip(samples, logits, strict=True):
                height, width = sample.mask.shape
                probs = probabilities_at_size(row[None], (height, width))
                target = torch.from_numpy(sample.mask.astype(bool))[None]
                metrics.update(probs.cpu(), target, [sample.phrase])
    finally:
        model.train(was_training)
    return metrics.compute()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipseg-eval",
        description="Evaluate CLIPSeg weights on a dataset: fg IoU, mIoU, binary IoU, AP.",
    )
    parser.add_argument("--weights", required=True, help="any weights source")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--backbone", default="openai")
    parser.add_argument("--dataset", default="synthetic", help="synthetic|manifest|coco|phrasecut")
    parser.add_argument("--data", default="", help="dataset root folder or file")
    parser.add_argument("--split", default="val")
    parser.add_argument("--options", type=json.loads, default={}, help="dataset options (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--template", choices=[t.value for t in Template], default="none")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default=None, help="write the full result as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device, 0)
        model = load_model(args.weights, variant=args.variant, backbone=args.backbone).model
        options = {"augment": False, **args.options}
        dataset = build_dataset(args.dataset, args.data, args.split, args.seed, **options)
        result = evaluate_dataset(
            model.to(device),
            dataset,
            device,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            template=args.template,
        )
    except (ValueError, OSError) as exc:
        print(f"clipseg-eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One labelling job from parsed arguments: sources, model, shards, then the dataset
files and a summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clipseg_serve.label.export import (
    categories,
    coco,
    write_coco,
    write_png_masks,
    write_yolo,
)
from clipseg_serve.label.local import label_items
from clipseg_serve.label.options import LabelOptions
from clipseg_serve.label.shards import ShardStore
from clipseg_serve.label.sources import expand
from clipseg_serve.model.backends import load_predictor
from clipseg_serve.model.masks.postprocess import Combine, PostProcess, check_thresholds
from clipseg_serve.model.network.text import Template


def options_from_args(args: argparse.Namespace, post: PostProcess) -> LabelOptions:
    prompts = tuple(args.prompt)
    threshold = check_thresholds(args.threshold, len(prompts)) if args.threshold else None
    return LabelOptions(
        prompts=prompts,
        negative_prompts=tuple(args.negative_prompt),
        template=Template(args.template),
        threshold=threshold,
        combine=Combine(args.combine),
        post=post,
        segmentation=args.segmentation,
        polygon_tolerance=args.polygon_tolerance,
    )


def run_job(args: argparse.Namespace, post: PostProcess) -> dict[str, Any]:
    """Label, export, summarise (see ``label.cli``)."""
    options = options_from_args(args, post)
    items = expand(args.source)
    own = next((item for item in items if item.prompts), None)
    if own is not None and isinstance(options.threshold, tuple):
        raise ValueError(
            f"one --threshold per prompt does not fit images with their own prompts "
            f"({own.uri} has {len(own.prompts or ())}): give a single --threshold"
        )
    job = {
        "items": [[item.uri, item.prompts] for item in items],
        "options": options.fingerprint(),
        "weights": [args.weights, args.variant, args.backbone],
    }
    out = Path(args.output)
    store = ShardStore(out, job)
    load = {"source": args.weights, "variant": args.variant, "backbone": args.backbone,
            "device": args.device, "dtype": args.dtype, "backend": args.backend}  # fmt: skip
    if args.engine == "ray":
        from clipseg_serve.label.ray_engine import label_items_on_ray

        stats = label_items_on_ray(
            load, items, options, store, workers=args.workers, batch_images=args.batch_images,
            address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker, progress=_print_progress,
        )  # fmt: skip
    else:
        stats = label_items(
            load_predictor(**load), items, options, store,
            batch_images=args.batch_images, workers=args.workers, progress=_print_progress,
        )  # fmt: skip
    records = list(store.records())
    return export(out, records, options, yolo=args.yolo, png_masks=args.png_masks) | {
        "seconds": round(stats.seconds, 3),
        "images_per_second": round(stats.labelled / stats.seconds, 3) if stats.seconds else None,
        "labelled_this_run": stats.labelled,
    }


def export(
    out: Path,
    records: list[dict[str, Any]],
    options: LabelOptions,
    *,
    yolo: bool,
    png_masks: bool = False,
) -> dict[str, Any]:
    """Write the dataset files from every record; the summary's counts."""
    names = categories(records, options.prompts)
    document = coco(records, names, options.segmentation)
    write_coco(out / "annotations.json", document)
    if yolo:
        write_yolo(out / "yolo", records, names, options.polygon_tolerance)
    summary: dict[str, Any] = {}
    if png_masks:
        summary["png_masks"] = write_png_masks(out / "masks", records, names)
    failed = [{"uri": r["uri"], "error": r["error"]} for r in records if "error" in r]
    return {
        "images": len(document["images"]),
        "annotations": len(document["annotations"]),
        **summary,
        "categories": names,
        "failed": failed,
        "output": str(out / "annotations.json"),
    }


def _print_progress(done: int, total: int, seconds: float) -> None:
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    print(f"\r{done}/{total} images, {rate:.2f} images/s, ETA {eta:.0f} s", end="",
          file=sys.stderr, flush=True)  # fmt: skip
    if done >= total:
        print(file=sys.stderr)

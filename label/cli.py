"""``clipseg-label SOURCE... --prompt P [--prompt Q ...] -o OUT``: label a dataset.

Writes ``OUT/annotations.json`` (COCO), with ``--yolo`` also ``OUT/yolo/``, with
``--png-masks`` also ``OUT/masks/``, and prints a JSON summary (images, annotations,
failures with their reasons, images per second). The shards in ``OUT/shards/`` make it
resumable: run the same command again after a crash or a kill and it continues where it
stopped, with the same final output.
"""

from __future__ import annotations

import argparse
import json
import sys

from clipseg_serve.model.cli.args import (
    add_mask_options,
    add_model_options,
    add_post_options,
    add_prompt_options,
    post_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipseg-label",
        description="Label a dataset with CLIPSeg: prompts over folders, globs and manifests "
        "of images -> COCO instance segmentation (and YOLO), resumable.",
    )
    parser.add_argument(
        "source", nargs="+",
        help="a folder (recursive), a glob, an image, or a manifest (.txt of paths/URIs, "
        ".jsonl of {\"path\", \"prompts\"}); file:// and (with fsspec) s3://, gs://, ...",
    )  # fmt: skip
    add_prompt_options(parser, visual=False)
    add_model_options(parser)
    add_mask_options(parser)
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--segmentation", choices=("rle", "polygon"), default="rle",
        help="COCO segmentation as compressed RLE (exact) or polygons (default: rle)",
    )  # fmt: skip
    parser.add_argument("--yolo", action="store_true", help="also write YOLO segmentation files")
    parser.add_argument(
        "--png-masks", action="store_true",
        help="also write masks/NNNNNN/C.png: each image's mask of each category C, 0/255",
    )  # fmt: skip
    parser.add_argument(
        "--batch-images", type=int, default=8,
        help="images per batch, and per shard (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=2,
        help="local: threads reading, decoding and encoding around the model; ray: model "
        "workers (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local: this process; ray: an actor pool on a Ray cluster (default: local)",
    )  # fmt: skip
    parser.add_argument(
        "--ray-address", default=None,
        help="ray: the cluster to join ('auto', ray://host:10001); default: a local instance",
    )  # fmt: skip
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0.0,
        help="ray: GPUs each model worker holds (1 on a GPU cluster; default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0,
        help="ray: CPUs each model worker holds, and its torch threads (default: 1)",
    )  # fmt: skip
    add_post_options(parser, polygon_files=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _argument_error(args)
    if problem:
        print(f"clipseg-label: {problem}", file=sys.stderr)
        return 2
    # Imported here: --help and argument errors answer before torch loads.
    from clipseg_serve.label.job import run_job
    from clipseg_serve.model.errors import ClipSegError

    try:
        summary = run_job(args, post_from_args(args))
    except (ClipSegError, ValueError, OSError) as exc:
        print(f"clipseg-label: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0  # images that failed are listed in the summary: they do not fail the run


def _argument_error(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run, or None: checked before anything loads."""
    if not args.prompt:
        return "give at least one --prompt"
    for flag, value in (("--batch-images", args.batch_images), ("--workers", args.workers)):
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.polygon_tolerance < 0:
        return f"--polygon-tolerance must be >= 0, got {args.polygon_tolerance}"
    return None


if __name__ == "__main__":
    raise SystemExit(main())

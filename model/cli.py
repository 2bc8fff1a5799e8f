"""``clipseg-predict``: segment one image from the command line.

    clipseg-predict photo.jpg --prompt "a cat" --prompt "the sofa" -o out/
    clipseg-predict photo.jpg --support-image ref.jpg --support-mask ref_mask.png -o out/

Writes one PNG mask per output (mode L, 0/255, the image's own size) and prints a JSON
summary per mask.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import list_variants
from .errors import ClipSegError
from .masks import encode_png_gray, encode_png_mask
from .postprocess import Combine
from .predictor import Predictor
from .text import Template

DEFAULT_WEIGHTS = "CIDAS/clipseg-rd64-refined"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipseg-predict",
        description="Segment an image with CLIPSeg from text prompts and/or support images.",
    )
    parser.add_argument("image", help="the image to segment (any format PIL reads)")
    parser.add_argument("--prompt", action="append", default=[], help="text prompt (repeatable)")
    parser.add_argument(
        "--negative-prompt", action="append", default=[], help="remove what matches this"
    )
    parser.add_argument(
        "--support-image", action="append", default=[], help="visual prompt image (repeatable)"
    )
    parser.add_argument(
        "--support-mask", action="append", default=[], help="its mask, nonzero = object"
    )
    parser.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help="with one prompt and supports: mix w*text + (1-w)*visual into one prompt",
    )
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, help="weights source")
    parser.add_argument("--variant", choices=list_variants(), default=None)
    parser.add_argument("--backbone", default="openai", help="backbone for official .pth files")
    parser.add_argument("--threshold", type=float, default=None, help="default: checkpoint's")
    parser.add_argument("--template", choices=[t.value for t in Template], default="none")
    parser.add_argument("--combine", choices=[c.value for c in Combine], default="none")
    parser.add_argument("--soft", action="store_true", help="also write probability maps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("-o", "--output", default="out", help="output directory")
    return parser


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "mask"


def run(args: argparse.Namespace) -> list[dict]:
    if len(args.support_image) != len(args.support_mask):
        raise ClipSegError("give one --support-mask per --support-image")
    if not args.prompt and not args.support_image:
        raise ClipSegError("give at least one --prompt or --support-image/--support-mask")
    predictor = Predictor.from_source(
        args.weights, variant=args.variant, backbone=args.backbone, device=args.device,
        dtype=args.dtype,
    )  # fmt: skip
    prompts, conditionals = list(args.prompt), None
    if args.support_image:
        visual = predictor.visual_embedding(
            list(zip(args.support_image, args.support_mask, strict=True))
        )
        if args.text_weight is not None:
            if len(prompts) != 1:
                raise ClipSegError("--text-weight mixes exactly one --prompt with the supports")
            text = predictor.text_embeddings(prompts, args.template)[0]
            visual, prompts = predictor.hybrid(text, visual, args.text_weight), []
        conditionals = visual[None]
    result = predictor.segment(
        args.image,
        prompts,
        conditionals=conditionals,
        negative_prompts=args.negative_prompt,
        template=args.template,
        threshold=args.threshold,
        combine=args.combine,
        soft=args.soft,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i, label in enumerate(result.labels):
        path = out / f"{i:02d}_{slug(label)}.png"
        path.write_bytes(encode_png_mask(result.mask(i)))
        summary = {"label": label, "path": str(path), "area": int(result.areas[i])}
        summary["bbox"] = [int(v) for v in result.boxes[i]]
        summary["score"] = round(float(result.scores[i]), 4)
        if result.soft is not None:
            soft = out / f"{i:02d}_{slug(label)}_soft.png"
            soft.write_bytes(encode_png_gray(result.soft[i]))
            summary["soft_path"] = str(soft)
        summaries.append(summary)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for summary in run(args):
            print(json.dumps(summary))
    except (ClipSegError, ValueError, OSError) as exc:
        print(f"clipseg-predict: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

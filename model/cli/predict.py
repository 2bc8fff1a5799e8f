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

from clipseg_serve.model.cli.args import DEFAULT_WEIGHTS, build_parser, input_error, post_from_args
from clipseg_serve.model.errors import ClipSegError

__all__ = ["DEFAULT_WEIGHTS", "build_parser", "main", "run"]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "mask"


def run(args: argparse.Namespace) -> list[dict]:
    """Load the model, segment ``args.image``, write the masks; one summary per mask."""
    # Imported here, not at the top: torch and open_clip take seconds to import, and
    # --help or a bad argument must not wait for them.
    from clipseg_serve.model.backends import load_predictor
    from clipseg_serve.model.codecs.rle import encode_png_gray

    problem = input_error(args)
    if problem:
        raise ClipSegError(problem)
    post = post_from_args(args)
    predictor = load_predictor(
        args.weights, variant=args.variant, backbone=args.backbone, device=args.device,
        dtype=args.dtype, backend=args.backend,
    )  # fmt: skip
    prompts, conditionals = list(args.prompt), None
    if args.support_image:
        visual = predictor.visual_embedding(
            list(zip(args.support_image, args.support_mask, strict=True))
        )
        if args.text_weight is not None:
            text = predictor.text_embeddings(prompts, args.template)[0]
            visual, prompts = predictor.hybrid(text, visual, args.text_weight), []
        conditionals = visual[None]
    result = predictor.segment(
        args.image,
        prompts,
        conditionals=conditionals,
        negative_prompts=args.negative_prompt,
        template=args.template,
        threshold=args.threshold,  # None, or a list: one, or one per prompt
        combine=args.combine,
        soft=args.soft,
        post=post,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i, label in enumerate(result.labels):
        if result.instances is not None:
            summaries += [
                _write(out, f"{i:02d}_{slug(label)}_{k:02d}", result, i, k, args)
                for k in range(len(result.instances[i]))
            ]
            continue
        summary = _write(out, f"{i:02d}_{slug(label)}", result, i, None, args)
        if result.soft is not None:
            soft = out / f"{i:02d}_{slug(label)}_soft.png"
            soft.write_bytes(encode_png_gray(result.soft[i]))
            summary["soft_path"] = str(soft)
        summaries.append(summary)
    return summaries


def _write(out: Path, stem: str, result, index: int, instance: int | None, args) -> dict:
    """Write one mask (or instance) as ``stem``.png (+ .json polygons); its summary."""
    from clipseg_serve.model.codecs.polygons import mask_to_polygons
    from clipseg_serve.model.codecs.rle import encode_png_gray, encode_png_mask

    if instance is None:
        mask = result.mask(index)
        area, box, score = result.areas[index], result.boxes[index], result.scores[index]
    else:
        found = result.instances[index]
        mask = found.mask(instance)
        area, box, score = found.areas[instance], found.boxes[instance], found.scores[instance]
    path = out / f"{stem}.png"
    alpha = result.alpha(index, instance) if result.feather else None
    path.write_bytes(encode_png_mask(mask) if alpha is None else encode_png_gray(alpha))
    summary: dict = {"label": result.labels[index], "path": str(path), "area": int(area)}
    if instance is not None:
        summary["instance"] = instance
    summary["bbox"] = [int(v) for v in box]
    summary["score"] = round(float(score), 4)
    if args.polygons:
        polygons = out / f"{stem}.json"
        annotation = {
            "segmentation": mask_to_polygons(
                mask, args.polygon_tolerance, max_vertices=args.max_polygon_vertices
            ),
            "bbox": summary["bbox"],
            "area": summary["area"],
        }
        polygons.write_text(json.dumps(annotation))
        summary["polygons_path"] = str(polygons)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``clipseg-predict``: exit 0, or 2 with one ``error:`` line on stderr."""
    args = build_parser().parse_args(argv)
    problem = input_error(args)  # before the model loads: a typo costs no seconds
    if problem:
        print(f"clipseg-predict: error: {problem}", file=sys.stderr)
        return 2
    try:
        for summary in run(args):
            print(json.dumps(summary))
    except (ClipSegError, ValueError, OSError) as exc:
        print(f"clipseg-predict: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

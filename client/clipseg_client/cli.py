"""``clipseg-client``: segment one image through a running server.

    clipseg-client photo.jpg --prompt "a cat" --prompt "the sofa" -o out/
    clipseg-client photo.jpg --support ref.jpg ref_mask.png -o out/
    clipseg-client photo.jpg --prompt "a cat" --format json -o out/

Writes one PNG mask per output (mode L, 0/255, the image's size) and/or the server's
JSON answer, and prints one JSON summary line per mask.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import API_KEY_ENV, DEFAULT_URL
from .client import Client
from .errors import ClipSegError
from .results import Segmentation
from .retry import RetryPolicy

URL_ENV = "CLIPSEG_URL"


def build_parser() -> argparse.ArgumentParser:
    """The command line: every field of both endpoints, plus connection options."""
    parser = argparse.ArgumentParser(
        prog="clipseg-client",
        description="Segment an image with a clipseg-serve server, from text prompts or "
        "support examples (visual mode: --support). Writes one PNG mask per output "
        "(0/255, the image's size) and/or the JSON answer; prints a JSON line per mask.",
    )
    parser.add_argument("image", help="the image to segment (JPEG, PNG, WebP, ...)")
    text = parser.add_argument_group("text prompts")
    text.add_argument(
        "--prompt", action="append", default=[], help="a text prompt; repeat for several "
        "(in visual mode: at most one, for a hybrid prompt with --text-weight)",
    )  # fmt: skip
    text.add_argument(
        "--negative-prompt", action="append", default=[], help="remove what matches; repeatable"
    )
    text.add_argument(
        "--combine", choices=["none", "union", "intersection", "argmax"], default="none",
        help="none: a mask per prompt; union/intersection: one mask; argmax: exclusive masks",
    )  # fmt: skip
    text.add_argument(
        "--template", choices=["none", "photo", "ensemble"], default="none",
        help="prompt template: raw phrase, 'a photo of a {}.', or the 9-template ensemble",
    )  # fmt: skip
    visual = parser.add_argument_group("visual prompts")
    visual.add_argument(
        "--support", nargs=2, action="append", default=[], metavar=("IMAGE", "MASK"),
        help="a support image and its mask (nonzero = object); repeat for k-shot",
    )  # fmt: skip
    visual.add_argument(
        "--text-weight", type=float, help="hybrid prompt: w*text + (1-w)*visual (needs --prompt)"
    )
    _add_common(parser)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--threshold", type=float, help="mask threshold in [0, 1] (server default)")
    out.add_argument("--soft", action="store_true", help="also write probability maps *_soft.png")
    out.add_argument(
        "--format", choices=["png", "json", "both"], default="png",
        help="png: a mask PNG per output; json: the JSON answer (COCO RLE); both",
    )  # fmt: skip
    out.add_argument("-o", "--output", default="out", help="output directory (default: out)")
    conn = parser.add_argument_group("server")
    conn.add_argument(
        "--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"server base URL (default: ${URL_ENV} or {DEFAULT_URL})",
    )  # fmt: skip
    conn.add_argument("--api-key", help=f"API key (default: ${API_KEY_ENV})")
    conn.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    conn.add_argument(
        "--budget", type=float, default=120.0, help="seconds for all attempts and retry waits"
    )
    conn.add_argument("--attempts", type=int, default=5, help="attempts in all (1: no retries)")


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, before any request; None if nothing."""
    files = [("image", args.image)]
    for image, mask in args.support:
        files += [("support image", image), ("support mask", mask)]
    for role, path in files:
        if not Path(path).is_file():
            return f"cannot read {role} {path!r}: no such file"
    if args.support:
        if len(args.prompt) > 1:
            return "visual mode takes at most one --prompt (a hybrid prompt)"
        if args.negative_prompt or args.combine != "none" or args.template != "none":
            return "--negative-prompt, --combine and --template are for text prompts only"
    elif not args.prompt:
        return "give at least one --prompt, or --support IMAGE MASK"
    if args.text_weight is not None and not (args.support and args.prompt):
        return "--text-weight needs --support and --prompt"
    return None


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a prompt."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "mask"


def segment(client: Client, args: argparse.Namespace) -> Segmentation:
    """The one request the arguments describe."""
    if args.support:
        return client.segment_visual(
            args.image, [tuple(pair) for pair in args.support],
            prompt=args.prompt[0] if args.prompt else None, text_weight=args.text_weight,
            threshold=args.threshold, soft=args.soft,
        )  # fmt: skip
    return client.segment_text(
        args.image, args.prompt, negative_prompts=args.negative_prompt, combine=args.combine,
        threshold=args.threshold, template=args.template, soft=args.soft,
    )  # fmt: skip


def write(result: Segmentation, args: argparse.Namespace) -> list[dict]:
    """Write the masks and/or JSON into ``args.output``; one summary per mask."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for i, mask in enumerate(result.masks):
        summary: dict = {"prompt": mask.prompt, "score": round(mask.score, 4)}
        summary |= {"area": mask.area, "bbox": list(mask.bbox)}
        if args.format in ("png", "both"):
            path = out / f"{i:02d}_{slug(mask.prompt)}.png"
            Image.fromarray(mask.mask.astype(np.uint8) * 255).save(path)
            summary["path"] = str(path)
        if mask.probabilities is not None:
            soft = out / f"{i:02d}_{slug(mask.prompt)}_soft.png"
            Image.fromarray(np.round(mask.probabilities * 255).astype(np.uint8)).save(soft)
            summary["soft_path"] = str(soft)
        summaries.append(summary)
    if args.format in ("json", "both"):
        answer = dict(result.raw, request_id=result.request_id)
        path = out / f"{Path(args.image).stem}.json"
        path.write_text(json.dumps(answer) + "\n")
        summaries.append({"json": str(path), "request_id": result.request_id})
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """``clipseg-client``: exit 0; 2 for bad arguments or files; 1 when the server (or
    the connection to it) failed, with one ``error:`` line on stderr."""
    args = build_parser().parse_args(argv)
    problem = usage_error(args)
    if problem:
        print(f"clipseg-client: error: {problem}", file=sys.stderr)
        return 2
    policy = RetryPolicy(max_attempts=max(1, args.attempts), budget_s=args.budget)
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout, retry=policy) as client:
            result = segment(client, args)
        for summary in write(result, args):
            print(json.dumps(summary))
    except ClipSegError as exc:
        print(f"clipseg-client: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"clipseg-client: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

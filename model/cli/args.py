"""``clipseg-predict``'s arguments and input checks, without torch.

This module imports only the standard library, PIL and ``model.config`` (plain data), so
``clipseg-predict --help`` and a mistyped file name answer at once, before torch,
open_clip and the weights load (``model.cli.predict`` imports those only once the arguments pass).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clipseg_serve.model.config import list_variants

DEFAULT_WEIGHTS = "CIDAS/clipseg-rd64-refined"

# The values of model.network.text.Template and model.masks.postprocess.Combine, spelled out because
# importing those modules imports torch; tests/test_cli_help.py keeps them equal.
TEMPLATES = ("none", "photo", "ensemble")
COMBINES = ("none", "union", "intersection", "argmax")
REFINES = ("none", "guided", "pamr")
BACKGROUNDS = ("threshold", "prompt")
#: model.codecs.polygons.DEFAULT_MAX_VERTICES, spelled out likewise (that module imports OpenCV).
POLYGON_VERTICES = 250_000


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``clipseg-predict``; every option has its help text."""
    parser = argparse.ArgumentParser(
        prog="clipseg-predict",
        description="Segment an image with CLIPSeg from text prompts and/or support images. "
        "Writes one PNG mask per output (0/255, the image's size) and prints a JSON line each.",
    )
    parser.add_argument("image", help="the image to segment (any format PIL reads)")
    add_prompt_options(parser)
    add_model_options(parser)
    _add_output_options(parser)
    add_post_options(parser)
    return parser


def add_prompt_options(parser: argparse.ArgumentParser, visual: bool = True) -> None:
    """--prompt, --negative-prompt, --template; with ``visual`` the support images too."""
    parser.add_argument(
        "--prompt", action="append", default=[], help="text prompt; one mask each (repeatable)"
    )
    parser.add_argument(
        "--negative-prompt",
        action="append",
        default=[],
        help="remove pixels that match this at least as well (repeatable)",
    )
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default="none",
        help="raw phrase, 'a photo of a {}.', or the mean over the training templates "
        "(default: %(default)s)",
    )
    if visual:
        _add_support_options(parser)


def _add_support_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--support-image",
        action="append",
        default=[],
        help="visual prompt: an example image (repeatable; k images = k-shot)",
    )
    parser.add_argument(
        "--support-mask",
        action="append",
        default=[],
        help="the mask of each --support-image, in the same order (nonzero = the object)",
    )
    parser.add_argument(
        "--text-weight",
        type=float,
        default=None,
        help="with one --prompt and supports: mix w*text + (1-w)*visual into one prompt",
    )


def add_weights_options(parser: argparse.ArgumentParser) -> None:
    """--weights, --variant, --backbone: which weights to load (clipseg-predict and
    clipseg-export)."""
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help="HF hub id, checkpoint directory, official .pth file or random:<variant> "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--variant",
        choices=list_variants(),
        default=None,
        help="expected model variant (default: the checkpoint's)",
    )
    parser.add_argument(
        "--backbone",
        default="openai",
        help="CLIP backbone weights for official .pth decoder files (default: %(default)s)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Weights, --device, --dtype, --backend."""
    add_weights_options(parser)
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16/fp16 on CUDA; bf16 on CPUs with native bf16, else fp32; onnx: int8 "
        "if the export passed its check, else fp32) | float32 | bfloat16 | float16 | int8",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch, or onnx: ONNX Runtime (--weights may be a clipseg-export folder; other "
        "weights are exported first) (default: %(default)s)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    add_mask_options(parser)
    parser.add_argument(
        "--soft", action="store_true", help="also write 8-bit probability maps (*_soft.png)"
    )
    parser.add_argument(
        "-o", "--output", default="out", help="output directory (default: %(default)s)"
    )


def add_mask_options(parser: argparse.ArgumentParser) -> None:
    """--threshold (one, or one per --prompt) and --combine (clipseg-predict, clipseg-label)."""
    parser.add_argument(
        "--threshold",
        type=float,
        action="append",
        default=None,
        help="probability threshold 0..1 (default: the checkpoint's calibrated one, else "
        "0.4); repeat it once per --prompt for a threshold each",
    )
    parser.add_argument(
        "--combine",
        choices=COMBINES,
        default="none",
        help="one mask per prompt, or their union / intersection / exclusive argmax labels "
        "(default: %(default)s)",
    )


def add_refine_options(group: argparse._ActionsContainer) -> None:
    """--refine, --refine-radius, --refine-eps, --pamr-iterations (PostProcess's refine,
    radius, eps, pamr_iterations): shared by clipseg-predict and clipseg-eval."""
    group.add_argument(
        "--refine", choices=REFINES, default="none",
        help="how the maps reach the image's size: none = bilinear (the reference); "
        "guided = edges follow the image (fast guided filter); pamr = affinity "
        "refinement, then guided (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--refine-radius", type=int, default=None,
        help="guided filter window radius in pixels (default: half a token of the model's "
        "patch grid: the long side / 44 for ViT-B/16)",
    )  # fmt: skip
    group.add_argument(
        "--refine-eps", type=float, default=1e-3,
        help="guided filter regularisation; larger keeps only strong edges (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--pamr-iterations", type=int, default=10,
        help="--refine pamr: propagation steps (default: %(default)s)",
    )  # fmt: skip


def add_post_options(parser: argparse.ArgumentParser, polygon_files: bool = True) -> None:
    """Refinement and post-processing: model.masks.postprocess.PostProcess, flag for field;
    with ``polygon_files``, clipseg-predict's --polygons and its vertex cap."""
    group = parser.add_argument_group(
        "refinement and post-processing",
        "Applied in this order: refine, threshold and combine, min-area, fill-holes, "
        "erode, dilate, instances, feather.",
    )
    add_refine_options(group)
    group.add_argument(
        "--min-area", type=int, default=0, help="drop connected pieces of fewer pixels"
    )
    group.add_argument("--fill-holes", action="store_true", help="fill holes in masks")
    group.add_argument("--erode", type=int, default=0, help="shrink masks by N pixels")
    group.add_argument("--dilate", type=int, default=0, help="grow masks by N pixels")
    group.add_argument(
        "--feather", type=int, default=0,
        help="write alpha mattes whose edge ramps over N pixels (for compositing)",
    )  # fmt: skip
    group.add_argument(
        "--instances", action="store_true",
        help="one PNG per connected piece of each mask, best first",
    )  # fmt: skip
    group.add_argument(
        "--max-instances", type=int, default=100,
        help="--instances: at most N per mask (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--background", choices=BACKGROUNDS, default="threshold",
        help="--combine argmax: the background's score is the threshold, or 'factor x the "
        "probability of the prompt background' (the paper's evaluation; default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--background-factor", type=float, default=3.0,
        help="--background prompt: its multiplier (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--polygon-tolerance", type=float, default=1.0,
        help="polygons: simplification tolerance in pixels (default: %(default)s)",
    )  # fmt: skip
    if not polygon_files:
        return
    group.add_argument(
        "--polygons", action="store_true",
        help="also write each mask's COCO polygons (<mask>.json: segmentation, bbox, area)",
    )  # fmt: skip
    group.add_argument(
        "--max-polygon-vertices", type=int, default=POLYGON_VERTICES, metavar="N",
        help="--polygons: at most N vertices per mask; a noisy mask past it is an error "
        "(raise --polygon-tolerance or --min-area) (default: %(default)s)",
    )  # fmt: skip


def post_from_args(args: argparse.Namespace):
    """The ``PostProcess`` the post-processing flags ask for (imports torch)."""
    from clipseg_serve.model.masks.postprocess import PostProcess

    return PostProcess(
        refine=args.refine, radius=args.refine_radius, eps=args.refine_eps,
        pamr_iterations=args.pamr_iterations, min_area=args.min_area,
        fill_holes=args.fill_holes, erode=args.erode, dilate=args.dilate,
        feather=args.feather, instances=args.instances, max_instances=args.max_instances,
        background=args.background, background_factor=args.background_factor,
    )  # fmt: skip


def input_error(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run, in one line, or None: checked before any model loads."""
    if len(args.support_image) != len(args.support_mask):
        return "give one --support-mask per --support-image"
    if not args.prompt and not args.support_image:
        return "give at least one --prompt or --support-image/--support-mask"
    if args.support_image and args.text_weight is not None and len(args.prompt) != 1:
        return "--text-weight mixes exactly one --prompt with the supports"
    if args.max_polygon_vertices < 1:
        return f"--max-polygon-vertices must be >= 1, got {args.max_polygon_vertices}"
    thresholds = args.threshold or []
    if len(thresholds) > 1 and len(thresholds) != len(args.prompt):
        return f"{len(thresholds)} --threshold for {len(args.prompt)} --prompt: one, or one each"
    files = [("image", args.image)]
    files += [("--support-image", p) for p in args.support_image]
    files += [("--support-mask", p) for p in args.support_mask]
    for role, path in files:
        problem = unreadable_image(Path(path))
        if problem:
            return f"cannot read {role} '{path}': {problem}"
    return None


def unreadable_image(path: Path) -> str | None:
    """What stops PIL from opening ``path`` as an image, or None. Reads the header only."""
    from PIL import Image, UnidentifiedImageError  # imported here: --help needs no PIL

    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    try:
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return "not an image format PIL can read"
    except OSError as exc:  # permissions, I/O errors
        return exc.strerror or str(exc)

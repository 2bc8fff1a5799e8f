"""``clipseg-predict``'s arguments and input checks, without torch.

This module imports only the standard library, PIL and ``model.config`` (plain data), so
``clipseg-predict --help`` and a mistyped file name answer at once, before torch,
open_clip and the weights load (``model.cli`` imports those only once the arguments pass).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import list_variants

DEFAULT_WEIGHTS = "CIDAS/clipseg-rd64-refined"

# The values of model.text.Template and model.postprocess.Combine, spelled out because
# importing those modules imports torch; tests/test_cli_help.py keeps them equal.
TEMPLATES = ("none", "photo", "ensemble")
COMBINES = ("none", "union", "intersection", "argmax")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``clipseg-predict``; every option has its help text."""
    parser = argparse.ArgumentParser(
        prog="clipseg-predict",
        description="Segment an image with CLIPSeg from text prompts and/or support images. "
        "Writes one PNG mask per output (0/255, the image's size) and prints a JSON line each.",
    )
    parser.add_argument("image", help="the image to segment (any format PIL reads)")
    _add_prompt_options(parser)
    _add_model_options(parser)
    _add_output_options(parser)
    return parser


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        default="none",
        help="raw phrase, 'a photo of a {}.', or the mean over the training templates "
        "(default: %(default)s)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16/fp16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="probability threshold 0..1 (default: the checkpoint's calibrated one, else 0.4)",
    )
    parser.add_argument(
        "--combine",
        choices=COMBINES,
        default="none",
        help="one mask per prompt, or their union / intersection / exclusive argmax labels "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--soft", action="store_true", help="also write 8-bit probability maps (*_soft.png)"
    )
    parser.add_argument(
        "-o", "--output", default="out", help="output directory (default: %(default)s)"
    )


def input_error(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run, in one line, or None: checked before any model loads."""
    if len(args.support_image) != len(args.support_mask):
        return "give one --support-mask per --support-image"
    if not args.prompt and not args.support_image:
        return "give at least one --prompt or --support-image/--support-mask"
    if args.support_image and args.text_weight is not None and len(args.prompt) != 1:
        return "--text-weight mixes exactly one --prompt with the supports"
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

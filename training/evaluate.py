"""``clipseg-eval``: the official CLIPSeg metrics of any weights on a dataset.

    clipseg-eval --weights runs/exp1/best --dataset phrasecut --data /datasets/phrasecut

Predictions follow the reference evaluation (``training.evaluation``); the metrics and
their formulas are in ``training.metrics``. Prints a table, writes the full result (per
threshold, per prompt) as JSON, and shows progress on stderr.

Only the standard library is imported before the arguments are parsed, so ``--help``
answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from clipseg_serve.model.cli.args import add_refine_options
from clipseg_serve.training.cli import (
    BACKBONE_HELP,
    DATASET_HELP,
    DATASET_KINDS,
    DEVICE_HELP,
    TEMPLATES,
    fail,
)

PROG = "clipseg-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate CLIPSeg weights on a dataset with the official CLIPSeg metrics: "
        "foreground IoU, binary IoU, mIoU (over classes) and AP, on the threshold grid "
        "0.02..0.98, at the best and at fixed thresholds (0.1-0.5).",
    )
    parser.add_argument(
        "--weights", required=True,
        help="weights to evaluate: a training output (runs/x/best), a HuggingFace id "
        "(CIDAS/clipseg-rd64-refined), a local transformers checkpoint folder, an official "
        "decoder .pth, or random:<variant> (meaningless masks; for smoke tests)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", default=None,
        help="expected variant of the weights (rd64-refined, rd64, rd16, tiny): a mismatch "
        "is an error; for random:… it picks the architecture. Default: the weights' own",
    )  # fmt: skip
    parser.add_argument("--backbone", default="openai", help=BACKBONE_HELP)
    parser.add_argument("--dataset", default="synthetic", choices=DATASET_KINDS, help=DATASET_HELP)
    parser.add_argument("--data", default="", help="dataset root folder or file (see --dataset)")
    parser.add_argument(
        "--split", default="val",
        help="split to evaluate (the <split> of the file names above). Default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--options", type=json.loads, default={},
        help='dataset options as JSON, e.g. \'{"negative_prob": 0.2}\' (the keyword '
        "arguments of the dataset class; augmentation is off unless asked for)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the dataset's per-sample randomness (synthetic images, sampling "
        "options). Default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--max-samples", type=int, default=None,
        help="evaluate only the first N samples. Default: all",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=16,
        help="images per forward pass. Default: %(default)s",
    )  # fmt: skip
    parser.add_argument(
        "--template", choices=TEMPLATES, default="none",
        help="how a phrase becomes CLIP text: none = the raw phrase (as the reference "
        "evaluation), photo = 'a photo of a {}.', ensemble = the mean over the training "
        "templates. Default: %(default)s",
    )  # fmt: skip
    # The service's refinement, measured with the same metrics (none: the reference's).
    add_refine_options(parser)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--output", default=None, help="write the full result as JSON here")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True,
        help="show a progress bar on stderr. Default: on",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        # Heavy imports only now: --help and argument errors never pay for torch.
        from clipseg_serve.model.errors import ClipSegError
        from clipseg_serve.training.distributed import resolve_device
        from clipseg_serve.training.evaluation import load_and_evaluate
        from clipseg_serve.training.report import format_table
    except ModuleNotFoundError as exc:
        return fail(PROG, exc)
    try:
        device = resolve_device(args.device)
        result = load_and_evaluate(args, device)
    except (ClipSegError, ValueError, OSError) as exc:
        # Model-level errors (weights that cannot be loaded, offline downloads) and bad
        # data are the user's to fix: one line, no traceback.
        return fail(PROG, exc)
    print(format_table(result))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

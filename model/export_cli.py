"""``clipseg-export``: write a checkpoint's split ONNX graphs and check them.

    clipseg-export --weights runs/exp1/best --output exported/

Writes ``query.onnx``, ``visual.onnx``, ``text.onnx``, ``decoder.onnx`` and
``manifest.json`` (``model.export``), then runs every graph with ONNX Runtime against the
PyTorch model on fresh random inputs and prints the largest difference of each (exit 1 if
one is over ``--tolerance``). Needs the ``onnx`` extra (``pip install 'clipseg-serve[onnx]'``).

Only the standard library is imported before the arguments are parsed: --help answers at
once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from .cli_args import DEFAULT_WEIGHTS

PROG = "clipseg-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export CLIPSeg weights as split ONNX graphs (query tower with its taps, "
        "visual embedding, text encoder, decoder; dynamic batch) and check each against "
        "PyTorch with ONNX Runtime.",
    )
    parser.add_argument(
        "--weights", default=DEFAULT_WEIGHTS,
        help="HF hub id, checkpoint directory, official .pth file or random:<variant> "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--variant", default=None, help="expected variant (default: the weights')")
    parser.add_argument(
        "--backbone", default="openai",
        help="CLIP backbone weights for official .pth decoder files (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="folder to write the graphs into")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest absolute difference ONNX Runtime may show against PyTorch on any "
        "output (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-check", action="store_true", help="write the graphs without checking them"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 (written and within tolerance), 1 (a graph differs), 2 (an error)."""
    args = build_parser().parse_args(argv)
    try:
        from .errors import ClipSegError
        from .export import check_graphs, export_graphs
        from .weights.loader import load_model
    except ModuleNotFoundError as exc:  # the onnx extra or torch missing
        print(f"{PROG}: error: {exc} (pip install 'clipseg-serve[onnx]')", file=sys.stderr)
        return 2
    try:
        model = load_model(args.weights, variant=args.variant, backbone=args.backbone).model
        # The exporter reports its progress on stdout: keep stdout for the JSON lines.
        with contextlib.redirect_stdout(sys.stderr):
            export_graphs(model.float().cpu(), args.output)
        if args.no_check:
            return 0
        worst = 0.0
        for check in check_graphs(model, args.output):
            print(json.dumps({"graph": check.graph, "max_abs_diff": check.max_abs_diff,
                              "max_abs_value": check.max_abs_value}))  # fmt: skip
            worst = max(worst, check.max_abs_diff)
    except (ClipSegError, ValueError, OSError, ModuleNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if worst > args.tolerance:
        print(f"{PROG}: a graph differs from PyTorch by {worst:.3g} > {args.tolerance}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``clipseg-export``: write a checkpoint's split ONNX graphs, quantise and check them.

    clipseg-export --weights runs/exp1/best --output exported/ \
        [--int8 dynamic | --int8 static --calibrate my_images/] [--check val_images/*.jpg]

Writes ``query.onnx``, ``visual.onnx``, ``text.onnx``, ``decoder.onnx`` and
``manifest.json`` (``model.onnx.export``), then runs every graph with ONNX Runtime against the
PyTorch model on fresh random inputs and prints the largest difference of each (exit 1 if
one is over ``--tolerance``). ``--int8`` adds int8 vision graphs (``model.onnx.quantize``);
``--check IMAGES`` compares the masks of every backend and precision with fp32 PyTorch on
those images (``model.onnx.fidelity``) and marks the int8 graphs recommended on this machine's
integer-kernel class — what the onnx backend's ``dtype=auto`` then runs — only at a mean
mask IoU of at least ``--bar``; a machine of another class checks again at start-up on a
few of those images, kept in the export (``model.onnx.int8_checks``).
Needs the ``onnx`` extra (``pip install 'clipseg-serve[onnx]'``).

Only the standard library is imported before the arguments are parsed: --help answers at
once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from clipseg_serve.model.cli.args import add_weights_options

PROG = "clipseg-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export CLIPSeg weights as split ONNX graphs (query tower with its taps, "
        "visual embedding, text encoder, decoder; dynamic batch) and check each against "
        "PyTorch with ONNX Runtime.",
    )
    add_weights_options(parser)
    parser.add_argument("-o", "--output", required=True, help="folder to write the graphs into")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest absolute difference ONNX Runtime may show against PyTorch on any "
        "output (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-graph-check",
        action="store_true",
        help="skip the graphs' check against PyTorch on random inputs",
    )
    parser.add_argument(
        "--int8", choices=("dynamic", "static"), default=None,
        help="also write int8 vision graphs: dynamic (no data needed) or static "
        "(activation ranges calibrated on --calibrate's images)",
    )  # fmt: skip
    parser.add_argument(
        "--calibrate", metavar="FOLDER", default=None,
        help="a folder of your images for --int8 static (the first --calibration-images, "
        "by name)",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-images", type=int, default=32,
        help="images --calibrate reads at most (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--check", nargs="+", metavar="IMAGE", default=None,
        help="images (or folders of images) to compare every backend's and precision's "
        "masks with fp32 PyTorch on; gates int8 (--bar)",
    )  # fmt: skip
    parser.add_argument(
        "--prompts", nargs="+", default=None,
        help="text prompts for --check (default: a few common objects)",
    )  # fmt: skip
    parser.add_argument(
        "--bar", type=float, default=None,
        help="mean mask IoU against fp32 that int8 needs to be recommended (default: 0.95)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 (written, within tolerance), 1 (a graph differs), 2 (an error)."""
    args = build_parser().parse_args(argv)
    if args.int8 == "static" and not args.calibrate:
        print(f"{PROG}: error: --int8 static needs --calibrate FOLDER", file=sys.stderr)
        return 2
    try:
        from clipseg_serve.model.errors import ClipSegError
        from clipseg_serve.model.onnx.export import check_graphs, export_graphs
        from clipseg_serve.model.weights.loader import load_model
    except ModuleNotFoundError as exc:  # the onnx extra or torch missing
        print(f"{PROG}: error: {exc} (pip install 'clipseg-serve[onnx]')", file=sys.stderr)
        return 2
    try:
        model = load_model(args.weights, variant=args.variant, backbone=args.backbone).model
        # Read before the export: a folder without images fails in seconds, not minutes.
        calibration = _calibration(args, model.config) if args.int8 == "static" else None
        # The exporter reports its progress on stdout: keep stdout for the JSON lines.
        with contextlib.redirect_stdout(sys.stderr):
            export_graphs(model.float().cpu(), args.output)
        worst = 0.0 if args.no_graph_check else _check_graphs(check_graphs(model, args.output))
        if args.int8:
            _quantize(args, calibration)
        if args.check:
            _check_fidelity(args, model)
    except (ClipSegError, ValueError, OSError, ModuleNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if worst > args.tolerance:
        print(f"{PROG}: a graph differs from PyTorch by {worst:.3g} > {args.tolerance}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _check_graphs(checks) -> float:
    """Print one JSON line per graph; the largest difference."""
    for check in checks:
        print(json.dumps({"graph": check.graph, "max_abs_diff": check.max_abs_diff,
                          "max_abs_value": check.max_abs_value}))  # fmt: skip
    return max(check.max_abs_diff for check in checks)


def _calibration(args: argparse.Namespace, config) -> list:
    """--calibrate's images as the query graph's inputs; an error when there are none."""
    from clipseg_serve.model.onnx.quantize import calibration_pixels

    images = list(calibration_pixels(args.calibrate, config, args.calibration_images))
    if not images:
        raise ValueError(f"no readable images in {args.calibrate}")
    return images


def _quantize(args: argparse.Namespace, calibration: list | None) -> None:
    from clipseg_serve.model.onnx.quantize import quantize_export

    entry = quantize_export(args.output, args.int8, calibration)
    print(json.dumps({"int8": entry["method"], "formats": list(entry["formats"]),
                      "calibration_images": entry["calibration_images"]}))  # fmt: skip


def _check_fidelity(args: argparse.Namespace, model) -> None:
    """Compare every candidate with fp32 PyTorch; gate int8 in the manifest."""
    from clipseg_serve.model.onnx.fidelity import DEFAULT_BAR, DEFAULT_PROMPTS
    from clipseg_serve.model.onnx.gate import check_export

    bar = DEFAULT_BAR if args.bar is None else args.bar
    prompts = tuple(args.prompts or DEFAULT_PROMPTS)
    report = check_export(model, args.output, _image_files(args.check), prompts, bar)
    for fidelity in report.results:
        print(json.dumps(fidelity.as_dict()))
    if report.int8_recommended is not None:
        print(json.dumps({"int8_recommended": report.int8_recommended, "bar": bar,
                          "kernel_class": report.kernel_class,
                          "int8_format": report.int8_format}))  # fmt: skip
        if not report.int8_recommended:
            print(f"{PROG}: int8 is NOT recommended for these weights on {report.kernel_class} "
                  f"(mean mask IoU below {bar} on your images): dtype=auto will run fp32 here",
                  file=sys.stderr)  # fmt: skip


def _image_files(items: Sequence[str]) -> list[Path]:
    """The --check arguments, folders expanded to their images (sorted)."""
    from clipseg_serve.model.imaging.image_formats import image_files

    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += image_files(item)
        else:
            files.append(item)
    if not files:
        raise ValueError("--check found no images")
    return files


if __name__ == "__main__":
    sys.exit(main())

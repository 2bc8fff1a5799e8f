"""clipseg-train / clipseg-eval: --help answers at once (no torch), every flag explains
itself, and the light parsers' choices match the heavy modules they stand for."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from clipseg_serve.model.network.text import Template
from clipseg_serve.training import cli
from clipseg_serve.training.config import build_parser as train_parser
from clipseg_serve.training.datasets import DATASET_KINDS
from clipseg_serve.training.evaluate import build_parser as eval_parser

HEAVY = (
    "torch",
    "open_clip",
    "numpy",
    "PIL",
    "clipseg_serve.model.inference.predictor",
    "clipseg_serve.model.network.clipseg",
)
#: The parts of ``model`` that --help may import: its argument helpers and plain config
#: (clipseg-eval shares clipseg-predict's --refine options).
LIGHT_MODEL = {
    "clipseg_serve.model",
    "clipseg_serve.model.cli",
    "clipseg_serve.model.cli.args",
    "clipseg_serve.model.config",
}
PROBE = """
import sys
from clipseg_serve.training.{module} import main
try:
    main(["--help"])
except SystemExit:
    pass
print("imported:", ",".join(m for m in {heavy!r} if m in sys.modules))
print("model:", ",".join(sorted(m for m in sys.modules if m.startswith("clipseg_serve.model"))))
"""


@pytest.mark.parametrize("module", ["train", "evaluate"])
def test_help_imports_nothing_heavy_and_is_fast(module):
    code = PROBE.format(module=module, heavy=HEAVY)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "usage: clipseg-" in result.stdout
    *_, imported, model = result.stdout.strip().splitlines()
    assert imported.strip() == "imported:"  # none of HEAVY
    assert set(filter(None, model.split(":", 1)[1].strip().split(","))) <= LIGHT_MODEL
    # < 1 s on an idle machine (~0.05 s measured); generous for a loaded CI box.
    assert seconds < 5, f"--help took {seconds:.1f} s"


@pytest.mark.parametrize("parser", [train_parser(), eval_parser()], ids=["train", "eval"])
def test_every_flag_has_help(parser):
    missing = [
        a.option_strings[0]
        for a in parser._actions
        if a.option_strings and (not a.help or a.help == argparse.SUPPRESS)
    ]
    assert not missing


def test_light_choices_match_the_heavy_modules():
    assert cli.DATASET_KINDS == DATASET_KINDS
    assert tuple(t.value for t in Template) == cli.TEMPLATES


def test_init_help_names_the_default_recipe_and_the_smoke_option():
    text = train_parser().format_help()
    assert "clip (default)" in text and "rd64" in text and "random:tiny" in text

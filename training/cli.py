"""What the training CLIs share before anything heavy is imported.

``--help`` must answer at once, so the parsers (here, ``training.config`` and
``training.evaluate``) import only the standard library; torch, open_clip and the model
are imported after the arguments are parsed. The choices below repeat names of heavy
modules (tests/training/test_cli.py keeps them equal).
"""

from __future__ import annotations

import sys

#: ``training.datasets.DATASET_KINDS``.
DATASET_KINDS: tuple[str, ...] = ("synthetic", "manifest", "coco", "phrasecut")
#: ``model.network.text.Template`` values.
TEMPLATES: tuple[str, ...] = ("none", "photo", "ensemble")

DATASET_HELP = (
    "synthetic: coloured shapes generated from --seed (no files); manifest: a JSONL file "
    "or a folder of <split>.jsonl; coco: an instances JSON or a COCO root "
    "(annotations/instances_<split>.json, images in <split>/); phrasecut: the "
    "VGPhraseCut_v0 folder (refer_<split>.json, images/). Default: %(default)s"
)
DEVICE_HELP = (
    "auto (this process's GPU when CUDA is available, else the CPU), cpu, or cuda (under "
    "torchrun: cuda:LOCAL_RANK). Default: %(default)s"
)
VARIANT_HELP = (
    "decoder variant: rd64-refined, rd64, rd16 or tiny. Picks the architecture of a fresh "
    "or random decoder; for a checkpoint it is the expected variant (a mismatch is an "
    "error). Default: %(default)s"
)
BACKBONE_HELP = (
    "CLIP backbone weights where the source has none (--init clip, official decoder "
    ".pth files): openai (OpenAI's ViT-B/16 through open_clip, downloaded once into its "
    "cache), a local open_clip weights file, or a HuggingFace CLIPSeg checkpoint. "
    "Default: %(default)s"
)
EXTRA_HINT = "install the training extra: pip install 'clipseg-serve[train]'"


def one_line(exc: BaseException) -> str:
    """``str(exc)`` on one line (a message for the terminal, not a traceback)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(prog: str, exc: BaseException, weights_flag: str = "--weights") -> int:
    """Print ``prog: error: <message>`` to stderr; exit status 2 (a usage/setup error).

    Weights that cannot be fetched (offline, not cached) name the fixes with this CLI's
    own weights flag (``weights_flag``), not the service's.
    """
    # Here, not at the top: --help never gets this far (model.errors itself is light).
    from clipseg_serve.model.errors import WeightsUnavailableError

    message = one_line(exc)
    if isinstance(exc, WeightsUnavailableError):
        message = f"{exc.problem()}. {exc.fixes(flag=weights_flag, env=None)}"
    if isinstance(exc, ModuleNotFoundError):
        message = f"{message}; {EXTRA_HINT}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2

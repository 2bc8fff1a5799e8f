"""``clipseg-train``: train the CLIPSeg decoder on a frozen CLIP backbone.

    clipseg-train --dataset phrasecut --data /datasets/phrasecut --output runs/pc
    torchrun --nproc_per_node 4 -m clipseg_serve.training.train --config run.json

With no ``--init`` it follows the paper: OpenAI's CLIP ViT-B/16, frozen, and a fresh rd64
decoder (``training.initial``). The loop is ``training.trainer``; this module only parses
the arguments (standard library only, so ``--help`` answers at once), then imports it.
"""

from __future__ import annotations

import json
import logging
import sys

from clipseg_serve.training.cli import fail
from clipseg_serve.training.config import config_from_args

PROG = "clipseg-train"


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)  # --help and bad flags exit here, before torch loads
    except (ValueError, OSError) as exc:  # a bad --config file
        return fail(PROG, exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        from clipseg_serve.model.errors import ClipSegError
        from clipseg_serve.training.distributed import shutdown
        from clipseg_serve.training.trainer import Trainer, TrainingError
    except ModuleNotFoundError as exc:
        return fail(PROG, exc)
    try:
        trainer = Trainer(cfg)
    except (ClipSegError, ValueError, OSError) as exc:
        # Weights that cannot be loaded (offline, no cache), bad data or options: one
        # line with the cause, no traceback.
        return fail(PROG, exc, weights_flag="--init")
    try:
        summary = trainer.run()
    except TrainingError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown(trainer.info)
    if trainer.info.is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

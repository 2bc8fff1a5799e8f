"""Make the README's example picture: an image, its prompts, and the returned masks.

No real CLIPSeg weights can be downloaded where this project is built, so the picture
shows what the repository itself can prove: the tiny model trained for ~40 s on CPU on
the synthetic shapes data (``clipseg-train --dataset synthetic``), segmenting a new image
through the same ``Predictor`` the service uses.

    python docs/make_figure.py                      # trains the tiny model first
    python docs/make_figure.py --weights runs/x/best
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipseg_serve.model.backends import load_predictor
from clipseg_serve.training.datasets import build_dataset
from clipseg_serve.training.train import main as train_main

COLOURS = [(0, 230, 255), (255, 0, 200), (40, 255, 40)]  # cyan, magenta, green
SCALE = 3  # the synthetic images are 96x96; enlarge for the README


def train_tiny(output: Path) -> Path:
    args = ["--init", "random:tiny", "--dataset", "synthetic", "--steps", "800",
            "--batch-size", "16", "--lr", "3e-3", "--eval-every", "400", "--num-workers", "1",
            "--output", str(output)]  # fmt: skip
    if train_main(args) != 0:
        raise SystemExit("training failed")
    return output / "best"


def overlay(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """The image with the mask tinted in ``colour`` (alpha 0.55) and outlined."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array(colour, dtype=np.float32)
    blended = np.where(mask[..., None], 0.45 * base + 0.55 * tint, base)
    return Image.fromarray(blended.astype(np.uint8))


def panel(image: Image.Image, caption: str) -> Image.Image:
    big = image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + 24), "white")
    canvas.paste(big, (0, 24))
    ImageDraw.Draw(canvas).text((6, 6), caption, fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="a checkpoint; default: train one")
    parser.add_argument("--out", default=str(Path(__file__).with_name("example.png")))
    parser.add_argument("--index", type=int, default=2, help="which synthetic test image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or str(train_tiny(Path(tmp) / "run"))
        predictor = load_predictor(weights, device="cpu")
    data = build_dataset("synthetic", "", "test", 11, augment=False, negative_prob=0.0)
    sample = next(data[i] for i in range(args.index, len(data)) if data[i].source.count(",") >= 1)
    prompts = [part.strip() for part in sample.source.split(":", 1)[1].split(",")][:3]
    buffer = io.BytesIO()
    sample.image.save(buffer, format="PNG")
    result = predictor.segment(buffer.getvalue(), prompts)
    panels = [panel(sample.image, "input")]
    for prompt, mask, colour in zip(prompts, result.masks, COLOURS, strict=False):
        panels.append(panel(overlay(sample.image, mask, colour), f'prompt: "{prompt}"'))
    figure = Image.new("RGB", (sum(p.width for p in panels) + 8 * len(panels), panels[0].height))
    figure.paste("white", (0, 0, figure.width, figure.height))
    x = 0
    for p in panels:
        figure.paste(p, (x, 0))
        x += p.width + 8
    figure.save(args.out)
    print(f"wrote {args.out}: prompts {prompts}")


if __name__ == "__main__":
    main()

"""Make the sample inputs of the README's examples: docs/samples/*.

A synthetic, photo-like table-top scene (numpy and PIL only, no randomness beyond a fixed
seed, so the same libraries give the same files):

- ``query.jpg``: a red mug, a yellow ball and a green book on a wooden table;
- ``support.jpg`` + ``support_mask.png``: another red mug in another scene, and the mask
  that marks it (255 = the mug), for the one-shot ("segment what I marked") example.

    python docs/make_samples.py            # writes docs/samples/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "samples"
QUERY_SIZE, SUPPORT_SIZE = (400, 300), (320, 240)  # (width, height)
RED, YELLOW, GREEN, BLUE = (196, 32, 38), (236, 190, 40), (46, 130, 70), (40, 80, 190)


def grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, float32 [H, W] each."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return x, y


def room(size: tuple[int, int], table_y: float, seed: int) -> np.ndarray:
    """A lit wall above a wooden table edge at ``table_y``: float32 RGB [H, W, 3] in 0..255."""
    x, y = grid(size)
    rng = np.random.default_rng(seed)
    wall = np.array([214, 204, 186], np.float32) * (1.05 - 0.25 * y / size[1])[..., None]
    grain = 0.85 + 0.08 * np.sin(y * 0.9 + 6 * np.sin(x / 37.0)) + 0.05 * np.sin(x / 9.0)
    wood = np.array([150, 100, 60], np.float32) * grain[..., None]
    image = np.where((y < table_y)[..., None], wall, wood)
    return image + rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor noise


def shadow(image: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> None:
    """Darken a soft elliptical contact shadow in place."""
    x, y = grid((image.shape[1], image.shape[0]))
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    image *= (1.0 - 0.45 * np.exp(-d * 2.0))[..., None]


def paint(image: np.ndarray, mask: np.ndarray, colour, light: np.ndarray) -> None:
    """Fill ``mask`` with ``colour`` shaded by ``light`` (a factor per pixel), in place."""
    shaded = np.array(colour, np.float32) * light[..., None]
    image[mask] = shaded[mask]


def mug(image: np.ndarray, cx: float, bottom: float, w: float, h: float) -> np.ndarray:
    """A cylindrical mug with a handle on its right; returns its mask."""
    x, y = grid((image.shape[1], image.shape[0]))
    shadow(image, cx + 0.1 * w, bottom, 0.75 * w, 0.12 * h)
    body = (np.abs(x - cx) <= w / 2) & (y >= bottom - h) & (y <= bottom)
    hx, hy = cx + w / 2, bottom - 0.55 * h
    r = np.hypot((x - hx) / (0.28 * w), (y - hy) / (0.28 * h))
    handle = (r >= 0.62) & (r <= 1.0) & (x > hx)
    light = 0.55 + 0.5 * np.cos(np.clip((x - cx + 0.15 * w) / w * np.pi, -np.pi / 2, np.pi / 2))
    paint(image, body | handle, RED, light)
    rim = body & (y < bottom - h + 0.06 * h)
    paint(image, rim, (120, 20, 24), np.ones_like(x))  # the dark inside of the rim
    return body | handle


def ball(image: np.ndarray, cx: float, cy: float, r: float, colour) -> np.ndarray:
    """A sphere lit from the upper left; returns its mask."""
    x, y = grid((image.shape[1], image.shape[0]))
    shadow(image, cx + 0.2 * r, cy + 0.95 * r, 1.1 * r, 0.25 * r)
    d = np.hypot(x - cx, y - cy)
    mask = d <= r
    highlight = np.hypot(x - (cx - 0.35 * r), y - (cy - 0.4 * r)) / r
    light = 1.15 - 0.6 * np.clip(highlight, 0, 1.3)
    paint(image, mask, colour, light)
    return mask


def book(image: np.ndarray, left: float, bottom: float, w: float, h: float) -> np.ndarray:
    """A closed book lying flat: a cover and the pages' edge; returns its mask."""
    x, y = grid((image.shape[1], image.shape[0]))
    shadow(image, left + w / 2, bottom, 0.6 * w, 0.15 * h)
    cover = (x >= left) & (x <= left + w) & (y >= bottom - h) & (y <= bottom)
    pages = cover & (y > bottom - 0.35 * h) & (y < bottom - 0.1 * h) & (x > left + 0.04 * w)
    paint(image, cover, GREEN, 0.8 + 0.3 * (1 - (x - left) / w))
    paint(image, pages, (235, 230, 215), np.ones_like(x))
    return cover


def to_image(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8), "RGB")


def query() -> Image.Image:
    image = room(QUERY_SIZE, table_y=150, seed=1)
    mug(image, cx=95, bottom=235, w=70, h=85)
    ball(image, cx=225, cy=212, r=30, colour=YELLOW)
    book(image, left=275, bottom=250, w=100, h=40)
    return to_image(image)


def support() -> tuple[Image.Image, Image.Image]:
    image = room(SUPPORT_SIZE, table_y=110, seed=2)
    ball(image, cx=80, cy=180, r=26, colour=BLUE)
    mask = mug(image, cx=200, bottom=205, w=90, h=105)
    return to_image(image), Image.fromarray(mask.astype(np.uint8) * 255, "L")


def write(out: Path) -> list[Path]:
    """Write the three samples into ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    support_image, support_mask = support()
    files = {
        "query.jpg": lambda p: query().save(p, quality=90),
        "support.jpg": lambda p: support_image.save(p, quality=90),
        "support_mask.png": lambda p: support_mask.save(p, optimize=True),
    }
    for name, save in files.items():
        save(out / name)
    return [out / name for name in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (docs/samples)")
    for path in write(parser.parse_args().out):
        print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

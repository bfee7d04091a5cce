"""Make sample_data/shapes: a synthetic multi-label set, and labels.csv listing it.

Each image holds one to four of the shapes circle, cross, square and triangle, each drawn in
its own colour at a random place (in its own quarter of the image, so that none hides another)
and size on a noisy grey background; labels.csv lists each
image with its shapes joined by ';' (`tlcli train sample_data/shapes/labels.csv
--label-delimiter ';'`). Every shape is in about half of the images, independently of the
others, so a model has to say each one's presence on its own: which shapes appear together
tells it nothing.

Deterministic: the same seed gives the same bytes. The colours are distinct so that the tiny
from-scratch backbone learns the set in seconds (tests, the offline demo); the positions,
sizes and noise vary, so a shape is not found by looking at one place.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "cross", "square", "triangle")
COLOURS = {"circle": (220, 40, 40), "cross": (40, 170, 40), "square": (40, 70, 220), "triangle": (230, 200, 30)}


def draw(shapes: tuple[str, ...], size: int, rng: random.Random) -> Image.Image:
    """An image of `shapes`, each once, in its colour, on a noisy grey background."""
    grey = rng.randint(90, 160)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 10, (size, size, 3))
    image = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    cells = rng.sample([(0, 0), (0, 1), (1, 0), (1, 1)], len(shapes))  # apart: none hides another
    for shape, (row, column) in zip(shapes, cells):
        extent = rng.uniform(0.22, 0.4) * size
        x = column * size / 2 + rng.uniform(0, size / 2 - extent)
        y = row * size / 2 + rng.uniform(0, size / 2 - extent)
        box, colour = (x, y, x + extent, y + extent), COLOURS[shape]
        if shape == "circle":
            pen.ellipse(box, fill=colour)
        elif shape == "square":
            pen.rectangle(box, fill=colour)
        elif shape == "triangle":
            pen.polygon([(x, y + extent), (x + extent / 2, y), (x + extent, y + extent)], fill=colour)
        else:
            bar = extent / 3
            pen.rectangle((x + bar, y, x + 2 * bar, y + extent), fill=colour)
            pen.rectangle((x, y + bar, x + extent, y + 2 * bar), fill=colour)
    return image


def generate(out: Path, n: int = 200, size: int = 64, seed: int = 0) -> Path:
    """Write `n` PNG images into out/images/ and out/labels.csv (path,labels with the shapes
    joined by ';'), the same bytes for the same seed. Returns the path of labels.csv."""
    rng = random.Random(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shapes = tuple(s for s in SHAPES if rng.random() < 0.5) or (rng.choice(SHAPES),)
        name = f"images/shapes_{i:03d}.png"
        draw(shapes, size, rng).save(out / name)
        rows.append((name, ";".join(shapes)))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "labels"))
        writer.writerows(rows)
    return out / "labels.csv"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "shapes")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    print(f"wrote {generate(args.out, args.n, args.size, args.seed)}")

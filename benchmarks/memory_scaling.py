"""Peak memory of `tlcli train` as the dataset grows: it should not grow with the images.

Makes synthetic folders of 256 px JPEGs in 10 classes (2,000, 8,000 and 16,000 images by
default) and trains each at 224 px with MobileNetV3-Small (a random-init weights file, so the
backbone counts as pretrained and both phases run on cached activations, as with ImageNet
weights) in a fresh process, with a fixed --cache-ram-gb. Prints peak RSS, its growth over the
smallest folder, and images per second of the caching pass. The README's memory table is this
script's output.

    python benchmarks/memory_scaling.py                      # 2k, 8k, 16k
    python benchmarks/memory_scaling.py --sizes 2000 32000   # any sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = 10


def make_folder(root: Path, n: int, size: int = 256) -> Path:
    """`n` JPEGs of `size` px in CLASSES class folders: a class is a hue plus noise, cheap to make."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (CLASSES, 1, 1, 3))
    for i in range(n):
        cls = i % CLASSES
        folder = root / f"class_{cls}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-40, 40, (size, size, 3))
        Image.fromarray(np.clip(base[cls] + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=85)
    return root


TRAIN = """
import json, sys
from tlcli.config import TrainConfig
from tlcli.train import train
data, weights, project, cache_gb = sys.argv[1:]
config = TrainConfig(data, backbone="mobilenet_v3_small", weights=weights, image_size=224, epochs=1,
                     cache_views=1, fine_tune_epochs=1, batch_size=64, cache_ram_gb=float(cache_gb),
                     project=project)
print(json.dumps(train(config, quiet=True).metrics))
"""


def run(data: Path, weights: Path, project: Path, cache_gb: float) -> dict:
    done = subprocess.run([sys.executable, "-c", TRAIN, str(data), str(weights), str(project), str(cache_gb)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000])
    parser.add_argument("--cache-ram-gb", type=float, default=0.5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="tlcli-memory-"))
    weights = work / "mobilenet_v3_small.weights.h5"
    if not weights.exists():
        from tlcli.backbones import build_backbone

        build_backbone("mobilenet_v3_small", "none", 224).save_weights(weights)
    rows = []
    for n in args.sizes:
        data = work / f"images_{n}"
        if not data.exists():
            make_folder(data, n)
        metrics = run(data, weights, work / f"runs_{n}", args.cache_ram_gb)
        rows.append((n, metrics["peak_memory_mb"], metrics["seconds"]["phase1"],
                     metrics["phase1_images_per_second"], metrics["n_train"]))
        print(f"{n} images: peak {metrics['peak_memory_mb']:.0f} MB", file=sys.stderr, flush=True)
    first = rows[0][1]
    print(f"\n--cache-ram-gb {args.cache_ram_gb}, MobileNetV3-Small at 224 px, 1 cached view\n")
    print("| images | peak RSS | growth over the first | caching + head, images/s |")
    print("| ---: | ---: | ---: | ---: |")
    for n, peak, _, speed, _ in rows:
        print(f"| {n:,} | {peak:,.0f} MB | {peak - first:+,.0f} MB | {speed:,.0f} |")


if __name__ == "__main__":
    main()

"""How much does `tlcli predict` on a folder cost over a bare `model.predict` on decoded tensors?

    python benchmarks/predict_overhead.py --model runs/train --data ../shared/data/flowers-dev

Times, for the same images (interleaved rounds after a warm-up; best, median and CPU seconds):

  decode only          load_image on every file (thread pool), no model
  bare model.predict   model.predict on the images already decoded, as one float32 tensor
  bare tf.function     tlcli's compiled model call on already-decoded batches (no decoding)
  tlcli pipeline       tlcli's folder path: tf.data decoding in parallel with inference
  decode, then predict what a naive script does: decode everything, then model.predict

The overhead figure is tlcli pipeline against bare model.predict. Without --model, a tiny model
is trained on synthetic images first (seconds), which measures the pipeline, not a real backbone.

Measured (flowers-dev, 350 images, MobileNetV2 at 224 px, batch 32, 2 shared CPU cores, best of
5): bare model.predict 3.43 s, tlcli pipeline 3.77 s: +9.9% wall, +8% CPU time, identical
probabilities. Inference keeps both cores busy, so the overhead is the decoding itself (0.26 s);
with spare cores the tf.data pipeline hides it behind inference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(variants: dict, repeats: int) -> dict:
    """{name: (wall seconds list, CPU seconds list)}, the variants interleaved round by round after
    one warm-up each, so a neighbour's load spreads over all of them instead of hitting one."""
    for fn in variants.values():
        fn()
    times = {name: ([], []) for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    return times


def synthetic_run(root: Path, n_per_class: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_folder

    from tlcli.config import TrainConfig
    from tlcli.train import train

    data = make_folder(root / "data", per_class=n_per_class, size=160)
    config = TrainConfig(str(data), backbone="tiny", weights="none", image_size=64, epochs=1, cache_views=1,
                         fine_tune_epochs=0, batch_size=32, project=str(root / "runs"))
    return train(config, quiet=True).run_dir, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="run folder or model file (default: train a tiny one on synthetic data)")
    parser.add_argument("--data", help="folder of images, searched recursively (default: the synthetic data)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from rich.console import Console
    from rich.table import Table

    from tlcli.data import find_images, load_images
    from tlcli.predict import classify
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model, run_batches

    tmp = tempfile.TemporaryDirectory()
    if args.model:
        model_path, data = args.model, Path(args.data) if args.data else None
        if data is None:
            parser.error("--data is needed with --model")
    else:
        model_path, synthetic = synthetic_run(Path(tmp.name), 128)
        data = Path(args.data) if args.data else synthetic
    ref = resolve_model(model_path)
    start = time.perf_counter()
    runner = open_model(ref)
    load_seconds = time.perf_counter() - start
    if runner.kind == "tflite":
        parser.error("give a .keras model or run: the comparison is with Keras model.predict")
    paths = find_images(data)[: args.limit or None]
    n, size, batch = len(paths), runner.image_size, args.batch_size

    decoded, ok, skipped = load_images(paths, size)
    if skipped:
        print(f"note: {len(skipped)} unreadable file(s): blanks in tlcli's batches, left out of the bare runs")
    tensor = tf.constant(decoded.astype(np.float32))
    results = {}

    def keep(name, fn):
        return lambda: results.__setitem__(name, fn())

    variants = {
        "decode only": lambda: load_images(paths, size),
        "bare model.predict (decoded tensor)": keep("bare", lambda: runner.model.predict(tensor, batch_size=batch, verbose=0)),
        "bare tf.function (decoded batches)": lambda: run_batches(runner, decoded, batch),
        "tlcli pipeline (files -> probabilities)": keep("tlcli", lambda: classify(runner, paths, batch)),
    }
    times = measure(variants, args.repeats)
    best = {name: min(wall) for name, (wall, _) in times.items()}
    bare = best["bare model.predict (decoded tensor)"]

    table = Table(title=f"{n} images, {ref.kind} model {ref.path} at {size} px, batch {batch}, "
                        f"{os.cpu_count()} CPU(s), {args.repeats} interleaved rounds", title_justify="left")
    for column in ("step", "best s", "median s", "CPU s", "images/s", "vs bare model.predict"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for name, (wall, cpu) in times.items():
        table.add_row(name, f"{min(wall):.2f}", f"{statistics.median(wall):.2f}", f"{min(cpu):.2f}",
                      f"{n / min(wall):.1f}", f"{best[name] / bare - 1:+.1%}")
    serial = best["decode only"] + bare
    table.add_row("decode, then model.predict (sum)", f"{serial:.2f}", "", "", f"{n / serial:.1f}", f"{serial / bare - 1:+.1%}")
    Console(width=max(Console().width, 110)).print(table)

    probs, errors = results["tlcli"]
    good = [i for i in range(n) if i not in errors]
    difference = float(np.abs(probs[good] - results["bare"]).max())
    tlcli = best["tlcli pipeline (files -> probabilities)"]
    print(f"model load: {load_seconds:.2f}s (once per command, not in the figures above)")
    print(f"tlcli overhead: {tlcli / bare - 1:+.1%} vs bare model.predict, "
          f"{tlcli / best['bare tf.function (decoded batches)'] - 1:+.1%} vs the bare compiled call; "
          f"max |probability difference| from model.predict: {difference:.1e}")


if __name__ == "__main__":
    main()

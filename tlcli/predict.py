"""`tlcli predict`: from image paths to labelled rows, for any kind of saved model.

Files are decoded by `tlcli.images.load_image` exactly as in training, in parallel with
inference, and run by a `tlcli.runtime` Runner, the code export's parity check measures too;
`evaluate` reuses `classify`.

A multi-label model (`Runner.multi_label`) gives each image every label whose probability
reaches the label's threshold, rather than one best class: its rows hold `labels`, not `label`.

Nothing in this module imports TensorFlow or Keras at module level. A `.tflite` model runs on the
LiteRT interpreter and decodes in a thread pool, so predicting one image with it starts in well
under a second; Keras and SavedModel models load TensorFlow anyway and decode in tf.data.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlcli.data import ImageError, expand_path, load_image
from tlcli.errors import TlcliError
from tlcli.fs import is_url
from tlcli.multilabel import predicted_sets
from tlcli.rundir import ModelRef
from tlcli.runtime import Runner, open_model, with_tta

FORMATS = ("table", "json", "csv")
UNKNOWN = "unknown"  # predict --min-confidence: the label of an image the model is unsure of
NO_LABEL = "none above threshold"  # a multi-label image none of whose labels reaches its threshold
MULTI_LABEL_SEPARATOR = ";"  # between the labels of one image in a CSV cell


# ---------------------------------------------------------------- inputs


def expand_paths(args: list[str]) -> list[tuple[str, str | None]]:
    """(path, problem) for every image PATH names: files, folders (recursively) and globs, mixed,
    local or URLs (gs://…, through `tlcli.data.expand_path`).

    A named file is always tried, whatever its extension; folders and globs contribute image files
    only. An argument that names nothing gives one row with its problem, so it is reported in
    place instead of silently dropped. Duplicates keep their first position.
    """
    rows: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: str, problem: str | None = None) -> None:
        key = f"\0{path}" if problem else path if is_url(path) else os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            rows.append((path, problem))

    for arg in args:
        paths, problem = expand_path(str(arg))
        for path in paths:
            add(path)
        if problem:
            add(str(arg), problem)
    return rows


# ---------------------------------------------------------------- batched decoding and inference


def classify(runner: Runner, paths: list, batch_size: int = 32, progress=None) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities for every file of `paths`, decoding the next batches while one is inferred.

    Returns (probabilities (n, classes) with NaN rows for unreadable files, {index: reason}); a
    runner giving more per image (`TTARunner(average=False)`: (views, classes)) gives that per row.
    `progress(n)` is called as batches finish.
    """
    if batch_size < 1:
        raise TlcliError("--batch-size must be at least 1.")
    probs = None
    errors: dict[int, str] = {}
    batches = _tf_batches if runner.uses_tensorflow else _thread_batches
    for indices, images, ok in batches(paths, runner.image_size, batch_size, errors):
        if ok.any():
            # Failed slots hold blank images: predicting them too keeps one batch shape throughout.
            out = runner.predict(images)
            if probs is None:
                probs = np.full((len(paths), *out.shape[1:]), np.nan, np.float32)
            probs[indices[ok]] = out[ok]
            for i in indices[ok & ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)]:
                errors[int(i)] = "the model's output is not a number (a broken model?)"
        if progress:
            progress(len(indices))
    if probs is None:  # nothing readable
        probs = np.full((len(paths), len(runner.labels)), np.nan, np.float32)
    return probs, errors


def _decoder(paths: list, size: int, errors: dict):
    blank = np.zeros((size, size, 3), np.uint8)

    def decode(i: int):
        try:
            return load_image(paths[i], size), True
        except ImageError as error:
            errors[i] = str(error)
            return blank, False

    return decode


def _tf_batches(paths: list, size: int, batch_size: int, errors: dict) -> Iterator:
    """A parallel tf.data pipeline: Pillow decodes in tf.data's threads (it releases the GIL)."""
    import tensorflow as tf

    decode = _decoder(paths, size, errors)

    def decode_index(i):
        image, ok = decode(int(i))
        return image, np.bool_(ok)

    def load(i):
        image, ok = tf.numpy_function(decode_index, [i], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return i, image, ok

    ds = tf.data.Dataset.range(len(paths)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for indices, images, ok in ds.batch(batch_size).prefetch(2):
        yield indices.numpy(), images, ok.numpy()


def _thread_batches(paths: list, size: int, batch_size: int, errors: dict, ahead: int = 2) -> Iterator:
    """The same pipeline without TensorFlow: a thread pool decodes up to `ahead` batches in advance
    (bounded, so a huge folder never sits decoded in memory)."""
    decode = _decoder(paths, size, errors)
    starts = iter(range(0, len(paths), batch_size))
    pending: deque = deque()
    with ThreadPoolExecutor(min(32, (os.cpu_count() or 2) * 2)) as pool:

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                stop = min(len(paths), start + batch_size)
                pending.append((start, [pool.submit(decode, i) for i in range(start, stop)]))

        for _ in range(ahead + 1):
            submit()
        while pending:
            start, futures = pending.popleft()
            submit()
            decoded = [f.result() for f in futures]
            yield (np.arange(start, start + len(decoded)), np.stack([d[0] for d in decoded]),
                   np.array([d[1] for d in decoded]))


# ---------------------------------------------------------------- results


def predict_files(ref: ModelRef, args: list[str], top_k: int = 3, batch_size: int = 32, console=None,
                  quiet: bool = False, tta: str | None = None, min_confidence: float | None = None) -> list[dict]:
    """Predict every image PATH names (files, folders, globs) with the model `ref`.

    Returns one dict per input, in input order:
    {"path", "label", "confidence", "top_k": [{"label", "confidence"}], "error"}; a file that
    cannot be read has its `error` set and no label. `tta` (flip, flip+crops) averages over views
    of each image (`tlcli.runtime.with_tta`); below `min_confidence` the label is UNKNOWN.
    A multi-label model's rows hold `labels` instead of `label` and `confidence` (see
    `multilabel_row`).
    """
    from rich.console import Console

    from tlcli.progress import Step, make_progress

    if top_k < 1:
        raise TlcliError("--top-k must be at least 1.")
    items = expand_paths(args)
    runner = with_tta(open_model(ref), tta)
    multi = runner.thresholds if runner.multi_label else None
    if min_confidence is not None and UNKNOWN in runner.labels and multi is None:
        raise TlcliError(f"the model has a class named '{UNKNOWN}': --min-confidence would make it ambiguous.")
    todo = [i for i, (_, problem) in enumerate(items) if problem is None]
    with make_progress(console or Console(stderr=True), quiet or len(todo) < 2) as progress:
        step = Step(progress, "Predicting")
        step.start(len(todo))
        probs, errors = classify(runner, [items[i][0] for i in todo], batch_size, step.advance)
        step.done(f"{len(todo) - len(errors)} ok, {len(errors)} failed" if errors else "")
    problems = {todo[j]: reason for j, reason in errors.items()}
    rows_of = {i: j for j, i in enumerate(todo)}
    results = []
    for i, (path, problem) in enumerate(items):
        problem = problem or problems.get(i)
        if problem and multi is not None:
            results.append({"path": path, "labels": [], "top_k": [], "error": problem})
        elif problem:
            results.append({"path": path, "label": None, "confidence": None, "top_k": [], "error": problem})
        elif multi is not None:
            results.append(multilabel_row(path, probs[rows_of[i]], runner.labels, multi, top_k, min_confidence))
        else:
            results.append(result_row(path, probs[rows_of[i]], runner.labels, top_k, min_confidence))
    return results


def result_row(path: str, probs: np.ndarray, labels: list[str], top_k: int,
               min_confidence: float | None = None) -> dict:
    """One prediction as the JSON row: best label, its confidence, and the top-k. Below
    `min_confidence` the label is UNKNOWN; the confidence and top-k still say what the model thought."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [{"label": labels[j], "confidence": round(float(probs[j]), 6)} for j in order]
    unsure = min_confidence is not None and float(probs[order[0]]) < min_confidence
    return {"path": path, "label": UNKNOWN if unsure else top[0]["label"], "confidence": top[0]["confidence"],
            "top_k": top, "error": None}


def multilabel_row(path: str, probs: np.ndarray, labels: list[str], thresholds, top_k: int,
                   min_confidence: float | None = None) -> dict:
    """One multi-label prediction as the JSON row: {"path", "labels": [{"label", "confidence",
    "threshold"}], "top_k", "error"}, `labels` holding every label at or above its threshold, most
    probable first (none: an empty list). `min_confidence` raises every threshold below it to it;
    `threshold` is the bar each label cleared. The top-k are the k most probable labels, above
    their thresholds or not, as for a single-label model."""
    order = np.argsort(-probs, kind="stable")
    bars = np.maximum(np.asarray(thresholds, np.float64), min_confidence or 0.0)
    present = predicted_sets(probs[None], bars)[0]
    return {"path": path,
            "labels": [{"label": labels[j], "confidence": round(float(probs[j]), 6),
                        "threshold": round(float(bars[j]), 6)} for j in order if present[j]],
            "top_k": [{"label": labels[j], "confidence": round(float(probs[j]), 6)} for j in order[:top_k]],
            "error": None}


def is_unknown(row: dict) -> bool:
    """Whether a result row was labelled UNKNOWN by --min-confidence (its label is not its best
    class), or, for a multi-label model, has no label above its threshold."""
    if "labels" in row:
        return not row["error"] and not row["labels"]
    return not row["error"] and row["label"] != row["top_k"][0]["label"]


def render(results: list[dict], fmt: str) -> str:
    """`results` as JSON (a list of objects), CSV (one column pair per top-k rank) or a plain-text table."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv" and any("labels" in r for r in results):
        return _multilabel_csv(results)
    if fmt == "csv":
        k = max((len(r["top_k"]) for r in results), default=0)
        header = ["path", "label", "confidence"]
        for rank in range(1, k + 1):
            header += [f"top{rank}_label", f"top{rank}_confidence"]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header + ["error"])
        for r in results:
            ranks = [v for t in r["top_k"] for v in (t["label"], t["confidence"])]
            ranks += [""] * (2 * k - len(ranks))
            writer.writerow([r["path"], r["label"] or "", "" if r["confidence"] is None else r["confidence"],
                             *ranks, r["error"] or ""])
        return buffer.getvalue()
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=160, no_color=True, highlight=False)
        console.print(results_table(results))
        return console.file.getvalue()
    raise TlcliError(f"--format must be one of {', '.join(FORMATS)}; not '{fmt}'.")


def _multilabel_csv(results: list[dict]) -> str:
    """Multi-label rows as CSV: the labels above their thresholds and their probabilities, each a
    `;`-joined cell in the same order (empty: none above threshold), then the top-k."""
    k = max((len(r["top_k"]) for r in results), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "labels", "confidences", *[f"top{rank}_{what}" for rank in range(1, k + 1)
                                                       for what in ("label", "confidence")], "error"])
    for r in results:
        ranks = [v for t in r["top_k"] for v in (t["label"], t["confidence"])]
        writer.writerow([r["path"], MULTI_LABEL_SEPARATOR.join(t["label"] for t in r["labels"]),
                         MULTI_LABEL_SEPARATOR.join(str(t["confidence"]) for t in r["labels"]),
                         *ranks, *[""] * (2 * k - len(ranks)), r["error"] or ""])
    return buffer.getvalue()


def results_table(results: list[dict]):
    """A rich table: path, label, confidence, top-k (and the reason, for inputs that failed);
    for a multi-label model, path, the labels above their thresholds, top-k."""
    from rich.table import Table
    from rich.text import Text

    multi = any("labels" in r for r in results)
    failed = sum(1 for r in results if r["error"])
    unsure = sum(map(is_unknown, results))
    title = (f"{len(results)} prediction(s)" + (f", {unsure} {f'with {NO_LABEL}' if multi else UNKNOWN}" if unsure else "")
             + (f", {failed} failed" if failed else ""))
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")
    for column in ("labels (probability)",) if multi else ("label", "confidence"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    table.add_column("top-k")
    for r in results:
        if r["error"]:
            table.add_row(Text(r["path"]), Text("error", style="bold red"), *([] if multi else [""]),
                          Text(r["error"], style="red"))
            continue
        top = Text(", ".join(f"{t['label']} {t['confidence']:.3f}" for t in r["top_k"]))
        if multi:
            found = ", ".join(f"{t['label']} {t['confidence']:.3f}" for t in r["labels"])
            table.add_row(Text(r["path"]), Text(found, style="bold") if found else Text(f"({NO_LABEL})", style="yellow"),
                          top)
        else:
            table.add_row(Text(r["path"]), Text(r["label"], style="yellow" if is_unknown(r) else "bold"),
                          f"{r['confidence']:.3f}", top)
    return table


def format_for(output: Path | None, fmt: str | None) -> str:
    """--format, or else the --output file's extension (.json, .csv), or else a table."""
    if fmt:
        return fmt
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in ("json", "csv") else "table"


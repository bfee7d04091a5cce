"""Export's parity check: each exported file run next to the Keras model on the same images.

Both sides run on `tlcli.runtime`, the code `tlcli predict` and `tlcli evaluate` use, so the
agreement reported is the agreement a user gets. Per file: top-1 agreement with Keras, the largest
probability difference, accuracy, size and latency. A file below its minimum agreement fails,
so a quantized model cannot quietly lose accuracy or come out unquantized.

A multi-label model (`Runner.multi_label`) is judged on label sets at its thresholds: two files
agree on an image when they give it the same set of labels, and its accuracy is the share of
images whose set is exactly the true one (truth: (n, labels) 0/1, or class indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli.multilabel import predicted_sets
from tlcli.progress import Step
from tlcli.runtime import Runner, latency, run_batches

CHECK_BATCH = 32  # images per call for the probabilities (latency is timed one image at a time)


@dataclass
class Check:
    """How one model fared on the check images next to the Keras model."""

    format: str
    file: str
    path: str
    size_bytes: int
    accuracy: float
    latency_ms: float  # mean per image, one image at a time, on this machine
    agreement: float | None = None  # top-1 agreement with Keras; None for the Keras row
    max_prob_diff: float | None = None  # largest |p - p_keras| over all images and classes
    min_agreement: float | None = None
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)


def check_reference(runner: Runner, images: np.ndarray, truth: np.ndarray,
                    step: Step | None = None) -> tuple[np.ndarray, Check]:
    """The reference (the Keras model): its probabilities on the check images, and its own row."""
    probs, seconds = _run_timed(runner, images, step)
    return probs, Check(runner.kind, runner.path.name, str(runner.path), _size(runner.path),
                        _accuracy(runner, probs, truth), seconds * 1000.0)


def check_artifact(runner: Runner, name: str, reference: np.ndarray, images: np.ndarray, truth: np.ndarray,
                   min_agreement: float, step: Step | None = None) -> Check:
    """Run an exported model (format `name`) on `images` and compare it with the reference
    probabilities; `truth` holds the images' class indices (a multi-label model's: label sets)."""
    probs, seconds = _run_timed(runner, images, step)
    agreement = float(np.mean(_same(_answers(runner, probs), _answers(runner, reference)))) if len(images) else 0.0
    diff = float(np.abs(probs - reference).max()) if len(images) else 0.0
    return Check(name, runner.path.name, str(runner.path), _size(runner.path), _accuracy(runner, probs, truth),
                 seconds * 1000.0, agreement=agreement, max_prob_diff=diff, min_agreement=min_agreement,
                 passed=agreement >= min_agreement)


def _run_timed(runner: Runner, images: np.ndarray, step: Step | None) -> tuple[np.ndarray, float]:
    probs = run_batches(runner, images, CHECK_BATCH, step.advance if step is not None else None)
    return probs, latency(runner, images)


def _answers(runner: Runner, probs: np.ndarray) -> np.ndarray:
    """What the model says of each image: its top class, or a multi-label model's label set
    ((n, labels) bool at the runner's thresholds)."""
    return predicted_sets(probs, runner.thresholds) if runner.multi_label else probs.argmax(-1)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, whether two answers (classes, or label sets) are the same."""
    return (a == b).reshape(len(a), -1).all(axis=1)


def _accuracy(runner: Runner, probs: np.ndarray, truth: np.ndarray) -> float:
    if not len(truth):
        return 0.0
    truth = np.asarray(truth)
    if runner.multi_label:  # label sets; class folders give one label each
        truth = truth > 0.5 if truth.ndim == 2 else np.eye(len(runner.labels), dtype=bool)[truth.astype(int)]
    return float(np.mean(_same(_answers(runner, probs), truth)))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

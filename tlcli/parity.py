"""Export's parity check: each exported file run next to the Keras model on the same images.

Both sides run on `tlcli.runtime`, the code `tlcli predict` and `tlcli evaluate` use, so the
agreement reported is the agreement a user gets. Per file: top-1 agreement with Keras, the largest
probability difference, accuracy, size and latency. A file below its minimum agreement fails,
so a quantized model cannot quietly lose accuracy or come out unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
                        _accuracy(probs, truth), seconds * 1000.0)


def check_artifact(runner: Runner, name: str, reference: np.ndarray, images: np.ndarray, truth: np.ndarray,
                   min_agreement: float, step: Step | None = None) -> Check:
    """Run an exported model (format `name`) on `images` and compare it with the reference
    probabilities; `truth` holds the images' class indices."""
    probs, seconds = _run_timed(runner, images, step)
    agreement = float(np.mean(probs.argmax(-1) == reference.argmax(-1))) if len(images) else 0.0
    diff = float(np.abs(probs - reference).max()) if len(images) else 0.0
    return Check(name, runner.path.name, str(runner.path), _size(runner.path), _accuracy(probs, truth),
                 seconds * 1000.0, agreement=agreement, max_prob_diff=diff, min_agreement=min_agreement,
                 passed=agreement >= min_agreement)


def _run_timed(runner: Runner, images: np.ndarray, step: Step | None) -> tuple[np.ndarray, float]:
    probs = run_batches(runner, images, CHECK_BATCH, step.advance if step is not None else None)
    return probs, latency(runner, images)


def _accuracy(probs: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(probs.argmax(-1) == truth)) if len(truth) else 0.0


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

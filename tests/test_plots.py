"""tlcli.plots: the reliability diagram draws what its bins say."""

from __future__ import annotations

import numpy as np
from PIL import Image


def _bins(gap: float) -> list[tuple]:
    """reliability_bins rows for predictions in 5 bins, each bin's accuracy `gap` below its confidence."""
    rows = []
    for b in range(15):
        low, high = b / 15, (b + 1) / 15
        filled = b >= 10
        confidence = (low + high) / 2
        rows.append((low, high, 20 if filled else 0, confidence if filled else None,
                     confidence - gap if filled else None))
    return rows


def _reddish_pixels(path) -> int:
    """Pixels of the shaded gap's colour (matplotlib's tab:red, at 30% over white, and its hatch)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(np.sum((red > 180) & (red - green > 40) & (red - blue > 40)))


def test_reliability_diagram_is_a_png_that_shades_the_gap(tmp_path):
    from tlcli.plots import plot_reliability

    plot_reliability(_bins(0.0), tmp_path / "calibrated.png", "calibrated")
    plot_reliability(_bins(0.3), tmp_path / "over.png", "over-confident")
    for name in ("calibrated.png", "over.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only the legend's swatch is red when accuracy meets confidence; a 0.3 gap over 5 bins is a band.
    calibrated, over = _reddish_pixels(tmp_path / "calibrated.png"), _reddish_pixels(tmp_path / "over.png")
    assert over > 5 * max(calibrated, 1) and over > 2000


def test_reliability_diagram_of_no_predictions_in_most_bins_still_draws(tmp_path):
    from tlcli.calibration import reliability_bins
    from tlcli.plots import plot_reliability

    probs = np.array([[0.98, 0.01, 0.01], [0.97, 0.02, 0.01]])
    plot_reliability(reliability_bins(probs, np.array([0, 1])), tmp_path / "r.png")
    assert Image.open(tmp_path / "r.png").size[0] > 300

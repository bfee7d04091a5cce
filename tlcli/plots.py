"""Pictures for people: training curves and image grids (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from tlcli.rundir import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch for train and val, with the phase boundary marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label=f"val {metric}")
        boundary = [row["epoch"] for row in history if row["phase"] == 2]
        if boundary and boundary[0] > epochs[0]:
            ax.axvline(boundary[0] - 0.5, color="grey", linestyle="--")
            ax.text(boundary[0] - 0.4, ax.get_ylim()[1], " fine-tune", va="top", color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_image_grid(grid, path: str | Path, row_titles: list[str] | None = None,
                    col_titles: list[str] | None = None) -> None:
    """A grid of uint8 images shaped (rows, cols, h, w, 3)."""
    plt = _pyplot()
    rows, cols = grid.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=8)
    _save(fig, path)

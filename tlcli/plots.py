"""Pictures for people: training curves, image grids, confusion matrices and reliability
diagrams (matplotlib, headless)."""

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


def plot_compare_curves(runs: list[tuple[str, list[dict]]], path: str | Path) -> None:
    """Several runs' curves on the same axes, one colour each: validation solid, training dashed,
    each run's start of fine-tuning dotted in its colour."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for i, (label, history) in enumerate(runs):
            colour, epochs = f"C{i}", [row["epoch"] for row in history]
            ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", color=colour, label=f"{label} (val)")
            ax.plot(epochs, [row[metric] for row in history], "--", color=colour, alpha=0.6, label=f"{label} (train)")
            boundary = [row["epoch"] for row in history if row["phase"] == 2]
            if boundary and boundary[0] > epochs[0]:
                ax.axvline(boundary[0] - 0.5, color=colour, linestyle=":")
        ax.set_xlabel("epoch")
        ax.set_title(metric + " (dotted: fine-tuning starts)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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


def plot_confusion_matrix(matrix, class_names: list[str], path: str | Path) -> None:
    """Counts and row-normalised (recall) confusion matrices side by side; rows are true classes."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(matrix)
    n = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    side = min(max(4.0, 0.42 * n + 2.0), 26.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), layout="constrained")
    font = 9 if n <= 12 else 7 if n <= 25 else 5
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised by true class", ".2f")):
        shown = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9) if fmt == "d" else 1.0)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title)
        ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=font)
        ax.set_yticks(range(n), class_names, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 30:  # beyond that the numbers would overlap; the colours still read
            threshold = values.max() / 2 if values.max() else 0.5
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=font,
                            color="white" if values[i, j] > threshold else "black")
    _save(fig, path)


def plot_error_gallery(images, captions: list[str], path: str | Path, title: str = "") -> None:
    """uint8 images (n, h, w, 3) in a grid, each with its caption; a note when there are none."""
    plt = _pyplot()
    n = len(images)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "No misclassified images.", ha="center", va="center", fontsize=12)
        _save(fig, path)
        return
    # Wide images (evaluate --explain: an image beside its heatmap) get wider cells, fewer a row.
    aspect = max(1.0, images[0].shape[1] / max(1, images[0].shape[0]))
    cols = min(4 if aspect < 1.5 else 3, n)
    rows = -(-n // cols)
    # Constrained layout keeps three-line captions and the title clear of the images.
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * aspect * cols, 3.1 * rows), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            ax.set_title(captions[k], fontsize=8, color="darkred")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_reliability(bins: list[tuple], path: str | Path, title: str = "") -> None:
    """A reliability diagram over a confidence histogram, from `calibration.reliability_bins` rows
    (low, high, count, mean confidence, accuracy): accuracy per confidence bin against the
    diagonal, the gap to each bin's mean confidence shaded; below, how many predictions each bin holds."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, height_ratios=(3, 1),
                                      layout="constrained")
    filled = [b for b in bins if b[2]]
    width = bins[0][1] - bins[0][0] if bins else 1.0
    lows = [b[0] for b in filled]
    accuracy = [b[4] for b in filled]
    confidence = [b[3] for b in filled]
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration", zorder=3)
    top.bar(lows, accuracy, width=width, align="edge", color="tab:blue", edgecolor="white", label="accuracy")
    # The gap: from the accuracy up (over-confident) or down into the bar (under-confident) to the
    # bin's mean confidence; hatched, not filled, so it reads over the bar as well as above it.
    top.bar(lows, [c - a for c, a in zip(confidence, accuracy)], bottom=accuracy, width=width, align="edge",
            facecolor="none", edgecolor="tab:red", hatch="//", linewidth=1.2, label="gap to mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    if title:
        top.set_title(title, fontsize=10)
    bottom.bar([b[0] for b in bins], [b[2] for b in bins], width=width, align="edge", color="tab:grey",
               edgecolor="white")
    n = sum(b[2] for b in filled)
    if n:  # the two figures the over/under-confident verdict compares
        mean_confidence = sum(b[2] * b[3] for b in filled) / n
        mean_accuracy = sum(b[2] * b[4] for b in filled) / n
        bottom.axvline(mean_accuracy, color="tab:blue", linestyle="-", label=f"accuracy {mean_accuracy:.2f}")
        bottom.axvline(mean_confidence, color="tab:red", linestyle="--",
                       label=f"mean confidence {mean_confidence:.2f}")
        bottom.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("images")
    bottom.grid(alpha=0.3)
    _save(fig, path)


def plot_label_confusion(per_class: dict, path: str | Path) -> None:
    """A multi-label model's confusion counts: per label, a 2x2 grid of true (rows: has it, has it
    not) against predicted (columns), so TP and TN lie on the diagonal, FN and FP off it.
    `per_class`: {label: {"tp", "fp", "fn", "tn", "f1", ...}} as metrics.json holds it."""
    import numpy as np

    plt = _pyplot()
    n = len(per_class)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.6 * rows), squeeze=False, layout="constrained")
    for ax, (label, s) in zip(axes.flat, per_class.items()):
        counts = np.array([[s["tp"], s["fn"]], [s["fp"], s["tn"]]])
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(counts.max(), 1))
        for (i, j), value in np.ndenumerate(counts):
            name = (("TP", "FN"), ("FP", "TN"))[i][j]
            ax.text(j, i, f"{name}\n{value}", ha="center", va="center", fontsize=9,
                    color="white" if value > counts.max() / 2 else "black")
        ax.set_xticks([0, 1], ["yes", "no"])
        ax.set_yticks([0, 1], ["yes", "no"])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{label}\nF1 {s['f1']:.2f}", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Per label: true (rows) against predicted (columns)")
    _save(fig, path)

"""The tables the commands print."""

import io

from rich.console import Console

from tlcli.tables import predictions_summary


def _row(path, label=None, confidence=None, error=None):
    top = [{"label": label, "confidence": confidence}] if label else []
    return {"path": path, "label": label, "confidence": confidence, "top_k": top, "error": error}


def test_many_predictions_are_summarised_per_class_with_the_first_rows():
    results = ([_row(f"d{i}.jpg", "dots", 0.9 if i % 2 else 0.7) for i in range(20)]
               + [_row(f"s{i}.jpg", "stripes", 0.6) for i in range(9)] + [_row("bad.jpg", error="not an image")])
    console = Console(file=io.StringIO(), width=200)
    for part in predictions_summary(results):
        console.print(part)
    lines = [" ".join(line.replace("│", " ").split()) for line in console.file.getvalue().splitlines()]
    assert "30 predictions" in lines
    assert "dots 20 0.800" in lines and "stripes 9 0.600" in lines and "(could not be read) 1" in lines
    assert "First 5 of 30, and the ones that failed" in lines
    shown = [line.split()[0] for line in lines if line.endswith((".jpg", "not an image")) or ".jpg " in line]
    assert shown == ["d0.jpg", "d1.jpg", "d2.jpg", "d3.jpg", "d4.jpg", "bad.jpg"]
    assert any("--full" in line for line in lines)

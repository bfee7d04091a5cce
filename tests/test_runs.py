"""tlcli.runs and `tlcli runs`: run folders written by hand, file for file as train, evaluate and
export write them, and one real run (the shared `trained_run`) to prove the reader reads real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tlcli.config import TrainConfig
from tlcli.errors import TlcliError
from tlcli.runs import compare_runs, list_runs, read_run

HISTORY_HEADER = "epoch,phase,loss,accuracy,val_loss,val_accuracy,lr,seconds"
HOUR = 3600.0
START = 1_700_000_000.0  # the first fake run's start time; the others start an hour apart


def history_csv(rows: list[tuple]) -> str:
    """(epoch, phase, val_accuracy, seconds) per row, in history.csv's columns."""
    lines = [HISTORY_HEADER]
    for epoch, phase, val_accuracy, seconds in rows:
        lr = 0.001 if phase == 1 else 0.0001
        lines.append(f"{epoch},{phase},1.0,0.5,0.9,{val_accuracy},{lr},{seconds}")
    return "\n".join(lines) + "\n"


def fake_run(project: Path, name: str, status: str, start: float, backbone: str = "tiny", seed: int = 0,
             rows=((1, 1, 0.5, 1.5), (2, 1, 0.75, 1.0), (3, 2, 0.625, 2.0))) -> Path:
    """A run folder as `tlcli train` leaves it: complete, interrupted (Ctrl-C after the epochs
    in `rows`) or failed (died before its first epoch ended: only what training writes first)."""
    run = project / name
    run.mkdir(parents=True)
    config = TrainConfig("/data/flowers", backbone=backbone, weights="none", image_size=32, seed=seed,
                         project=str(project)).to_dict()
    (run / "config.json").write_text(json.dumps({**config, "class_names": ["a", "b"],
                                                 "versions": {"tlcli": "0.1.0"}}, indent=2))
    (run / "labels.txt").write_text("a\nb\n")
    if status != "failed":
        (run / "history.csv").write_text(history_csv(rows))
        (run / "model.keras").write_bytes(b"PK")
    if status == "interrupted":
        (run / "last").mkdir()
        best = max(rows, key=lambda r: r[2])
        (run / "last" / "state.json").write_text(json.dumps({
            "phase": rows[-1][1], "epoch": 1, "best": [best[2], -0.9], "best_epoch": best[0],
            "history": [{"epoch": e, "phase": p, "val_accuracy": v} for e, p, v, _ in rows]}))
        (run / "last" / "classifier.weights.h5").write_bytes(b"")
    if status == "complete":
        (run / "metrics.json").write_text(json.dumps({
            "val_accuracy": 0.75, "val_loss": 0.9, "best_epoch": 2, "n_train": 16, "n_val": 8,
            "seconds": {"phase1": 3.0, "phase2": 2.5, "total": 5.5}, "resumed": False}, indent=2))
        (run / ".complete").write_text("")
    for file in ("config.json", "labels.txt"):
        os.utime(run / file, (start, start))
    return run


@pytest.fixture
def project(tmp_path) -> Path:
    """a (complete, evaluated on test/, exported), b (interrupted), c (failed), an hour apart,
    beside what a project folder holds that is not a run."""
    project = tmp_path / "runs"
    a = fake_run(project, "a", "complete", START)
    fake_run(project, "b", "interrupted", START + HOUR, backbone="mobilenet_v2", rows=((1, 1, 0.875, 4.0),))
    fake_run(project, "c", "failed", START + 2 * HOUR)
    (a / "eval").mkdir()
    (a / "eval" / "metrics.json").write_text(json.dumps({"split": "test", "accuracy": 0.5, "loss": 1.2}))
    (a / "export" / "saved_model").mkdir(parents=True)
    (a / "export" / "saved_model" / "saved_model.pb").write_bytes(b"")
    for file in ("model.tflite", "model_int8.tflite", "labels.txt", "model.json", ".model.abc.tmp.onnx"):
        (a / "export" / file).write_bytes(b"")
    (project / "latest").write_text("a\n")
    (project / "notes").mkdir()  # a user's own folder
    (project / "notes" / "todo.txt").write_text("try xception\n")
    return project


def test_a_complete_an_interrupted_and_a_failed_run(cli, project):
    result = cli(["runs", "--project", project, "--json"])
    assert result.exit_code == 0, result.output
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert list(records) == ["a", "b", "c"]  # oldest first; latest and notes/ are not runs
    a, b, c = records["a"], records["b"], records["c"]
    assert [a["status"], b["status"], c["status"]] == ["complete", "interrupted", "failed"]
    assert b["resume"] == f"tlcli train --resume {project / 'b'}"
    assert a["resume"] is None and c["resume"] is None
    assert c["note"] == "stopped before its first epoch ended"
    assert a["val_accuracy"] == 0.75 and a["seconds"] == 5.5  # metrics.json's
    assert b["val_accuracy"] == 0.875 and b["seconds"] == 4.0  # the checkpoint's best, history.csv's epochs
    assert c["val_accuracy"] is None and c["seconds"] is None
    assert (a["test_accuracy"], a["eval_split"]) == (0.5, "test")
    assert a["exports"] == ["model.tflite", "model_int8.tflite", "saved_model/"]
    assert [r["backbone"] for r in records.values()] == ["tiny", "mobilenet_v2", "tiny"]
    assert a["data_dir"] == "/data/flowers" and a["image_size"] == 32 and a["epochs"] == 3
    assert a["date"].startswith(datetime.fromtimestamp(START).strftime("%Y-%m-%dT%H:%M"))

    table = cli(["runs", "--project", project]).output
    rows = {line.split()[0]: line for line in table.splitlines() if line.split()[:1] in (["a"], ["b"], ["c"])}
    assert "complete" in rows["a"] and "interrupted" in rows["b"] and "failed" in rows["c"]
    assert "0.500" in rows["a"] and "tflite" in rows["a"] and "int8" in table and "/data/flowers" in table
    assert f"b: interrupted; continue with tlcli train --resume {project / 'b'}" in table
    assert "c: failed, stopped before its first epoch ended." in table


def test_sorting_by_any_column(project):
    def names(**kwargs):
        return [r.name for r in list_runs(project, **kwargs)]

    assert names(sort="val_acc") == ["b", "a", "c"]  # best first; c has no figure and goes last
    assert names(sort="val_acc", reverse=True) == ["a", "b", "c"]
    assert names(sort="backbone") == ["b", "a", "c"]  # mobilenet_v2 < tiny; then the date order
    assert names(sort="status", reverse=True) == ["c", "b", "a"]
    assert names(sort="exports") == ["a", "b", "c"]
    assert names(reverse=True) == ["c", "b", "a"]  # newest first
    os.utime(project / "a" / "labels.txt", (START + 3 * HOUR, START + 3 * HOUR))  # rewritten later: start kept
    assert names(sort="date") == ["a", "b", "c"]
    os.utime(project / "a" / "config.json", (START + 3 * HOUR,) * 2)
    os.utime(project / "a" / "labels.txt", (START + 3 * HOUR,) * 2)
    assert names(sort="date") == ["b", "c", "a"] == names()  # oldest first by default


def test_an_unknown_column_or_project_is_a_one_line_error(cli, project, tmp_path):
    result = cli(["runs", "--project", project, "--sort", "val_accuracy"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "Did you mean: val_acc?" in result.output
    result = cli(["runs", "--project", tmp_path / "nowhere"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "nowhere" in result.output


def test_damaged_files_never_break_the_listing(project):
    (project / "c" / "config.json").write_text('{"data_dir": "/da')  # killed mid-copy
    (project / "b" / "history.csv").write_text(HISTORY_HEADER + "\n1,1,1.0,0.5,0.9,0.6,0.001,4.0\n2,1,nan,x\n\xff")
    (project / "a" / "metrics.json").write_text("[1, 2]")
    (project / "a" / "export").rename(project / "a" / "export.old")
    (project / "a" / "export").write_text("not a folder")
    records = {r.name: r for r in list_runs(project)}
    assert records["c"].problems == ["config.json is unreadable"] and records["c"].backbone is None
    assert records["b"].epochs == 1 and records["b"].seconds == 4.0  # the damaged rows left out
    assert records["a"].problems == ["metrics.json is not a JSON object"]
    assert records["a"].status == "complete" and records["a"].exports == []
    assert (records["a"].val_accuracy, records["a"].seconds) == (0.75, 4.5)  # history.csv's best and sum instead


def test_compare_two_runs_side_by_side(cli, project):
    fake_run(project, "d", "complete", START + 3 * HOUR, seed=7, rows=((1, 1, 0.25, 1.0), (2, 2, 0.5, 1.0)))
    result = cli(["runs", "--project", project, "--compare", "a", str(project / "d"), "--json"])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    rows = {(r["section"], r["key"]): r for r in comparison["rows"]}
    assert rows["config", "seed"] == {"section": "config", "key": "seed", "a": "0", "b": "7", "differs": True}
    assert rows["config", "backbone"]["differs"] is False
    assert rows["metrics", "eval.accuracy"] == {"section": "metrics", "key": "eval.accuracy", "a": "0.5", "b": "—",
                                                "differs": True}
    assert rows["metrics", "epochs"]["a"] == "3" and rows["metrics", "epochs"]["b"] == "2"
    png = Path(comparison["png"])
    assert png == project / "compare_a_d.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = cli(["runs", "--project", project, "--compare", "a", "d", "-o", project / "ad.png"]).output
    cells = [line.split("│") for line in table.splitlines()]
    marked = {row[2].strip() for row in cells if len(row) > 3 and "≠" in row[1]}
    assert "seed" in marked and "backbone" not in marked and "eval.accuracy" in marked
    assert f"Curves of both: {project / 'ad.png'}" in table and (project / "ad.png").is_file()


def test_compare_names_an_unknown_run_and_refuses_one_run_twice(project):
    with pytest.raises(TlcliError, match=r"unknown run 'bb'\. Did you mean: b\?"):
        compare_runs("a", "bb", project)
    with pytest.raises(TlcliError, match="two different runs"):
        compare_runs("a", str(project / "a"), project)
    with pytest.raises(TlcliError, match="not a run folder"):
        compare_runs("a", str(project / "notes"), project)
    with pytest.raises(TlcliError, match="folder '.*nowhere' does not exist"):
        compare_runs("a", "b", project, output=project / "nowhere" / "ab.png")


def test_reads_a_real_run(trained_run, image_folder):
    """The shared trained run: every figure as train wrote it, and the hand-made files' format."""
    from tlcli.callbacks import HISTORY_COLUMNS

    assert set(HISTORY_HEADER.split(",")) <= set(HISTORY_COLUMNS)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    record = read_run(trained_run)
    assert (record.status, record.backbone, record.image_size) == ("complete", "tiny", 32)
    assert record.data_dir == str(Path(image_folder).resolve())
    assert record.val_accuracy == metrics["val_accuracy"] and record.seconds == metrics["seconds"]["total"]
    assert record.epochs == 3 and record.problems == [] and record.resume is None  # 2 head + 1 fine-tune epochs


def test_the_tables_fit_80_columns_and_highlight_what_differs(project):
    from rich.console import Console

    from tlcli.runs import Comparison, RunRecord
    from tlcli.tables import compare_table, runs_summary

    config = json.loads((project / "b" / "config.json").read_text())
    (project / "b" / "config.json").write_text(json.dumps({**config, "data_dir": "/home/me/other/images"}))
    console = Console(width=80, record=True)
    for part in runs_summary(list_runs(project), "runs", width=80):
        console.print(part)
    lines = console.export_text().splitlines()
    header = next(line for line in lines if line.startswith("name"))
    assert header.split() == ["name", "date", "data", "backbone", "size", "val_acc", "test_acc", "time", "status",
                              "exports"]  # every header whole
    first = next(line for line in lines if line.startswith("a "))
    assert datetime.fromtimestamp(START).strftime("%Y-%m-%d ") in first  # the day whole: only the paths fold
    assert "interrupted" in next(line for line in lines if line.startswith("b "))

    runs = (RunRecord("a", "runs/a", "complete"), RunRecord("d", "runs/d", "failed"))
    table = compare_table(Comparison(runs, [("config", "seed", "0", "7"), ("config", "backbone", "tiny", "tiny")], None))
    assert [row.style for row in table.rows] == ["bold yellow", None]


def test_listing_and_comparing_never_import_tensorflow(project):
    code = ("import sys; from typer.testing import CliRunner; from tlcli.cli import app; r = CliRunner();"
            f"assert r.invoke(app, ['runs', '--project', {str(project)!r}]).exit_code == 0;"
            f"assert r.invoke(app, ['runs', '--project', {str(project)!r}, '--compare', 'a', 'b']).exit_code == 0;"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'")
    subprocess.run([sys.executable, "-c", code], check=True)

"""Label files (tlcli.labelfile): CSV, JSON and JSON lines of path,label[,split] in place of class
folders, their bad rows in skipped.csv, and train / evaluate / check / export reading them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import make_folder, make_image

# The planted file names its columns as no default does: every command is told them.
COLUMNS = ["--path-column", "fname", "--label-column", "species"]
TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "0",
        "--cache-views", "1", "--batch-size", "8", "--no-calibrate"]


def write_extra(root: Path) -> None:
    """Three images listed only by bad rows, so none of them may reach a split."""
    import random

    (root / "extra").mkdir()
    rng = random.Random(5)
    for name in ("e1.jpg", "e2.jpg", "e3.jpg"):
        make_image("bright", 40, rng).save(root / "extra" / name)


def good_rows(root: Path) -> list[dict]:
    """Every image of the class folders under `root`, the last of each class a test image."""
    rows = []
    for cls in ("bright", "dark", "striped"):
        files = sorted((root / cls).iterdir())
        for i, file in enumerate(files):
            rows.append({"fname": f"data/{cls}/{file.name}", "species": cls,
                         "split": "test" if i == len(files) - 1 else ""})
    rows[1]["fname"] = str(root / "bright" / Path(rows[1]["fname"]).name)  # an absolute path
    rows[2]["fname"] = "./" + rows[2]["fname"]
    return rows


BAD = [  # (row, the reason skipped.csv must give)
    ({"fname": "data/bright/nope.jpg", "species": "bright", "split": ""}, "file not found"),
    ({"fname": "data/extra/e1.jpg", "species": " ", "split": ""}, "empty label"),
    ({"fname": "data/extra/e2.jpg", "species": "bright", "split": ""}, "listed 2 times with different labels: bright; dark"),
    ({"fname": "data/extra/e2.jpg", "species": "dark", "split": ""}, "listed 2 times with different labels: bright; dark"),
    ({"fname": "data/extra/e3.jpg", "species": "dark", "split": "holdout"}, "unknown split 'holdout'"),
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """labels.csv over 3 classes x 6 images (18 good rows, 3 of them test), the BAD rows among
    them and one good row repeated; and its folder."""
    base = tmp_path_factory.mktemp("labelfile")
    root = make_folder(base / "data", per_class=6)
    write_extra(root)
    rows = good_rows(root)
    rows = rows[:4] + [bad for bad, _ in BAD[:2]] + rows[4:10] + [rows[5]] + [bad for bad, _ in BAD[2:]] + rows[10:]
    write_csv(base / "labels.csv", ["fname", "species", "split"], rows)
    return base / "labels.csv", root


def write_csv(path: Path, header: list[str], rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def skipped_reasons(skipped) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path, reason in skipped:
        found.setdefault(Path(path).name, []).append(reason)
    return found


def assert_planted_skips(reasons: dict[str, list[str]]) -> None:
    assert sorted(reasons) == ["e1.jpg", "e2.jpg", "e3.jpg", "nope.jpg"]
    for row, why in BAD:
        assert any(r.startswith(why) for r in reasons[Path(row["fname"]).name]), (row, reasons)
    assert len(reasons["e2.jpg"]) == 2  # each conflicting row gets its line


# ---------------------------------------------------------------- reading


def test_planted_bad_rows_are_left_out_with_reasons(planted):
    from tlcli.data import find_folder
    from tlcli.labelfile import Columns

    labels, root = planted
    folder = find_folder(labels, val_split=0.2, seed=0, columns=Columns("fname", "species"))
    assert_planted_skips(skipped_reasons(folder.skipped))
    listed = folder.train.paths + folder.val.paths + folder.test.paths
    assert sorted(listed) == sorted(str(p) for cls in ("bright", "dark", "striped") for p in (root / cls).iterdir())
    assert sorted(Path(p).name for p in folder.test.paths) == ["bright_5.png", "dark_5.png", "striped_5.png"]
    assert folder.drawn_from == "train" and len(folder.val) == 3  # stratified: one of each class's 5
    assert any("repeat an earlier row" in note for note in folder.warnings)


def test_json_and_jsonl_read_as_the_csv_does(planted, tmp_path):
    from tlcli.labelfile import Columns, read_label_file

    labels, _ = planted
    columns = Columns("fname", "species")
    with open(labels, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    (labels.parent / "labels.json").write_text(json.dumps(records))
    jsonl = [json.dumps(r) for r in records[:3]] + ["[1, 2]", "not json"] + [json.dumps(r) for r in records[3:]]
    (labels.parent / "labels.jsonl").write_text("\n".join(jsonl) + "\n")

    def content(table):
        return [(r.path, r.labels, r.split) for r in table.rows], [(p, why.split(" (")[0]) for p, why in table.skipped]

    expected = content(read_label_file(labels, columns))
    assert len(expected[0]) == 18
    assert content(read_label_file(labels.parent / "labels.json", columns)) == expected
    rows, skipped = content(read_label_file(labels.parent / "labels.jsonl", columns))
    assert rows == expected[0]
    assert skipped == [("labels.jsonl, line 4", "not a JSON object"), ("labels.jsonl, line 5", "not a JSON object")] \
        + expected[1]


def test_an_explicit_split_column_is_respected(tmp_path):
    from tlcli.data import find_folder

    root = make_folder(tmp_path / "data", per_class=4, classes=("bright", "dark"))
    names = {"Train": [], "validation": [], "VAL": [], "test": []}
    rows = []
    for cls in ("bright", "dark"):
        for file, split in zip(sorted((root / cls).iterdir()), names):
            rows.append({"File": f"data/{cls}/{file.name}", "Category": cls, "Subset": split})
            names[split].append(str(file))
    folder = find_folder(write_csv(tmp_path / "l.csv", ["File", "Category", "Subset"], rows), val_split=0.5)
    assert folder.class_names == ["bright", "dark"] and folder.drawn_from is None
    assert sorted(folder.train.paths) == sorted(names["Train"])
    assert sorted(folder.val.paths) == sorted(names["validation"] + names["VAL"])
    assert sorted(folder.test.paths) == sorted(names["test"])


def test_columns_are_found_by_name_or_given(tmp_path):
    from tlcli.data import find_folder
    from tlcli.errors import TlcliError
    from tlcli.labelfile import Columns

    root = make_folder(tmp_path / "data", per_class=2, classes=("bright", "dark"))
    files = [(str(p), p.parent.name) for p in sorted(root.rglob("*.*"))]
    semicolons = write_csv(tmp_path / "semi.csv", ["notes", "Image", "Class"],
                           [{"notes": "a,b", "Image": p, "Class": c} for p, c in files], delimiter=";")
    found = find_folder(semicolons, val_split=0.5)
    assert found.class_names == ["bright", "dark"] and len(found.train) + len(found.val) == 4
    odd = write_csv(tmp_path / "odd.csv", ["fname", "kind", "label"],
                    [{"fname": p, "kind": c, "label": "x"} for p, c in files])
    with pytest.raises(TlcliError, match=r"odd.csv has no path column \(columns: fname, kind, label\)"):
        find_folder(odd)
    given = find_folder(odd, val_split=0.5, columns=Columns(path="FNAME", label="kind"))
    assert given.class_names == ["bright", "dark"]  # "label" is all x: the named column was used
    with pytest.raises(TlcliError, match="unknown --label-column 'knd'. Did you mean: kind"):
        find_folder(odd, columns=Columns(path="fname", label="knd"))


@pytest.mark.parametrize("name, content, message", [
    ("odd.csv", "fname,kind\na.jpg,x\n", "odd.csv has no path column (columns: fname, kind)"),
    ("bad.json", '[{"path": "a.jpg"', "bad.json is not valid JSON"),
    ("obj.json", '{"path": "a.jpg"}', "obj.json must hold a list of objects"),
    ("empty.csv", "\n", "empty.csv is empty"),
    ("none.csv", "path,label\nnope.jpg,cat\n", "no usable row in"),
])
def test_a_bad_label_file_is_a_one_line_error(cli, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    result = cli(["check", tmp_path / name, "--features", "none", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_unknown_column_flag_is_a_one_line_error(cli, planted, tmp_path):
    labels, _ = planted
    result = cli(["check", labels, "--features", "none", "-o", tmp_path / "out", "--path-column", "fname",
                  "--label-column", "specis"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "unknown --label-column 'specis'. Did you mean: species" in result.output


# ---------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def listed_run(planted, tmp_path_factory):
    from typer.testing import CliRunner

    from tlcli.cli import app

    labels, _ = planted
    project = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["train", str(labels), *COLUMNS, *TINY, "--project", str(project), "--json"])
    assert result.exit_code == 0, result.output
    return project / "train", json.loads(result.stdout)


def test_train_on_a_label_file_lists_its_bad_rows_in_skipped_csv(listed_run):
    run, metrics = listed_run
    with open(run / "skipped.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert_planted_skips(skipped_reasons((r["path"], r["reason"]) for r in rows))
    assert metrics["n_skipped"] == len(BAD) and (metrics["n_train"], metrics["n_val"]) == (12, 3)


def test_evaluate_takes_the_label_files_test_rows(cli, planted, listed_run, tmp_path):
    labels, _ = planted
    run, metrics = listed_run
    result = cli(["evaluate", labels, "--model", run, "-o", tmp_path / "eval"])  # the run's columns
    assert result.exit_code == 0, result.output
    assert "evaluating the test rows of" in result.output
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["split"] == "test" and report["n_images"] == 3 and report["n_skipped"] == len(BAD)
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        assert sorted(Path(r["path"]).name for r in csv.DictReader(f)) == ["bright_5.png", "dark_5.png", "striped_5.png"]
    result = cli(["evaluate", labels, "--model", run, "-o", tmp_path / "val", "--split", "val", *COLUMNS, "--json", "-q"])
    assert json.loads(result.stdout)["n_images"] == metrics["n_val"]


def test_export_finds_the_runs_label_file(listed_run):
    from tlcli.export import load_run_data
    from tlcli.rundir import resolve_model

    run, metrics = listed_run
    data = load_run_data(resolve_model(str(run)), json.loads((run / "config.json").read_text()), 32)
    assert (len(data.train), len(data.val)) == (metrics["n_train"], metrics["n_val"])


# ---------------------------------------------------------------- multi-label files


def multilabel_file(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """labels.csv of (file, labels cell, split) rows over images written beside it."""
    import random

    rng = random.Random(0)
    for file, _, _ in rows:
        if not (tmp_path / file).exists() and file != "gone.png":
            make_image("dark", 16, rng).save(tmp_path / file)
    return write_csv(tmp_path / "labels.csv", ["path", "labels", "split"],
                     [{"path": f, "labels": cell, "split": split} for f, cell, split in rows])


def test_a_delimiter_splits_label_cells_and_turns_multi_label_on(tmp_path):
    from tlcli.labelfile import read_label_file

    labels = multilabel_file(tmp_path, [("a.png", "beach; sunset", ""), ("b.png", "sunset;;sunset", ""),
                                        ("c.png", " ; ", ""), ("gone.png", "beach", "")])
    table = read_label_file(labels, label_delimiter=";")
    assert table.multi_label
    assert {Path(r.path).name: r.labels for r in table.rows} == {"a.png": ("beach", "sunset"), "b.png": ("sunset",)}
    assert sorted((Path(p).name, why.split(" (")[0]) for p, why in table.skipped) == [
        ("c.png", "empty label"), ("gone.png", "file not found")]
    # Without the delimiter the cell is one label, as it always was; with it but one label a
    # cell, the file stays single-label.
    plain = read_label_file(labels)
    assert not plain.multi_label and plain.rows[0].labels == ("beach; sunset",)
    single = multilabel_file(tmp_path, [("a.png", "beach", ""), ("b.png", "sunset", "")])
    assert not read_label_file(single, label_delimiter=";").multi_label


def test_multi_label_merges_the_rows_of_one_image_but_not_across_splits(tmp_path):
    from tlcli.labelfile import read_label_file

    labels = multilabel_file(tmp_path, [("a.png", "beach", "train"), ("b.png", "sunset", "train"),
                                        ("a.png", "sunset", "train"), ("a.png", "beach", "train"),
                                        ("c.png", "beach", "train"), ("c.png", "sunset", "val")])
    table = read_label_file(labels, multi_label=True)
    assert table.multi_label
    assert [(Path(r.path).name, r.labels) for r in table.rows] == [("a.png", ("beach", "sunset")), ("b.png", ("sunset",))]
    assert [why.split(" (")[0] for p, why in table.skipped] == ["listed 2 times with different splits: train, val"] * 2
    assert any("several rows" in note for note in table.notes)
    # Single-label: the same rows of a.png are a conflict, as before.
    assert "a.png" in {Path(p).name for p, _ in read_label_file(labels).skipped}


def test_a_json_list_of_labels_is_a_multi_label_row(tmp_path):
    from tlcli.labelfile import read_label_file

    multilabel_file(tmp_path, [("a.png", "x", ""), ("b.png", "x", "")])
    (tmp_path / "labels.json").write_text(json.dumps([{"path": "a.png", "labels": ["beach", "sunset"]},
                                                      {"path": "b.png", "labels": []}]))
    table = read_label_file(tmp_path / "labels.json")
    assert table.multi_label and table.rows[0].labels == ("beach", "sunset")
    assert [why.split(" (")[0] for _, why in table.skipped] == ["empty label"]


def test_labels_that_look_joined_get_a_hint_without_a_delimiter(tmp_path):
    from tlcli.labelfile import read_label_file

    labels = multilabel_file(tmp_path, [("a.png", "beach;sunset", ""), ("b.png", "sunset", "")])
    assert any("--label-delimiter ';'" in note for note in read_label_file(labels, multi_label=True).notes)
    assert not any("delimiter" in note for note in read_label_file(labels, label_delimiter=";").notes)

"""Run folders are never overwritten, files are written atomically, latest points to finished runs."""

import json

import pytest

from tlcli.errors import TlcliError
from tlcli.rundir import atomic_path, create_run_dir, latest_run, mark_complete, resolve_model, write_json


def test_create_run_dir_increments_and_never_reuses(tmp_path):
    names = [create_run_dir(tmp_path, "train").name for _ in range(3)]
    assert names == ["train", "train2", "train3"]
    with pytest.raises(TlcliError):
        create_run_dir(tmp_path, "../escape")


def test_atomic_path_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_latest_run_only_sees_complete_runs(tmp_path):
    with pytest.raises(TlcliError, match="no finished run"):
        latest_run(tmp_path)
    first = create_run_dir(tmp_path, "train")
    mark_complete(first)
    create_run_dir(tmp_path, "train")  # unfinished
    assert latest_run(tmp_path) == first


def test_resolve_model_rules(trained_run, tmp_path):
    ref = resolve_model(trained_run)
    assert ref.kind == "keras" and ref.path.name == "model.keras" and ref.image_size == 32
    assert ref.labels == ["bright", "dark", "striped"]
    assert resolve_model(trained_run / "model.keras").run_dir == trained_run
    with pytest.raises(TlcliError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TlcliError, match="not a model"):
        resolve_model(tmp_path / "notes.txt")
    with pytest.raises(TlcliError, match="no model.keras"):
        resolve_model(tmp_path)


def test_write_csv_survives_file_names_that_are_not_utf8(tmp_path):
    from tlcli.rundir import write_csv

    name = "caf\udce9.jpg"  # how Python hands over a Latin-1 byte in a file name
    write_csv(tmp_path / "s.csv", ["path"], [[name]])
    assert "caf\\udce9.jpg" in (tmp_path / "s.csv").read_text()  # escaped, not a crash

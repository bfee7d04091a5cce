"""Discovery, splitting and skipping (decoding one file is in test_images.py)."""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder
from tlcli.data import class_weights, detect_layout, find_images, load_folder, stratified_split
from tlcli.errors import TlcliError


def test_find_images_recursive_sorted_and_skips_hidden(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.jpg", "a/deep/y.PNG", "a/.hidden.jpg", "a/notes.txt", "a/z.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / ".git").mkdir()
    (tmp_path / "a" / ".git" / "w.jpg").write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path / "a")]
    assert found == ["a/x.jpg", "a/z.webp", "a/deep/y.PNG"]


def test_find_images_follows_symlink_loops_once(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "img.png").write_bytes(b"")
    os.symlink(tmp_path / "c", tmp_path / "c" / "loop")
    assert [p.name for p in find_images(tmp_path / "c")] == ["img.png"]


def test_detect_layout(tmp_path):
    make_folder(tmp_path / "flat", per_class=1)
    assert detect_layout(tmp_path / "flat") == {"all": tmp_path / "flat"}
    make_folder(tmp_path / "split" / "train", per_class=1)
    make_folder(tmp_path / "split" / "validation", per_class=1)
    assert detect_layout(tmp_path / "split") == {"train": tmp_path / "split" / "train",
                                                 "val": tmp_path / "split" / "validation"}
    with pytest.raises(TlcliError):
        detect_layout(tmp_path / "missing")


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    labels = [0] * 10 + [1] * 20
    train, val = stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(30))
    assert [labels[i] for i in val].count(0) == 2 and [labels[i] for i in val].count(1) == 4
    assert stratified_split(labels, 0.2, seed=3) == (train, val)
    assert stratified_split(labels, 0.2, seed=4) != (train, val)


def test_load_folder_skips_unreadable_and_drops_empty_classes(tmp_path):
    root = make_folder(tmp_path / "d", per_class=5, size=16)
    (root / "bright" / "broken.jpg").write_bytes(b"nope")
    (root / "empty").mkdir()
    (root / "only_bad").mkdir()
    (root / "only_bad" / "x.png").write_bytes(b"")
    folder = load_folder(root, 16, val_split=0.2, seed=0)
    assert folder.class_names == ["bright", "dark", "striped"]
    assert len(folder.train) + len(folder.val) == 15
    assert len(folder.val) == 3  # one per class
    assert sorted(Path(p).name for p, _ in folder.skipped) == ["broken.jpg", "x.png"]
    assert any("empty" in w for w in folder.warnings) and any("only_bad" in w for w in folder.warnings)
    assert folder.train.images.shape == (12, 16, 16, 3)


def test_load_folder_train_val_test_layout(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=4, size=16)
    make_folder(tmp_path / "d" / "val", per_class=2, size=16, seed=1)
    make_folder(tmp_path / "d" / "test", per_class=1, size=16, seed=2)
    folder = load_folder(tmp_path / "d", 16)
    assert (len(folder.train), len(folder.val), len(folder.test)) == (12, 6, 3)
    assert folder.val.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_load_folder_needs_two_classes(tmp_path):
    make_folder(tmp_path / "d", per_class=3, size=16, classes=("only",))
    with pytest.raises(TlcliError, match="at least 2 classes"):
        load_folder(tmp_path / "d", 16)


def test_class_weights_balance_uneven_classes():
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights[0] == pytest.approx(4 / 6) and weights[1] == pytest.approx(2.0)
    assert 3 * weights[0] == pytest.approx(1 * weights[1])

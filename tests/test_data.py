"""Discovery, splitting and skipping (decoding one file is in test_images.py)."""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder
from test_fs import copy_to_ram
from tlcli.data import (class_weights, detect_layout, expand_path, find_folder, find_images, load_folder,
                        stratified_split)
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


def test_find_folder_and_load_folder_on_a_url_match_the_local_copy(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=4, size=16)
    make_folder(tmp_path / "d" / "validation", per_class=2, size=16, seed=1)
    (tmp_path / "d" / "stray.jpg").write_bytes(b"x")
    (tmp_path / "d" / "train" / "dark" / "broken.png").write_bytes(b"nope")
    url = copy_to_ram(tmp_path / "d")
    local, remote = find_folder(tmp_path / "d"), find_folder(url)
    assert remote.train.paths[0].startswith(f"{url}/train/")  # not mangled into ram:/…
    for split in ("train", "val"):
        assert [p[len(url):] for p in getattr(remote, split).paths] == \
               [p[len(str(tmp_path / "d")):] for p in getattr(local, split).paths]
        assert getattr(remote, split).labels.tolist() == getattr(local, split).labels.tolist()
    assert remote.class_names == local.class_names and remote.warnings == [w.replace(str(tmp_path / "d"), url)
                                                                         for w in local.warnings]
    loaded_local, loaded_remote = load_folder(tmp_path / "d", 16), load_folder(url, 16)
    assert (loaded_remote.train.images == loaded_local.train.images).all()
    assert (loaded_remote.val.images == loaded_local.val.images).all()
    assert loaded_remote.skipped == [(f"{url}/train/dark/broken.png", "not an image Pillow can read (a text file)")]
    assert detect_layout(url) == {"train": f"{url}/train", "val": f"{url}/validation"}


def test_expand_path_names_the_same_images_locally_and_on_a_url(tmp_path):
    local = make_folder(tmp_path / "d", per_class=3, size=8)
    (local / "bright" / "notes.txt").write_text("hi")
    (local / "empty").mkdir()
    url = copy_to_ram(local)
    for arg, n, problem in (("", 9, None), ("/dark", 3, None), ("/*/*_1.png", 3, None), ("/*", 9, None),
                            ("/dark/dark_0.jpg", 1, None), ("/bright/notes.txt", 1, None),
                            ("/empty", 0, "folder has no image files"), ("/nothing.jpg", 0, "file not found"),
                            ("/*/*.gif", 0, "no image file matches this pattern")):
        local_paths, local_problem = expand_path(f"{local}{arg}")
        url_paths, url_problem = expand_path(f"{url}{arg}")
        assert (len(url_paths), url_problem) == (len(local_paths), local_problem) == (n, problem), arg
        assert [p[len(url):] for p in url_paths] == [p[len(str(local)):] for p in local_paths], arg


def test_a_data_dir_out_of_reach_is_a_one_line_error(tmp_path, monkeypatch):
    import tensorflow as tf

    url = copy_to_ram(make_folder(tmp_path / "d", per_class=2, size=8))

    def unavailable(path):
        raise tf.errors.UnavailableError(None, None, "Could not resolve host")

    monkeypatch.setattr(tf.io.gfile, "listdir", unavailable)
    with pytest.raises(TlcliError, match=f"^cannot read {url}: Could not resolve host$"):
        find_folder(url)


# ---------------------------------------------------------------- multi-label label files


def test_a_multi_label_file_gives_multi_hot_labels_in_sorted_class_order(shapes_csv):
    import csv

    with open(shapes_csv, newline="") as f:
        listed = {str((shapes_csv.parent / r["path"]).resolve()): set(r["labels"].split(";")) for r in csv.DictReader(f)}
    folder = find_folder(shapes_csv, val_split=0.2, seed=0, label_delimiter=";")
    assert folder.multi_label and folder.class_names == ["circle", "cross", "square", "triangle"]
    assert folder.train.labels.dtype == np.float32 and folder.train.labels.shape == (len(folder.train), 4)
    for split in (folder.train, folder.val):
        for path, row in zip(split.paths, split.labels):
            assert {folder.class_names[c] for c in np.flatnonzero(row)} == listed[path]
    assert sorted(folder.train.paths + folder.val.paths) == sorted(listed)
    again = find_folder(shapes_csv, val_split=0.2, seed=0, label_delimiter=";")
    assert again.val.paths == folder.val.paths
    assert find_folder(shapes_csv, val_split=0.2, seed=1, label_delimiter=";").val.paths != folder.val.paths


def test_a_multi_label_split_gives_a_rare_label_its_share_of_val(tmp_path):
    # 20 images, all "common"; 5 of them also "rare". Split on the rarest label, val takes one
    # of the 5 rare ones and 3 of the other 15 on every seed; drawn at random it would often
    # take none or two.
    from conftest import make_image
    import random

    rng = random.Random(0)
    (tmp_path / "i").mkdir()
    rows = []
    for i in range(20):
        make_image("dark", 8, rng).save(tmp_path / "i" / f"{i}.png")
        rows.append(f"i/{i}.png,common{';rare' if i % 4 == 0 else ''}\n")
    (tmp_path / "labels.csv").write_text("path,labels\n" + "".join(rows))
    for seed in range(8):
        folder = find_folder(tmp_path / "labels.csv", val_split=0.2, seed=seed, label_delimiter=";")
        assert folder.class_names == ["common", "rare"]
        assert folder.val.labels.sum(0).tolist() == [4, 1], seed


def test_multi_label_needs_a_label_file(image_folder):
    for flags in ({"multi_label": True}, {"label_delimiter": ";"}):
        with pytest.raises(TlcliError, match="need a label file"):
            find_folder(image_folder, **flags)


def test_a_multi_label_class_left_without_training_images_loses_its_column_not_its_images():
    from tlcli.data import ImageFolder, Split, drop_unusable

    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    folder = ImageFolder(["a", "b", "c"], Split(["x", "y", "z"], labels), Split(["v"], np.array([[0, 1, 1]], np.float32)),
                         multi_label=True)
    kept = drop_unusable(folder, {"x": "unreadable"})  # the only training image of c
    assert kept.class_names == ["a", "b"] and any("'c'" in w for w in kept.warnings)
    assert kept.train.paths == ["y", "z"] and kept.train.labels.tolist() == [[1, 1], [0, 1]]
    assert kept.val.labels.tolist() == [[0, 1]]


def test_make_dataset_carries_multi_hot_rows(shapes_csv):
    from tlcli.data import make_dataset

    folder = find_folder(shapes_csv, val_split=0.2, seed=0, label_delimiter=";")
    batches = list(make_dataset(folder.val, 4, batch_size=16, shuffle=False, size=16).as_numpy_iterator())
    assert batches[0][0].shape == (16, 16, 16, 3)
    assert np.concatenate([y for _, y in batches]).tolist() == folder.val.labels.tolist()

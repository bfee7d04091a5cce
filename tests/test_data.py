"""Discovery, decoding, splitting and skipping."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder
from tlcli.data import (ImageError, class_weights, detect_layout, find_images, load_folder, load_image,
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


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "RGB"])
def test_load_image_any_mode_gives_rgb_uint8(tmp_path, mode):
    image = Image.new(mode, (20, 10))
    path = tmp_path / ("img.tiff" if mode in ("I;16", "I", "F", "CMYK") else "img.png")
    image.save(path)
    array = load_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8


def test_load_image_16_bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert load_image(tmp_path / "white16.png", 8).min() == 255


def test_load_image_transparent_becomes_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 8).min() == 255


def test_load_image_applies_exif_orientation(tmp_path):
    # A 20x10 image marked "rotate 90" must come out as 10 wide x 20 high before the resize:
    # put a red left half and check where red ends up after orientation.
    array = np.zeros((10, 20, 3), np.uint8)
    array[:, :10] = (255, 0, 0)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 CW: the left half becomes the top half
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg", 20)
    assert out[2, 10, 0] > 200 and out[17, 10, 0] < 60


@pytest.mark.parametrize("content", [b"", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_load_image_unreadable_raises_image_error(tmp_path, content):
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(ImageError):
        load_image(tmp_path / "bad.jpg", 16)


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

"""Decoding single image files: modes, bit depth, transparency, orientation, unreadable files."""

import numpy as np
import pytest
from PIL import Image

from test_fs import copy_to_ram
from tlcli.images import ImageError, load_image


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


def test_load_image_reads_a_url_as_it_reads_the_local_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), np.uint8)).save(tmp_path / "ok.png")
    png = (tmp_path / "ok.png").read_bytes()
    for name, content in (("html.jpg", b"<html>not an image</html>"), ("cut.png", png[:60]), ("empty.jpg", b""),
                          ("text.png", b"hello"), ("pdf.jpg", b"%PDF-1.4\n")):
        (tmp_path / name).write_bytes(content)
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "folder.jpg" / "inside.png").write_bytes(png)
    url = copy_to_ram(tmp_path)
    assert (load_image(f"{url}/ok.png", 16) == load_image(tmp_path / "ok.png", 16)).all()
    for name in ("html.jpg", "cut.png", "empty.jpg", "text.png", "pdf.jpg", "folder.jpg", "missing.jpg"):
        with pytest.raises(ImageError) as local:
            load_image(tmp_path / name, 16)
        with pytest.raises(ImageError) as remote:
            load_image(f"{url}/{name}", 16)
        assert str(remote.value) == str(local.value), name


def test_a_url_image_over_pillows_bomb_limit_is_read_again_from_the_start(tmp_path, monkeypatch):
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "big.png")
    url = copy_to_ram(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(f"{url}/big.png", 16).max() == 9

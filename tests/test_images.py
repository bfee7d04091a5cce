"""Decoding single image files: modes, bit depth, transparency, orientation, unreadable files."""

import numpy as np
import pytest
from PIL import Image

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

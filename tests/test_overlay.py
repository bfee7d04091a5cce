"""tlcli.overlay: originals shown upright, heatmaps placed where their cells look, contact sheets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def test_original_is_shown_upright_and_capped(tmp_path):
    from tlcli.overlay import load_original

    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((500, 2000, 3), np.uint8)).save(wide)
    assert load_original(wide).shape == (256, 1024, 3)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned by 90 degrees
    Image.fromarray(np.zeros((30, 60, 3), np.uint8)).save(turned, exif=exif)
    assert load_original(turned).shape == (60, 30, 3)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((20, 10), np.uint8), "L").save(grey)
    assert load_original(grey).shape == (20, 10, 3)


def test_upsample_places_the_cells_where_the_span_says():
    from tlcli.overlay import upsample

    cam = np.zeros((4, 4), np.float32)
    cam[1, 1] = 1.0
    plain = upsample(cam, 40, 40)
    # The image's edges half a cell before the map's top and after its left: cells sit 5 px lower
    # and 5 px further left than in a plain stretch.
    moved = upsample(cam, 40, 40, ((-0.5, 3.5), (0.5, 4.5)))
    py, px = np.unravel_index(np.argmax(plain), plain.shape)
    my, mx = np.unravel_index(np.argmax(moved), moved.shape)
    assert (py, px) in ((14, 14), (14, 15), (15, 14), (15, 15))
    assert abs((my - py) - 5) <= 1 and abs((mx - px) + 5) <= 1
    # Moving the map shifts the peak without changing its height, and the interpolation leaves
    # no negative ring around it (a cubic one would).
    assert moved.max() == pytest.approx(plain.max()) and moved.min() == 0.0


def test_contact_sheet_is_a_grid_with_captions(tmp_path):
    from tlcli.overlay import contact_sheet

    tiles = [(np.full((20, 30, 3), k, np.uint8), [f"img{k}.png", "a  50.0%"]) for k in range(3)]
    contact_sheet(tiles, tmp_path / "sheet.png", note="first 3 of 9")
    assert Image.open(tmp_path / "sheet.png").size[0] > 3 * 240

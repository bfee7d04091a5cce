"""The augmentation stage: changes pixels in training only, keeps shapes, previews."""

import math

import numpy as np
import pytest

from tlcli.augment import build_augmenter, preview, write_preview
from tlcli.config import LIMITS, AugmentConfig
from tlcli.errors import TlcliError

NONE = dict(rotation=0, shift=0, shear=0, zoom=0, flip=False)  # every transform off


def _images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")


def test_augmenter_changes_pixels_and_keeps_shape_in_training():
    images = _images()
    out = np.asarray(build_augmenter(AugmentConfig(), 32, seed=1)(images, training=True))
    assert out.shape == images.shape
    assert not np.allclose(out, images)


def test_augmenter_is_identity_at_inference_and_when_disabled():
    images = _images()
    assert np.allclose(build_augmenter(AugmentConfig(), 32)(images, training=False), images)
    off = build_augmenter(AugmentConfig(enabled=False), 32)
    assert np.allclose(off(images, training=True), images)


def test_each_transform_alone_changes_pixels():
    images = _images()
    for field, value in (("rotation", 30.0), ("shift", 0.2), ("shear", 20.0), ("zoom", 0.3), ("flip", True)):
        config = AugmentConfig(**{**NONE, field: value})
        assert len(build_augmenter(config, 32).layers) == 2, field  # input + that one stage
        changed = [not np.allclose(build_augmenter(config, 32, seed=s)(images, training=True), images) for s in range(3)]
        assert any(changed), field


def test_preview_grid_shape_and_file(image_folder, tmp_path):
    grid = preview(_images().astype("uint8"), AugmentConfig(), variants=3)
    assert grid.shape == (4, 4, 32, 32, 3) and grid.dtype == np.uint8
    path = write_preview(image_folder, tmp_path / "out" / "aug.png", AugmentConfig(), samples=3, variants=2, size=32)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("field", ["rotation", "shift", "shear", "zoom"])
def test_the_largest_value_each_flag_accepts_works_in_keras(field):
    """The ranges in tlcli.config are Keras's: the top of each range builds and runs."""
    largest = LIMITS[field].high
    config = AugmentConfig(**{**NONE, field: largest})
    out = np.asarray(build_augmenter(config, 32, seed=1)(_images(), training=True))
    assert out.shape == (4, 32, 32, 3) and np.isfinite(out).all()


def test_shear_beyond_45_degrees_is_what_keras_refuses():
    """Why --shear stops at 45: RandomShear takes tan(angle) up to 1."""
    import keras

    keras.layers.RandomShear(math.tan(math.radians(45)))
    with pytest.raises(ValueError):
        keras.layers.RandomShear(math.tan(math.radians(46)))
    with pytest.raises(TlcliError, match="--shear"):
        build_augmenter(AugmentConfig(shear=46), 32)

"""The registry: metadata, lookup, building every entry, weight-file handling."""

import os

import pytest

from conftest import KERAS_HOME, requires_flowers, use_keras_home
from tlcli.backbones import BACKBONES, build_backbone, get_spec
from tlcli.errors import TlcliError

KERAS_APPLICATIONS = {
    "xception", "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2",
    "resnet152_v2", "inception_v3", "inception_resnet_v2", "mobilenet", "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "densenet121", "densenet169", "densenet201", "nasnet_mobile", "nasnet_large",
    *(f"efficientnet_b{i}" for i in range(8)), *(f"efficientnetv2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")),
    *(f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")),
}


def test_registry_covers_every_keras_application():
    assert KERAS_APPLICATIONS <= set(BACKBONES)


def test_registry_metadata_is_consistent():
    for name, spec in BACKBONES.items():
        assert spec.preprocess in ("tf", "torch", "caffe", "none"), name
        assert spec.min_size <= spec.default_size, name
        assert 0 < spec.unfreeze <= 1, name
        assert ":" in spec.constructor, name


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(TlcliError, match="Did you mean: .*efficientnet_b0"):
        get_spec("efficientnet-b0")


def test_below_minimum_size_is_an_error():
    with pytest.raises(TlcliError, match="minimum"):
        build_backbone("xception", "none", 64)


def test_weights_path_must_exist(tmp_path):
    with pytest.raises(TlcliError, match="no such file"):
        build_backbone("tiny", str(tmp_path / "missing.weights.h5"), 32)


def test_weights_path_loads_a_matching_file(tmp_path):
    source = build_backbone("tiny", "none", 32)
    source.save_weights(tmp_path / "tiny.weights.h5")
    target = build_backbone("tiny", str(tmp_path / "tiny.weights.h5"), 32)
    for a, b in zip(source.get_weights(), target.get_weights()):
        assert (a == b).all()


def test_weights_path_that_does_not_fit_is_an_error(tmp_path):
    build_backbone("mobilenet", "none", 32).save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(TlcliError, match="does not fit"):
        build_backbone("tiny", str(tmp_path / "other.weights.h5"), 32)


def test_missing_imagenet_weights_name_the_file_and_cache(tmp_path, monkeypatch):
    use_keras_home(monkeypatch, tmp_path)  # an empty cache, and no network here
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x/mobilenet_1_0_224_tf_no_top.h5: None -- offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet.file_utils.get_file", offline)
    with pytest.raises(TlcliError) as error:
        build_backbone("mobilenet", "imagenet", 224)
    assert "mobilenet_1_0_224_tf_no_top.h5" in str(error.value)
    assert os.path.join(str(tmp_path), "models") in str(error.value)


@requires_flowers
def test_imagenet_weights_load_offline_at_any_size(monkeypatch):
    """The 224 px MobileNetV2 file serves every input size (weights do not depend on it)."""
    use_keras_home(monkeypatch, KERAS_HOME)
    a = build_backbone("mobilenet_v2", "imagenet", 96)
    b = build_backbone("mobilenet_v2", "imagenet", 224)
    assert all((x == y).all() for x, y in zip(a.get_weights(), b.get_weights()))
    assert abs(a.get_weights()[0]).sum() > 0

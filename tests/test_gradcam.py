"""tlcli.gradcam: the feature map Grad-CAM explains, where its cells look, and a heatmap for every
backbone. (Heatmaps that point at the evidence are tests/test_explain.py's.)"""

from __future__ import annotations

import numpy as np
import pytest


def test_feature_layer_is_the_backbone_output_or_the_map_before_its_pooling():
    from tlcli.backbones import build_backbone
    from tlcli.gradcam import feature_layer

    operation, tensor, trailing = feature_layer(build_backbone("tiny", "none", 32))
    assert operation.name == "relu2" and trailing == [] and tuple(tensor.shape[1:]) == (4, 4, 64)
    # VGG ends in max pooling: the last convolution's map has twice the resolution.
    operation, tensor, trailing = feature_layer(build_backbone("vgg16", "none", 64))
    assert operation.name == "block5_conv3" and [l.name for l in trailing] == ["block5_pool"]
    assert tuple(tensor.shape[1:]) == (4, 4, 512)


def _all_backbones():
    from tlcli.backbones import BACKBONES

    return sorted(BACKBONES)


@pytest.mark.slow
@pytest.mark.parametrize("name", _all_backbones())
def test_every_backbone_gives_a_heatmap(name):
    """Every registry entry builds at its minimum size with --weights none, with the feature count
    its registry entry says, resolves its last conv feature map and yields a finite heatmap on it
    (and a cell alignment within one cell). (One build per backbone serves both checks.)"""
    import keras

    from tlcli.backbones import BACKBONES
    from tlcli.gradcam import Explainer
    from tlcli.model import build_classifier

    size = BACKBONES[name].min_size
    keras.utils.set_random_seed(0)
    classifier = build_classifier(name, 3, size, weights="none")
    assert classifier.get_layer("backbone").output_shape[-1] == BACKBONES[name].features
    explainer = Explainer(classifier, ["a", "b", "c"])
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3)).astype(np.uint8)
    cams, probs = explainer.explain(image)
    assert cams.ndim == 3 and min(cams.shape[1:]) >= 1
    assert np.isfinite(cams).all() and 0 <= cams.min() and cams.max() <= 1
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1, atol=1e-4)
    from tlcli.gradcam import cell_geometry, feature_layer
    from tlcli.model import get_backbone

    backbone = get_backbone(classifier)
    assert cell_geometry(backbone, feature_layer(backbone)[1], size) is not None  # every layer modelled
    grid = cams.shape[1:]
    for (start, end), n in zip(explainer.span, grid):  # the image's edges, in cells: near the map's own
        assert -2 <= start <= 2 and n - 2 <= end <= n + 2
    keras.backend.clear_session()


@pytest.mark.parametrize("name, size, expected", [
    ("tiny", 48, 3.5),  # three stride-2 "same" convolutions: +0.5, +1, +2 px
    ("vgg16", 64, 0.0),  # 2x2 pooling and odd kernels: centred
    ("mobilenet_v2", 96, 15.5),  # five stride-2 layers padded after: 0.5 + 1 + 2 + 4 + 8
    ("resnet50", 64, -15.5),  # padded before (ZeroPadding2D(3), then (1)), the other way
])
def test_cell_geometry_of_known_backbones(name, size, expected):
    """Cell centres from the layers' geometry, against the hand count of each architecture."""
    from tlcli.backbones import build_backbone
    from tlcli.gradcam import cell_geometry, feature_layer

    backbone = build_backbone(name, "none", size)
    _, tensor, _ = feature_layer(backbone)
    rows, cols = cell_geometry(backbone, tensor, size)
    n, stride, offset = rows
    assert rows == cols and n == tensor.shape[1] and stride * n == size
    assert offset - stride / 2 == pytest.approx(expected)  # cell 0's centre against a plain stretch's


def test_a_sigmoid_head_is_explained_from_the_same_logits(trained_run):
    """A multi-label model's label: Grad-CAM of its logit before the sigmoid, the same logit a
    softmax head with the same weights has; its probabilities are the sigmoids."""
    import keras

    from tlcli.gradcam import Explainer
    from tlcli.model import load_classifier

    softmax = load_classifier(trained_run / "model.keras")
    config = softmax.get_config()
    for layer in config["layers"]:
        if layer["name"] == "predictions":
            layer["config"]["activation"] = "sigmoid"
    sigmoid = keras.Model.from_config(config)
    sigmoid.set_weights(softmax.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    labels = ["a", "b", "c"]
    cams, probs = Explainer(sigmoid, labels).explain(images, 2)
    expected_cams, _ = Explainer(softmax, labels).explain(images, 2)
    np.testing.assert_allclose(cams, expected_cams, atol=1e-5)
    assert cams.max() > 0  # some evidence to compare
    np.testing.assert_allclose(probs, np.asarray(sigmoid(images.astype("float32"), training=False)), atol=1e-5)

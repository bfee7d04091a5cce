"""The classifier: raw-pixel input, preprocessing, freezing per phase, safe saving."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tlcli.model import (Preprocess, build_classifier, count_params, feature_model, freeze_backbone,
                         get_backbone, head_model, load_classifier, unfreeze_top)
from tlcli.errors import TlcliError


@pytest.fixture(scope="module")
def classifier():
    return build_classifier("tiny", 3, 32, "none")


def test_takes_raw_images_of_any_size(classifier):
    probabilities = classifier.predict(np.random.default_rng(0).uniform(0, 255, (2, 50, 70, 3)), verbose=0)
    assert probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("mode,pixel,expected", [
    ("tf", 255.0, [1.0, 1.0, 1.0]),
    ("torch", 255.0, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]),
    ("caffe", 255.0, [255 - 103.939, 255 - 116.779, 255 - 123.68]),
    ("none", 255.0, [255.0, 255.0, 255.0]),
])
def test_preprocess_modes(mode, pixel, expected):
    out = np.asarray(Preprocess(mode)(np.full((1, 1, 1, 3), pixel, np.float32)))
    assert np.allclose(out.reshape(-1), expected, atol=1e-4)


def test_freeze_then_unfreeze_trainable_counts(classifier):
    freeze_backbone(classifier)
    trainable, _ = count_params(classifier)
    assert trainable == 64 * 3 + 3  # the dense head only
    count = unfreeze_top(classifier, 0.5)
    backbone = get_backbone(classifier)
    body = [l for l in backbone.layers if not isinstance(l, keras.layers.InputLayer)]
    assert count == round(len(body) * 0.5)
    assert not any(l.trainable for l in body[:-count])
    assert all(l.trainable for l in body[-count:] if not isinstance(l, keras.layers.BatchNormalization))
    assert not any(l.trainable for l in body if isinstance(l, keras.layers.BatchNormalization))
    assert count_params(classifier)[0] > trainable
    unfreeze_top(classifier, 2)  # a whole number is a layer count
    assert sum(l.trainable for l in body) <= 2


def test_batchnorm_statistics_do_not_move_in_fine_tuning():
    model = build_classifier("tiny", 2, 32, "none")
    unfreeze_top(model, 1.0)
    bn = get_backbone(model).get_layer("bn2")
    before = [w.copy() for w in bn.get_weights()]
    model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    model.fit(x, keras.utils.to_categorical([0, 1] * 4, 2), epochs=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, bn.get_weights()))
    assert not np.array_equal(get_backbone(model).get_layer("conv2").get_weights()[0],
                              build_classifier("tiny", 2, 32, "none").get_layer("backbone").get_layer("conv2").get_weights()[0])


def test_head_model_shares_layers_with_classifier(classifier):
    head = head_model(classifier)
    features = feature_model(classifier)
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    assert np.allclose(head.predict(features.predict(x, verbose=0), verbose=0), classifier.predict(x, verbose=0), atol=1e-5)
    assert head.get_layer("predictions") is classifier.get_layer("predictions")


def test_saved_model_loads_in_safe_mode(classifier, tmp_path):
    classifier.save(tmp_path / "m.keras")
    loaded = load_classifier(tmp_path / "m.keras")
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.allclose(loaded.predict(x, verbose=0), classifier.predict(x, verbose=0), atol=1e-6)


def test_loading_a_non_model_is_a_one_line_error(tmp_path):
    (tmp_path / "junk.keras").write_text("not a zip")
    with pytest.raises(TlcliError, match="cannot load"):
        load_classifier(tmp_path / "junk.keras")


LOAD_OUTSIDE_TLCLI = """
import json, sys
import numpy as np
import tlcli
result = {"heavy_on_import": sorted(m for m in ("keras", "tensorflow") if m in sys.modules)}
import keras
try:
    keras.saving.load_model(sys.argv[1])
    result["plain_keras"] = "loaded"
except Exception as error:
    result["plain_keras"] = str(error)
model = tlcli.load_model(sys.argv[1])
result["probabilities"] = model.predict(np.full((1, 40, 40, 3), 128.0, "float32"), verbose=0).tolist()
print(json.dumps(result))
"""


def test_load_model_in_a_fresh_interpreter(classifier, tmp_path):
    """`tlcli.load_model` is what a user's own script calls; plain Keras cannot load the file alone."""
    classifier.save(tmp_path / "model.keras")
    done = subprocess.run([sys.executable, "-c", LOAD_OUTSIDE_TLCLI, str(tmp_path / "model.keras")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy_on_import"] == []
    assert "Could not locate class" in result["plain_keras"]
    expected = classifier.predict(np.full((1, 40, 40, 3), 128.0, "float32"), verbose=0)
    assert np.allclose(result["probabilities"], expected, atol=1e-5)

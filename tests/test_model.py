"""The classifier: raw-pixel input, resizing as training decodes, preprocessing, freezing per phase,
float32 saving, plain calls, safe loading."""

import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import FLOWERS, KERAS_HOME, requires_flowers, use_keras_home
from tlcli.augment import build_augmenter
from tlcli.backbones import build_backbone
from tlcli.config import AugmentConfig
from tlcli.images import load_image
from tlcli.errors import TlcliError
from tlcli.model import (Preprocess, Resize, build_classifier, count_params, feature_model, float32_copy,
                         freeze_backbone, get_backbone, head_model, load_classifier, pretrained, unfreeze_top)


@pytest.fixture(scope="module")
def classifier():
    return build_classifier("tiny", 3, 32, "none")


def raw_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3)).astype("float32")


def test_takes_raw_images_of_any_size(classifier):
    probabilities = classifier.predict(raw_images(2, 50, 70), verbose=0)
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


# ---------------------------------------------------------------- resizing as training decodes


@pytest.mark.parametrize("width,height,size", [
    (1600, 1200, 224),  # a 2-megapixel photo at MobileNet's size
    (1001, 703, 64),  # whole-factor reduction leaves a partial last block on both axes
    (300, 700, 32),  # portrait: each axis shrinks by its own factor
    (50, 30, 64),  # smaller than the model's size: enlarged
])
def test_model_resizes_full_size_pixels_as_the_decoder_does(tmp_path, width, height, size):
    """Noise is the hardest case: all its detail is finer than the target's pixels, so any
    resampling that is not Pillow's (e.g. bilinear without antialiasing) shows at once."""
    pixels = raw_images(1, height, width, seed=width)
    Image.fromarray(pixels[0].astype(np.uint8)).save(tmp_path / "photo.png")
    model = build_classifier("tiny", 2, size, "none")
    seen = np.asarray(keras.Model(model.input, model.get_layer("resize").output)(pixels))[0]
    difference = np.abs(seen - load_image(tmp_path / "photo.png", size))
    # Pillow rounds with fixed-point arithmetic: a level either way, at a few pixels.
    assert difference.max() <= 1 and difference.mean() < 0.1


def test_resize_leaves_images_at_the_model_size_unchanged():
    import tensorflow as tf

    layer = Resize(32, 32)
    augmented = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert np.array_equal(layer(augmented), augmented)
    # With the size unknown when traced (a SavedModel's signature), the arithmetic is an identity too.
    unknown_size = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    pixels = raw_images(2, 32, 32)
    assert np.array_equal(unknown_size(pixels), pixels)


def test_resize_converts_to_tflite_builtin_ops():
    """tf.image's antialiased resize needs Flex ops; a model with any input size must not."""
    import tensorflow as tf

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, Resize(16, 16)(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    pixels = raw_images(1, 151, 203)  # reduced by 3 and 4 first, the last blocks partial
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.shape == (1, 16, 16, 3)
    assert np.allclose(out, model(pixels), atol=1e-3)


def _fit_head(model, classes: list[str], per_class: int = 4) -> None:
    """A softmax head fitted (numpy, seconds) on the pooled features of a few training photos."""
    paths = [p for name in classes for p in sorted((FLOWERS / "train" / name).iterdir())[:per_class]]
    features = np.asarray(feature_model(model)(np.stack([load_image(p, 224) for p in paths]), training=False))
    labels = np.repeat(np.arange(len(classes)), per_class)
    mean, scale = features.mean(axis=0), features.std()
    z = (features - mean) / scale
    weights = np.zeros((z.shape[1], len(classes)))
    for _ in range(300):  # gradient descent on the L2-regularised cross-entropy
        logits = z @ weights
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(labels)), labels] -= 1
        weights -= 0.5 * (z.T @ p / len(labels) + 0.01 * weights)
    model.get_layer("predictions").set_weights([weights / scale, -(mean / scale) @ weights])


@pytest.mark.slow
@requires_flowers
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_large_photo_given_raw_to_model_keras_is_classified_as_tlcli_decodes_it(tmp_path, monkeypatch, suffix):
    """A 1600x1200 photo through model.keras on its raw pixels, and through tlcli's own decoder:
    the same top-1, probabilities within 0.02.

    The photos are flowers-dev val photos enlarged, with grain: an enlarged photo lacks the fine
    detail of a real 2-megapixel one. A JPEG decoder may shrink in the DCT (draft mode), which
    no model given decoded pixels can reproduce: tlcli's decoder only does so down to 3x the
    model size, where the block-averaging the model also does takes over.
    """
    import tlcli

    use_keras_home(monkeypatch, KERAS_HOME)
    classes = sorted(p.name for p in (FLOWERS / "train").iterdir() if p.is_dir())
    model = build_classifier("mobilenet_v2", len(classes), 224, "imagenet")
    _fit_head(model, classes)
    model.save(tmp_path / "model.keras")
    loaded = tlcli.load_model(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    for name in classes:
        photo = np.asarray(Image.open(sorted((FLOWERS / "val" / name).iterdir())[0]).convert("RGB")
                           .resize((1600, 1200), Image.BICUBIC), np.float32)
        grain = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
        path = tmp_path / f"{name}{suffix}"
        Image.fromarray(grain).save(path, **({"quality": 90} if suffix == ".jpg" else {"compress_level": 1}))
        raw = np.asarray(Image.open(path).convert("RGB"))[None]
        on_raw = np.asarray(loaded(raw, training=False))[0]
        decoded = np.asarray(loaded(load_image(path, 224)[None], training=False))[0]
        assert on_raw.argmax() == decoded.argmax(), (name, on_raw, decoded)
        assert np.abs(on_raw - decoded).max() < 0.02, (name, on_raw, decoded)


# ---------------------------------------------------------------- plain calls


@pytest.mark.parametrize("start", ["scratch", "pretrained"])
def test_plain_call_of_a_saved_model_computes_what_predict_does(tmp_path, start):
    """`model(x)` is inference: BatchNorm on its moving statistics, no dropout."""
    weights = "none"
    if start == "pretrained":  # a weights file makes the backbone pretrained without a download
        weights = str(tmp_path / "backbone.weights.h5")
        build_backbone("tiny", "none", 32).save_weights(weights)
    build_classifier("tiny", 3, 32, weights, dropout=0.5).save(tmp_path / "model.keras")
    model = load_classifier(tmp_path / "model.keras")
    images = raw_images(4, 40, 40)
    assert np.allclose(np.asarray(model(images)), model.predict(images, verbose=0), atol=1e-5)


# ---------------------------------------------------------------- freezing per phase


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
    # A whole number is a layer count.
    assert unfreeze_top(classifier, 2, freeze_batchnorm=False) == 2
    assert [l.name for l in body if l.trainable] == ["bn2", "relu2"]
    freeze_backbone(classifier)


def _phase2(classifier, weights: str, augment: bool = True):
    """Phase 2 as tlcli.train runs it end to end: the top of the backbone unfrozen, augmentation
    and classifier trained together as one Sequential (which hands training=True down)."""
    freeze_backbone(classifier)
    unfreeze_top(classifier, 1.0, freeze_batchnorm=pretrained(weights))
    trainer = keras.Sequential([build_augmenter(AugmentConfig(enabled=augment), 32), classifier])
    trainer.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    return trainer


def test_pretrained_batchnorm_stays_frozen_and_in_inference_mode_in_fine_tuning(tmp_path):
    weights = str(tmp_path / "backbone.weights.h5")
    build_backbone("tiny", "none", 32).save_weights(weights)
    model = build_classifier("tiny", 2, 32, weights, dropout=0.0)
    trainer = _phase2(model, weights, augment=False)
    images, labels = raw_images(8, 32, 32), np.array([0, 1] * 4)
    # In training mode the batch statistics would replace ImageNet's: the output would change.
    assert np.allclose(np.asarray(trainer(images, training=True)), model.predict(images, verbose=0), atol=1e-5)
    bn, conv = get_backbone(model).get_layer("bn2"), get_backbone(model).get_layer("conv2")
    bn_before, conv_before = [w.copy() for w in bn.get_weights()], conv.get_weights()[0].copy()
    trainer.fit(images, labels, epochs=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(bn_before, bn.get_weights()))  # gamma, beta, statistics
    assert not np.array_equal(conv_before, conv.get_weights()[0])


def test_batchnorm_learns_in_end_to_end_training_from_scratch():
    model = build_classifier("tiny", 2, 32, "none")
    trainer = _phase2(model, "none")
    bn = get_backbone(model).get_layer("bn2")
    gamma, beta, mean, variance = (w.copy() for w in bn.get_weights())
    trainer.fit(raw_images(8, 32, 32), np.array([0, 1] * 4), epochs=2, verbose=0)
    new_gamma, new_beta, new_mean, new_variance = bn.get_weights()
    assert not np.array_equal(gamma, new_gamma) and not np.array_equal(beta, new_beta)
    assert not np.array_equal(mean, new_mean) and not np.array_equal(variance, new_variance)


def test_head_model_shares_layers_with_classifier(classifier):
    head = head_model(classifier)
    features = feature_model(classifier)
    x = raw_images(3, 32, 32, seed=1)
    assert np.allclose(head.predict(features.predict(x, verbose=0), verbose=0), classifier.predict(x, verbose=0), atol=1e-5)
    assert head.get_layer("predictions") is classifier.get_layer("predictions")


# ---------------------------------------------------------------- float32 saving


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@pytest.mark.parametrize("backbone", ["tiny", "mobilenet_v2"])
def test_float32_copy_of_a_mixed_precision_classifier(backbone, tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        mixed = build_classifier(backbone, 3, 32, "none")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    images = raw_images(4, 40, 40)
    assert feature_model(mixed)(images).dtype == "float16"
    copy = float32_copy(mixed)
    assert {layer.dtype_policy.name for layer in _all_layers(copy)} == {"float32"}
    assert feature_model(copy)(images).dtype == "float32"
    assert len(copy.get_weights()) == len(mixed.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), copy.get_weights()))
    probabilities = np.asarray(copy(images, training=False))
    assert np.allclose(probabilities, np.asarray(mixed(images, training=False)), atol=1e-2)
    copy.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert "float16" not in config
    if backbone == "tiny":
        loaded = load_classifier(tmp_path / "model.keras")
        assert np.allclose(np.asarray(loaded(images, training=False)), probabilities, atol=1e-6)


def test_float32_copy_converts_to_a_float32_tflite_model():
    import tensorflow as tf

    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        mixed = build_classifier("tiny", 3, 32, "none")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    copy = float32_copy(mixed)
    inputs = keras.Input((32, 32, 3), batch_size=1)
    fixed = keras.Model(inputs, copy(inputs, training=False))
    interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(fixed).convert())
    assert {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()} <= {"float32", "int32"}
    interpreter.allocate_tensors()
    image = raw_images(1, 32, 32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.allclose(out, copy.predict(image, verbose=0), atol=1e-5)


# ---------------------------------------------------------------- saving and loading


def test_saved_model_loads_in_safe_mode(classifier, tmp_path):
    classifier.save(tmp_path / "m.keras")
    loaded = load_classifier(tmp_path / "m.keras")
    x = raw_images(2, 32, 32, seed=2)
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


def test_a_multi_label_classifier_gives_each_class_its_own_probability():
    """Sigmoid outputs: each class's probability on its own, where a softmax's would sum to 1."""
    model = build_classifier("tiny", 3, 32, "none", multi_label=True)
    dense = model.get_layer("predictions")
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), np.array([0.0, 2.0, -2.0], np.float32)])
    probabilities = model.predict(raw_images(2, 40, 40), verbose=0)
    assert np.allclose(probabilities, 1 / (1 + np.exp(-np.array([0.0, 2.0, -2.0]))), atol=1e-6)

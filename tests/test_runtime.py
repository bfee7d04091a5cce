"""tlcli.runtime: every model kind runs to the same probabilities, on one code path that predict
and export's parity check share; interpreter choice, quantization, batching and timing."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES
from test_onnx_format import requires_onnx
from tlcli.errors import TlcliError
from tlcli.rundir import ModelRef

# ---------------------------------------------------------------- model fixtures (never written into trained_run)


def classifier_of(run: Path):
    from tlcli.model import load_classifier

    return load_classifier(run / "model.keras")


def image_size_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["image_size"]


def make_export_folder(run: Path, folder: Path, content: bytes, name: str = "model.tflite") -> Path:
    """A folder laid out like `tlcli export`'s: the .tflite, labels.txt and model.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "labels.txt", folder / "labels.txt")
    size = image_size_of(run)
    (folder / "model.json").write_text(json.dumps({"input_size": [size, size]}))
    (folder / name).write_bytes(content)
    return folder / name


def lone_tflite(run: Path, folder: Path, name: str = "model.tflite") -> Path:
    """The run's model as .tflite with tlcli's metadata, alone in `folder`: no labels.txt, no
    model.json, no run above it."""
    from tlcli.convert import ModelInfo, write_tflite

    folder.mkdir(parents=True, exist_ok=True)
    labels = tuple((run / "labels.txt").read_text().split())
    write_tflite(folder / name, convert_tflite(run), ModelInfo(labels, "tiny"))
    return folder / name


def lone_onnx(run: Path, folder: Path, name: str = "model.onnx") -> Path:
    """The run's model as .onnx with its labels inside, alone in `folder` (needs the [onnx] extra)."""
    from tlcli.onnx_format import convert_onnx

    folder.mkdir(parents=True, exist_ok=True)
    convert_onnx(classifier_of(run), folder / name, image_size_of(run), (run / "labels.txt").read_text().split())
    return folder / name


def inference_model(run: Path, batch_size: int | None = None):
    """The run's classifier pinned to inference mode, with a fixed-size input as `tlcli export` makes.

    Calling a Keras model without `training=False` can put BatchNorm in training mode (a
    preprocessing layer's recorded `training=True` reaches it), so exporters must pin it.
    """
    import keras

    size = image_size_of(run)
    inputs = keras.Input((size, size, 3), batch_size=batch_size, name="image")
    return keras.Model(inputs, classifier_of(run)(inputs, training=False))


def convert_tflite(run: Path, int8_images: np.ndarray | None = None) -> bytes:
    """The run's model as .tflite: float with a free batch size, or full-integer with a batch of 1
    and uint8 input and output (as `tlcli export` writes model_int8.tflite)."""
    import tensorflow as tf

    model = inference_model(run, batch_size=None if int8_images is None else 1)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8_images is not None:
        def representative():
            for image in int8_images:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def export_savedmodel(run: Path, path: Path) -> Path:
    """A SavedModel through Keras 3's export API, in inference mode, with a dict output."""
    import keras
    import tensorflow as tf

    classifier = classifier_of(run)
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint("serve", lambda image: {"probabilities": classifier(image, training=False)},
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="image")])
    archive.write_out(str(path), verbose=False)
    return path


@pytest.fixture(scope="module")
def tflite_model(trained_run, tmp_path_factory) -> Path:
    return make_export_folder(trained_run, tmp_path_factory.mktemp("export"), convert_tflite(trained_run))


@pytest.fixture(scope="module")
def savedmodel_dir(trained_run, tmp_path_factory) -> Path:
    """A SavedModel of the run, with the run's labels and config beside it."""
    folder = tmp_path_factory.mktemp("sm_run")
    for name in ("labels.txt", "config.json"):
        shutil.copy(trained_run / name, folder / name)
    return export_savedmodel(trained_run, folder / "saved_model")




def _paths(image_folder: Path) -> list[Path]:
    return sorted(image_folder.rglob("*_[0-3].*"))


def _decoded(paths, size: int) -> np.ndarray:
    from tlcli.images import load_image

    return np.stack([load_image(p, size) for p in paths])


def _probs(model_path, images: np.ndarray, batch_size: int = 5) -> np.ndarray:
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model, run_batches

    return run_batches(open_model(resolve_model(model_path)), images, batch_size)


# ---------------------------------------------------------------- every kind, the same probabilities


def test_keras_savedmodel_and_tflite_agree(trained_run, savedmodel_dir, tflite_model, image_folder):
    """Each kind against the Keras model called here, outside tlcli's runtime."""
    images = _decoded(_paths(image_folder), image_size_of(trained_run))
    # training=False: after `train` in this process, Keras would otherwise default to training mode.
    expected = np.asarray(classifier_of(trained_run)(images.astype(np.float32), training=False))
    # batch_size 5 leaves a short last batch: the resize path of the interpreter runs too.
    np.testing.assert_allclose(_probs(trained_run, images), expected, atol=1e-5)
    np.testing.assert_allclose(_probs(savedmodel_dir, images), expected, atol=1e-5)
    np.testing.assert_allclose(_probs(tflite_model, images), expected, atol=1e-4)


LITERT = ("ai_edge_litert", "ai_edge_litert.interpreter")


def test_tflite_runs_on_tf_lite_without_litert(trained_run, tflite_model, image_folder, monkeypatch):
    """Where LiteRT has no wheels it is not installed: TensorFlow's tf.lite interpreter runs the file."""
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model

    images = _decoded(_paths(image_folder), image_size_of(trained_run))
    keras_probs = _probs(trained_run, images)
    for name in LITERT:
        monkeypatch.setitem(sys.modules, name, None)  # `import ai_edge_litert` now raises ImportError
    assert type(open_model(resolve_model(tflite_model)).interpreter).__module__ == \
        "tensorflow.lite.python.interpreter"
    np.testing.assert_allclose(_probs(tflite_model, images), keras_probs, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
def test_int8_tflite_with_uint8_input_and_output(trained_run, image_folder, tmp_path):
    """Full-integer models take quantized pixels and give quantized scores; both are mapped."""
    from tlcli.runtime import tflite_interpreter

    size = image_size_of(trained_run)
    calibration = _decoded(sorted(p for p in image_folder.rglob("*") if p.is_file()), size)
    model = make_export_folder(trained_run, tmp_path, convert_tflite(trained_run, calibration), "model_int8.tflite")
    details = tflite_interpreter(model).get_input_details()[0]
    assert details["dtype"] == np.uint8
    # Output quantization steps are 1/256: a probability comes back within a few steps.
    np.testing.assert_allclose(_probs(model, calibration), _probs(trained_run, calibration), atol=0.03)


def test_quantize_and_dequantize_use_scale_and_zero_point():
    from tlcli.runtime import dequantize, quantize

    pixels = np.array([0, 1, 127, 255], np.uint8)
    as_int8 = quantize(pixels, {"dtype": np.int8, "quantization": (1.0, -128)})
    assert as_int8.dtype == np.int8 and as_int8.tolist() == [-128, -127, -1, 127]
    halved = quantize(pixels, {"dtype": np.uint8, "quantization": (2.0, 0)})
    assert halved.tolist() == [0, 0, 64, 128]  # round half to even, as TFLite does
    scores = dequantize(np.array([-128, 0, 127], np.int8), {"dtype": np.int8, "quantization": (1 / 256, -128)})
    assert scores.tolist() == pytest.approx([0.0, 0.5, 255 / 256])
    floats = quantize(pixels, {"dtype": np.float32, "quantization": (0.0, 0)})
    assert floats.dtype == np.float32 and floats.tolist() == [0, 1, 127, 255]


def test_images_of_another_size_than_a_fixed_tflite_takes_are_refused(trained_run, tmp_path):
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model

    size = image_size_of(trained_run)
    path = make_export_folder(trained_run, tmp_path, convert_tflite(trained_run))
    runner = open_model(resolve_model(path))
    assert runner.image_size == size and runner.predict(np.zeros((2, size, size, 3), np.uint8)).shape == (2, 3)
    with pytest.raises(TlcliError, match=f"takes {size}x{size} images, not 40x48"):
        runner.predict(np.zeros((1, 48, 40, 3), np.uint8))


def test_a_lone_tflite_runs_with_the_labels_and_size_of_its_metadata_and_tensor(trained_run, image_folder,
                                                                                  tmp_path):
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model

    runner = open_model(resolve_model(lone_tflite(trained_run, tmp_path / "alone")))
    assert runner.labels == list(CLASSES) and runner.image_size == image_size_of(trained_run)
    images = _decoded(_paths(image_folder), image_size_of(trained_run))
    np.testing.assert_allclose(_probs(runner.path, images), _probs(trained_run, images), atol=1e-4)


@requires_onnx
def test_a_lone_onnx_runs_with_the_labels_and_size_of_its_file(trained_run, image_folder, tmp_path):
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model

    runner = open_model(resolve_model(lone_onnx(trained_run, tmp_path / "alone")))
    assert (runner.kind, runner.uses_tensorflow) == ("onnx", False)
    assert runner.labels == list(CLASSES) and runner.image_size == image_size_of(trained_run)
    images = _decoded(_paths(image_folder), image_size_of(trained_run))
    np.testing.assert_allclose(_probs(runner.path, images), _probs(trained_run, images), atol=1e-5)


def test_a_tflite_of_any_size_with_nothing_saying_which_is_a_one_line_error(tmp_path):
    import keras
    import tensorflow as tf

    from tlcli.convert import write_tflite
    from tlcli.runtime import open_model

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    write_tflite(tmp_path / "any.tflite", tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(TlcliError, match="any size and no model.json"):
        open_model(ModelRef("tflite", tmp_path / "any.tflite", list(CLASSES), 0, None))
    assert open_model(ModelRef("tflite", tmp_path / "any.tflite", list(CLASSES), 24, None)).image_size == 24


def test_a_kind_with_no_runner_is_a_one_line_error(tmp_path):
    from tlcli.runtime import open_model

    with pytest.raises(TlcliError, match="cannot run a coreml model"):
        open_model(ModelRef("coreml", tmp_path / "model.mlpackage", list(CLASSES), 32, None))


# ---------------------------------------------------------------- batches and timing


class _Clockwork:
    """A runner stand-in: each call takes `seconds` whatever its batch (the first, `first`),
    and records the batch sizes it was given."""

    labels = list(CLASSES)

    def __init__(self, seconds: float, first: float):
        self.seconds, self.first, self.calls = seconds, first, []

    def predict(self, images):
        time.sleep(self.first if not self.calls else self.seconds)
        self.calls.append(len(images))
        return np.tile(np.arange(3, dtype=np.float32), (len(images), 1))


def test_run_batches_splits_into_batches_and_reports_progress():
    from tlcli.runtime import run_batches

    runner, seen = _Clockwork(0, 0), []
    probs = run_batches(runner, np.zeros((70, 4, 4, 3), np.uint8), 32, seen.append)
    assert runner.calls == [32, 32, 6] and seen == [32, 32, 6] and probs.shape == (70, 3)
    assert run_batches(runner, np.zeros((0, 4, 4, 3), np.uint8)).shape == (0, 3)


def test_latency_is_per_image_one_at_a_time_after_a_warm_up():
    from tlcli.runtime import latency

    runner = _Clockwork(0.01, first=0.3)
    seconds = latency(runner, np.zeros((40, 4, 4, 3), np.uint8), samples=8)
    assert runner.calls == [1] * 9  # the warm-up, then 8 single images
    assert 0.01 <= seconds < 0.05  # neither the warm-up's 0.3 s nor a batch's time split 8 ways
    assert latency(runner, np.zeros((0, 4, 4, 3), np.uint8)) == 0.0


# ---------------------------------------------------------------- test-time augmentation


class _LeftHanded:
    """A runner stand-in that is not mirror-invariant: each class scores the brightness of one
    vertical third of the image (left, middle, right)."""

    labels = list(CLASSES)

    def __init__(self):
        self.calls = []

    def predict(self, images):
        x = np.asarray(images, np.float64)
        self.calls.append(len(x))
        third = x.shape[2] // 3
        scores = np.stack([x[:, :, i * third:(i + 1) * third].mean(axis=(1, 2, 3)) for i in range(3)], axis=1) / 20
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _lopsided_images(n: int = 5, size: int = 40) -> np.ndarray:
    """Seeded images brighter on one side than the other, differently each."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[None, None, :, None] * rng.uniform(-150, 150, (n, 1, 1, 1))
    return np.clip(128 + ramp + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_tta_flip_averages_the_image_and_its_mirror():
    from tlcli.runtime import run_batches, with_tta

    images, plain = _lopsided_images(), _LeftHanded()
    expected = (plain.predict(images) + plain.predict(np.flip(images, axis=2))) / 2
    assert np.abs(expected - plain.predict(images)).max() > 0.05  # the mirror really changes the answer
    got = run_batches(with_tta(_LeftHanded(), "flip"), images, batch_size=2)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert with_tta(plain, None) is plain


def test_tta_flip_and_crops_averages_seven_views_resized_as_the_decoder_does():
    """The plain image, its mirror, the 4 corner crops and the centre crop at 90% (36 of 40
    pixels), each resized back to 40 by Pillow's bilinear filter: computed here independently."""
    from PIL import Image

    from tlcli.runtime import TTARunner

    images, plain = _lopsided_images(), _LeftHanded()

    def crops(left: int, top: int) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(image).crop((left, top, left + 36, top + 36))
                                    .resize((40, 40), Image.BILINEAR)) for image in images])

    views = [images, images[:, :, ::-1]] + [crops(x, y) for x, y in ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2))]
    expected = np.stack([plain.predict(v) for v in views], axis=1)
    every = TTARunner(plain, "flip+crops", average=False).predict(images)
    assert every.shape == (5, 7, 3)
    np.testing.assert_allclose(every, expected, atol=1e-6)  # the plain image first, then the others in order
    np.testing.assert_allclose(TTARunner(plain, "flip+crops").predict(images), expected.mean(axis=1), atol=1e-6)
    # Float pixels take the same views (to Pillow's 8-bit rounding).
    as_float = TTARunner(plain, "flip+crops", average=False).predict(images.astype(np.float32))
    np.testing.assert_allclose(as_float, expected, atol=2e-3)


def test_tta_wraps_every_model_kind_and_refuses_an_unknown_mode(trained_run, tflite_model, image_folder):
    """Through the runtime's runners: a .tflite with TTA gives what its Keras model gives with TTA."""
    from tlcli.rundir import resolve_model
    from tlcli.runtime import TTARunner, open_model, run_batches, with_tta

    images = _decoded(_paths(image_folder), image_size_of(trained_run))
    keras_runner = open_model(resolve_model(trained_run))
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    expected = (run_batches(keras_runner, images) + run_batches(keras_runner, flipped)) / 2
    tflite = with_tta(open_model(resolve_model(tflite_model)), "flip")
    assert (tflite.kind, tflite.labels, tflite.image_size) == ("tflite", list(CLASSES), image_size_of(trained_run))
    np.testing.assert_allclose(run_batches(tflite, images, 5), expected, atol=1e-4)
    with pytest.raises(TlcliError, match="--tta must be one of flip, flip\\+crops; not 'mirror'"):
        TTARunner(keras_runner, "mirror")


# ---------------------------------------------------------------- one code path for predict and export


def test_predict_and_the_export_check_share_the_interpreter_call(trained_run, image_folder, tmp_path, cli,
                                                                  monkeypatch):
    """Corrupt the one place a .tflite result comes from (rotate the class axis): export's parity
    check and `tlcli predict` both see it, so the check measures what predict runs."""
    from tlcli.runtime import TFLiteRunner

    honest_invoke = TFLiteRunner._invoke
    monkeypatch.setattr(TFLiteRunner, "_invoke", lambda self, x: np.roll(honest_invoke(self, x), 1, axis=-1))
    out = tmp_path / "export"
    result = cli(["export", "--model", trained_run, "--output", out, "--json"])
    assert result.exit_code == 1, result.output  # an honest float32 file agrees on every image
    (row,) = json.loads(result.stdout)["artifacts"]
    assert row["agreement"] == 0.0 and row["passed"] is False

    def labels() -> list[str]:
        predicted = cli(["predict", image_folder / "dark", "--model", out / "model.tflite", "-f", "json", "-q"])
        assert predicted.exit_code == 0, predicted.output
        return [r["label"] for r in json.loads(predicted.stdout)]

    corrupted = labels()
    monkeypatch.undo()
    honest = labels()
    assert corrupted == [CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)] for label in honest]

"""TFLite metadata: written by tlcli, read back without TensorFlow, honoured by MediaPipe Tasks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tlcli.tflite_metadata import add_metadata, has_metadata, read_labels, read_metadata, read_thresholds

LABELS = ["red", "green", "blue", "dark"]
THRESHOLDS = [0.5, 0.25, 0.75, 0.625]  # a multi-label model's, one per label
ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def make_images() -> tuple[np.ndarray, np.ndarray]:
    """Two noisy 16 px images per class, seeded: mostly red, green, blue, or dark."""
    rng = np.random.default_rng(0)
    images, classes = [], []
    for c, label in enumerate(LABELS):
        for _ in range(2):
            base = np.full(3, 30.0)
            if label != "dark":
                base[c] = 220.0
            images.append(np.clip(base + rng.integers(-25, 26, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
            classes.append(c)
    return np.stack(images), np.array(classes)


def make_keras_model():
    """A classifier of raw 0..255 pixels with a hand-set head, so its answers are known.

    Each colour class scores its channel against the other two; `dark` scores low brightness.
    Fed pixels scaled to [-1, 1] instead (a wrong normalization), every image scores `dark`.
    """
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    head = keras.layers.Dense(len(LABELS), activation="softmax")
    outputs = head(pooled)
    colour = np.full((3, 3), -0.025) + np.eye(3) * 0.075
    kernel = np.concatenate([colour, np.full((3, 1), -0.02)], axis=1)
    head.set_weights([kernel.astype("float32"), np.array([-1.5, -1.5, -1.5, 3.0], "float32")])
    return keras.Model(inputs, outputs)


def convert(model, images: np.ndarray | None = None) -> bytes:
    """Float32 TFLite bytes, or full-integer with uint8 input and output when given `images`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if images is not None:
        def representative():
            for i, image in enumerate(images):
                x = image[None].astype("float32")
                if i == 0:  # pin the input range to 0..255, so uint8 input = pixel value
                    x[0, 0, 0], x[0, 0, 1] = 0.0, 255.0
                yield [x]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": not needed
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()


@pytest.fixture(scope="module")
def images():
    return make_images()


@pytest.fixture(scope="module")
def plain(images) -> dict[str, bytes]:
    """The tiny classifier as .tflite bytes without metadata: float32 and uint8-io."""
    model = make_keras_model()
    return {"float32": convert(model), "uint8": convert(model, images[0])}


@pytest.fixture(scope="module")
def files(plain, tmp_path_factory) -> dict[str, Path]:
    """The models on disk: `<kind>` with tlcli's metadata, `<kind>-plain` without any,
    `float32-wrong` with a mean and std the model does not take, `float32-multi` with thresholds
    (as a multi-label model's)."""
    folder = tmp_path_factory.mktemp("tflite")
    out = {}
    for kind, data in plain.items():
        out[kind] = folder / f"{kind}.tflite"
        out[kind].write_bytes(add_metadata(data, LABELS, name="colours", description="d", version="7"))
        out[f"{kind}-plain"] = folder / f"{kind}-plain.tflite"
        out[f"{kind}-plain"].write_bytes(data)
    out["float32-wrong"] = folder / "float32-wrong.tflite"
    out["float32-wrong"].write_bytes(add_metadata(plain["float32"], LABELS, name="colours", mean=127.5, std=127.5))
    out["float32-multi"] = folder / "float32-multi.tflite"
    out["float32-multi"].write_bytes(add_metadata(plain["float32"], LABELS, name="colours", thresholds=THRESHOLDS))
    return out


def litert_run(path: Path, images: np.ndarray) -> np.ndarray:
    """Raw outputs of LiteRT for each image, fed as the model's input dtype takes it."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(outp["index"])[0].copy())
    return np.stack(rows)


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_litert_outputs_are_identical_with_metadata(files, images, kind):
    plain = litert_run(files[f"{kind}-plain"], images[0])
    with_metadata = litert_run(files[kind], images[0])
    assert np.array_equal(plain, with_metadata)
    assert list(plain.argmax(1)) == list(images[1])  # the fixture's answers are the intended ones


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_model_buffers_are_kept_byte_for_byte_and_16_byte_aligned(plain, files, kind):
    from ai_edge_litert import schema_py_generated as schema

    before = schema.Model.GetRootAs(plain[kind], 0)
    data = files[kind].read_bytes()
    after = schema.Model.GetRootAs(data, 0)
    assert after.BuffersLength() == before.BuffersLength() + 1  # + the metadata buffer
    for i in range(before.BuffersLength()):
        assert np.array_equal(after.Buffers(i).DataAsNumpy(), before.Buffers(i).DataAsNumpy()), i
    for i in range(after.BuffersLength()):
        table = after.Buffers(i)._tab
        field = table.Offset(4)  # Buffer.data: TFLite asks for force_align 16
        if field and table.VectorLen(field):
            assert table.Vector(field) % 16 == 0, i


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_read_metadata_round_trips(files, kind):
    meta = read_metadata(files[kind])
    assert (meta["name"], meta["description"], meta["version"]) == ("colours", "d", "7")
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["input"]["color_space"] == "RGB"
    assert (meta["input"]["mean"], meta["input"]["std"]) == ([0.0], [1.0])
    assert (meta["input"]["min"], meta["input"]["max"]) == ([0.0], [255.0])
    assert (meta["output"]["min"], meta["output"]["max"]) == ([0.0], [255.0] if kind == "uint8" else [1.0])
    assert meta["output"]["labels_file"] == "labels.txt"
    assert read_labels(files[kind]) == LABELS
    assert read_labels(files[kind].read_bytes()) == LABELS
    assert has_metadata(files[kind]) and not has_metadata(files[f"{kind}-plain"])
    assert read_metadata(files[f"{kind}-plain"]) is None and read_labels(files[f"{kind}-plain"]) is None


def test_input_stats_follow_the_normalization_for_float_only(files, plain):
    meta = read_metadata(files["float32-wrong"])
    assert (meta["input"]["mean"], meta["input"]["std"]) == ([127.5], [127.5])
    assert (meta["input"]["min"], meta["input"]["max"]) == ([-1.0], [1.0])
    # A uint8 input holds the pixels themselves, whatever normalization the float model had.
    meta = read_metadata(add_metadata(plain["uint8"], LABELS, name="x", mean=127.5, std=127.5))
    assert (meta["input"]["mean"], meta["input"]["std"]) == ([127.5], [127.5])
    assert (meta["input"]["min"], meta["input"]["max"]) == ([0.0], [255.0])


def test_adding_metadata_again_replaces_it(plain):
    once = add_metadata(plain["float32"], LABELS, name="first")
    twice = add_metadata(once, ["a", "b", "c", "d"], name="second")
    assert read_labels(twice) == ["a", "b", "c", "d"]
    assert read_metadata(twice)["name"] == "second"
    assert abs(len(twice) - len(once)) < 64  # one metadata buffer and one labels file, not two


def test_model_file_is_a_zip_holding_labels_txt(files):
    import zipfile

    with zipfile.ZipFile(files["float32"]) as archive:
        assert archive.namelist() == ["labels.txt"]
        assert archive.getinfo("labels.txt").compress_type == zipfile.ZIP_STORED
        assert archive.read("labels.txt") == b"red\ngreen\nblue\ndark\n"


@pytest.mark.parametrize("labels, match", [(["a", "b"], "4 classes, but 2 labels"),
                                           (["a", "b", "c\nd", "e"], "line breaks"),
                                           (["a", "b", "", "e"], "non-empty")])
def test_rejects_labels_that_do_not_fit(plain, labels, match):
    with pytest.raises(ValueError, match=match):
        add_metadata(plain["float32"], labels, name="x")


def test_a_multi_label_model_carries_its_thresholds(files):
    import zipfile

    assert read_thresholds(files["float32-multi"]) == THRESHOLDS
    assert read_thresholds(files["float32"]) is None and read_thresholds(files["float32-plain"]) is None
    meta = read_metadata(files["float32-multi"])
    assert meta["files"] == ["thresholds.json"] and read_metadata(files["float32"])["files"] == []
    assert meta["output"]["description"].startswith("Independent probabilities of the 4 labels")
    assert read_labels(files["float32-multi"]) == LABELS
    with zipfile.ZipFile(files["float32-multi"]) as archive:
        assert json.loads(archive.read("thresholds.json")) == {"labels": LABELS, "thresholds": THRESHOLDS}


@pytest.mark.parametrize("thresholds", [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 1.5]])
def test_rejects_thresholds_that_do_not_fit(plain, thresholds):
    with pytest.raises(ValueError, match="thresholds must be 4 numbers"):
        add_metadata(plain["float32"], LABELS, name="x", thresholds=thresholds)


def test_rejects_a_zero_std(plain):
    with pytest.raises(ValueError, match="std"):
        add_metadata(plain["float32"], LABELS, name="x", std=0.0)


def test_rejects_a_file_that_is_not_a_classifier(plain):
    with pytest.raises(ValueError, match="not a TFLite model"):
        add_metadata(b"not a model at all", LABELS, name="x")
    assert read_metadata(b"not a model at all") is None and read_labels(b"PK\x03\x04junk") is None


def test_a_damaged_file_reads_as_having_no_metadata(files):
    data = files["float32"].read_bytes()
    damaged = data[:8] + b"\xff" * 64  # the identifier, then offsets pointing nowhere
    assert read_metadata(damaged) is None and read_labels(damaged) is None and not has_metadata(damaged)


def test_reading_does_not_import_tensorflow(files):
    code = ("import json, sys; from tlcli.tflite_metadata import read_labels, read_metadata; "
            f"print(json.dumps([read_labels({str(files['uint8'])!r}), "
            f"read_metadata({str(files['uint8'])!r})['name'], 'tensorflow' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == [LABELS, "colours", False]


# ---------------------------------------------------------------- the real client: MediaPipe Tasks


@pytest.fixture(scope="module")
def mp_results(files, images, tmp_path_factory) -> dict[str, dict]:
    """MediaPipe ImageClassifier's results for every model in `files`, from one subprocess."""
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed: pip install -e '.[dev]'")
    pixels = tmp_path_factory.mktemp("mediapipe") / "images.npy"
    np.save(pixels, images[0])
    names = list(files)
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "mediapipe_client.py"), str(pixels),
                          *(str(files[n]) for n in names)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(zip(names, json.loads(out.stdout.strip().splitlines()[-1])))


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_mediapipe_classifies_with_the_labels_and_agrees_with_litert(mp_results, files, images, kind):
    result = mp_results[kind]
    assert "error" not in result, result
    assert result["names"] == LABELS
    direct = litert_run(files[kind], images[0]).astype(np.float32)
    if kind == "uint8":  # MediaPipe reports dequantized scores
        from ai_edge_litert.interpreter import Interpreter

        scale, zero = Interpreter(model_path=str(files[kind])).get_output_details()[0]["quantization"]
        direct = (direct - zero) * scale
    scores = np.array(result["scores"])
    assert list(scores.argmax(1)) == list(direct.argmax(1)) == list(images[1])
    # Same pixels, same model: only float rounding may differ, so normalization is exactly right.
    assert np.abs(scores - direct).max() < 1e-4


def test_mediapipe_loads_a_multi_label_model_with_its_thresholds_file(mp_results, images):
    result = mp_results["float32-multi"]
    assert "error" not in result, result
    assert result["names"] == LABELS and list(np.array(result["scores"]).argmax(1)) == list(images[1])
    (thresholds_file,) = result["metadata"]["associatedFiles"]  # the model's own, beside its tensors'
    assert thresholds_file["name"] == "thresholds.json"


def test_mediapipe_honours_the_normalization(mp_results, images):
    # Told pixels are (x - 127.5) / 127.5, MediaPipe feeds [-1, 1] to a raw-pixel model: all `dark`.
    top1 = np.array(mp_results["float32-wrong"]["scores"]).argmax(1)
    assert list(top1) == [LABELS.index("dark")] * len(images[1])


def test_mediapipe_without_metadata_fails_as_the_issue_says(mp_results):
    # The symptoms tlcli's files had before: a float model is refused, a uint8 one has no names.
    assert "NormalizationOptions" in mp_results["float32-plain"]["error"]
    names = mp_results["uint8-plain"]["names"]
    assert len(names) == len(LABELS) and not any(names)


@pytest.mark.parametrize("kind", ["float32", "uint8"])
def test_metadata_as_the_schema_generated_code_reads_it(mp_results, kind):
    # MediaPipe's generated parser, not tlcli's reader: a field in the wrong slot shows here.
    meta = mp_results[kind]["metadata"]
    assert (meta["name"], meta["description"], meta["version"]) == ("colours", "d", "7")
    assert meta["minParserVersion"] == "1.0.0"
    (subgraph,) = meta["subgraphMetadata"]
    (image,), (scores,) = subgraph["inputTensorMetadata"], subgraph["outputTensorMetadata"]
    assert image["content"] == {"contentPropertiesType": "ImageProperties",
                                "contentProperties": {"colorSpace": "RGB"}}
    assert image["processUnits"] == [{"optionsType": "NormalizationOptions",
                                      "options": {"mean": [0.0], "std": [1.0]}}]
    assert image["stats"] == {"min": [0.0], "max": [255.0]}
    assert scores["content"] == {"contentPropertiesType": "FeatureProperties", "contentProperties": {}}
    assert scores["stats"] == {"min": [0.0], "max": [255.0] if kind == "uint8" else [1.0]}
    (labels_file,) = scores["associatedFiles"]
    assert (labels_file["name"], labels_file["type"]) == ("labels.txt", "TENSOR_AXIS_LABELS")

"""tlcli.onnx_format: a classifier converted by tf2onnx gives Keras's probabilities on raw pixels
through onnxruntime, names its classes from its own metadata, and runs without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from tlcli.errors import TlcliError
from tlcli.rundir import ModelRef

EXTRA = ("tf2onnx", "onnx", "onnxruntime")
requires_onnx = pytest.mark.skipif(not all(find_spec(m) for m in EXTRA),
                                   reason="needs the [onnx] extra: pip install 'tlcli[onnx]'")


def labels_of(run: Path) -> list[str]:
    return (run / "labels.txt").read_text().split()


def size_of(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["image_size"]


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory) -> Path:
    """The trained run's classifier as ONNX, with its labels inside, alone in a folder."""
    from tlcli.model import load_classifier
    from tlcli.onnx_format import convert_onnx

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    convert_onnx(load_classifier(trained_run / "model.keras"), path, size_of(trained_run), labels_of(trained_run))
    return path


def pixels(image_folder: Path, size: int) -> np.ndarray:
    """Every image of the folder decoded as tlcli decodes them, then a random one and the extremes."""
    from tlcli.images import load_image

    decoded = [load_image(p, size) for p in sorted(image_folder.rglob("*")) if p.is_file()]
    rng = np.random.default_rng(0)
    extra = [rng.integers(0, 256, (size, size, 3)), np.zeros((size, size, 3)), np.full((size, size, 3), 255)]
    return np.stack(decoded + [e.astype(np.uint8) for e in extra])


@requires_onnx
def test_onnx_gives_keras_probabilities_on_raw_pixels(trained_run, onnx_model, image_folder, monkeypatch):
    """Through runtime.open_model, as predict runs it, in batches of 5 (a short last one)."""
    from tlcli import runtime
    from tlcli.model import load_classifier
    from tlcli.onnx_format import OnnxRunner, onnx_session

    size = size_of(trained_run)
    images = pixels(image_folder, size)
    expected = load_classifier(trained_run / "model.keras").predict(images.astype(np.float32), verbose=0)
    monkeypatch.setitem(runtime.RUNNERS, "onnx", OnnxRunner)
    runner = runtime.open_model(ModelRef("onnx", onnx_model, labels_of(trained_run), size, trained_run))
    assert runner.uses_tensorflow is False
    probs = runtime.run_batches(runner, images, batch_size=5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    # What an app sees: raw RGB float32 at a fixed size, any batch, one named output.
    session = onnx_session(onnx_model)
    (given,), (output,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape) == ("image", "tensor(float)", ["batch", size, size, 3])
    assert (output.name, output.shape) == ("probabilities", ["batch", len(labels_of(trained_run))])


@requires_onnx
def test_a_lone_onnx_names_its_classes_and_size(trained_run, onnx_model, tmp_path):
    from tlcli.onnx_format import OnnxRunner, convert_onnx, describe, read_labels

    runner = OnnxRunner(ModelRef("onnx", onnx_model, [], 0, None))
    assert (runner.labels, runner.image_size) == (labels_of(trained_run), size_of(trained_run))
    assert read_labels(onnx_model) == labels_of(trained_run)
    size, classes = size_of(trained_run), len(labels_of(trained_run))
    assert describe(onnx_model) == {"input_name": "image", "input_dtype": "float32", "input_shape": [-1, size, size, 3],
                                    "output_name": "probabilities", "output_dtype": "float32",
                                    "output_shape": [-1, classes], "metadata": True}
    # The file's input shape wins over a wrong size beside it; other sizes are refused in a line.
    assert OnnxRunner(ModelRef("onnx", onnx_model, labels_of(trained_run), 99, None)).image_size == size_of(trained_run)
    with pytest.raises(TlcliError, match=r"takes 32x32 images, not 40x40"):
        runner.predict(np.zeros((1, 40, 40, 3), np.uint8))

    from tlcli.model import load_classifier

    bare = tmp_path / "bare.onnx"
    convert_onnx(load_classifier(trained_run / "model.keras"), bare, size_of(trained_run))
    assert read_labels(bare) is None and describe(bare)["metadata"] is False
    with pytest.raises(TlcliError, match="none in its metadata"):
        OnnxRunner(ModelRef("onnx", bare, [], 0, None))
    with pytest.raises(TlcliError, match="outputs 3 classes but its labels list 2"):
        OnnxRunner(ModelRef("onnx", bare, ["only", "two"], 0, None))


@requires_onnx
def test_a_fixed_batch_size_is_fed_whole(trained_run, onnx_model, image_folder, tmp_path):
    """Files from other tools may fix the batch (often at 1): tlcli feeds that many, padding the last."""
    import onnx

    from tlcli.onnx_format import OnnxRunner

    model = onnx.load(str(onnx_model))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "batch2.onnx"
    onnx.save(model, str(fixed))
    images = pixels(image_folder, size_of(trained_run))[:5]
    ref = ModelRef("onnx", onnx_model, [], 0, None)
    expected = OnnxRunner(ref).predict(images)
    np.testing.assert_allclose(OnnxRunner(ModelRef("onnx", fixed, [], 0, None)).predict(images), expected, atol=1e-6)


@requires_onnx
def test_a_lone_multi_label_onnx_reads_its_thresholds(onnx_model, tmp_path):
    """A multi-label model's thresholds ride in the metadata as its labels do (convert_onnx writes
    them; here they are added by hand, so no second conversion is needed)."""
    import onnx

    from tlcli.onnx_format import OnnxRunner, read_thresholds

    assert read_thresholds(onnx_model) is None and OnnxRunner(ModelRef("onnx", onnx_model, [], 0, None)).multi_label is False
    model = onnx.load(str(onnx_model))
    model.metadata_props.add(key="thresholds", value="[0.25, 0.5, 0.75]")
    tagged = tmp_path / "multi.onnx"
    onnx.save(model, str(tagged))
    runner = OnnxRunner(ModelRef("onnx", tagged, [], 0, None))
    assert (runner.multi_label, runner.thresholds) == (True, [0.25, 0.5, 0.75])
    model.metadata_props[-1].value = "[0.25, 0.5]"  # one short: refused in a line, not guessed
    onnx.save(model, str(tagged))
    with pytest.raises(TlcliError, match="one threshold between 0 and 1 per label"):
        OnnxRunner(ModelRef("onnx", tagged, [], 0, None))


@requires_onnx
def test_onnx_prediction_never_imports_tensorflow(onnx_model, trained_run):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from tlcli import runtime
        from tlcli.onnx_format import OnnxRunner
        from tlcli.rundir import ModelRef
        runtime.RUNNERS["onnx"] = OnnxRunner
        runner = runtime.open_model(ModelRef("onnx", sys.argv[1], [], 0, None))
        probs = runner.predict(np.zeros((2, runner.image_size, runner.image_size, 3), np.uint8))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"))
        print(json.dumps({"shape": list(probs.shape), "heavy": heavy}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(onnx_model)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shape": [2, len(labels_of(trained_run))], "heavy": []}


@requires_onnx
def test_a_file_that_is_not_onnx_is_refused_in_one_line(tmp_path):
    from tlcli.onnx_format import OnnxRunner

    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(TlcliError, match=r"cannot load '.*model.onnx' as an ONNX model") as error:
        OnnxRunner(ModelRef("onnx", path, ["a", "b"], 32, None))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("missing", ["tf2onnx", "onnx"])
def test_export_without_the_extra_says_how_to_install_it(missing, monkeypatch):
    from tlcli.onnx_format import convert_onnx

    if missing == "onnx" and find_spec("tf2onnx"):
        import tf2onnx  # noqa: F401  (as after an earlier export: the check must not depend on it)
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` now raises ImportError
    with pytest.raises(TlcliError) as error:
        convert_onnx(None, "unused.onnx", 32)
    assert str(error.value) == "ONNX export needs the [onnx] extra: pip install 'tlcli[onnx]'"


def test_running_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    from tlcli.onnx_format import OnnxRunner

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(TlcliError) as error:
        OnnxRunner(ModelRef("onnx", tmp_path / "model.onnx", ["a", "b"], 32, None))
    assert str(error.value) == "running a .onnx model needs the [onnx] extra: pip install 'tlcli[onnx]'"


@pytest.mark.parametrize("why", ["numpy.core.multiarray failed to import", ""])
def test_a_broken_onnxruntime_is_named_in_one_line(why, monkeypatch, tmp_path):
    """onnxruntime < 1.19 under NumPy 2 is installed but fails to import (with an empty message):
    say so, not "install it"."""
    from tlcli.onnx_format import OnnxRunner

    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError({why!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    with pytest.raises(TlcliError) as error:
        OnnxRunner(ModelRef("onnx", tmp_path / "model.onnx", ["a", "b"], 32, None))
    assert str(error.value) == ("running a .onnx model needs the [onnx] extra, and onnxruntime fails to import"
                                + (f" ({why})" if why else "") + ": pip install --upgrade 'tlcli[onnx]'")


def test_listing_the_runner_in_runtime_makes_no_import_cycle():
    """runtime.RUNNERS will hold OnnxRunner, so runtime imports this module: it must not import back."""
    from test_imports import find_cycle, import_graph

    graph = import_graph()
    graph["runtime"] = graph["runtime"] | {"onnx_format"}
    assert find_cycle(graph) is None

"""Run folders are never overwritten, files are written atomically, latest points to finished runs."""

import json

import pytest

from tlcli.errors import TlcliError
from tlcli.rundir import atomic_path, create_run_dir, latest_run, mark_complete, resolve_model, write_json


def test_create_run_dir_increments_and_never_reuses(tmp_path):
    names = [create_run_dir(tmp_path, "train").name for _ in range(3)]
    assert names == ["train", "train2", "train3"]
    with pytest.raises(TlcliError):
        create_run_dir(tmp_path, "../escape")


def test_atomic_path_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_latest_run_only_sees_complete_runs(tmp_path):
    with pytest.raises(TlcliError, match="no finished run"):
        latest_run(tmp_path)
    first = create_run_dir(tmp_path, "train")
    mark_complete(first)
    create_run_dir(tmp_path, "train")  # unfinished
    assert latest_run(tmp_path) == first


def test_resolve_model_rules(trained_run, tmp_path):
    ref = resolve_model(trained_run)
    assert ref.kind == "keras" and ref.path.name == "model.keras" and ref.image_size == 32
    assert ref.labels == ["bright", "dark", "striped"]
    assert resolve_model(trained_run / "model.keras").run_dir == trained_run
    with pytest.raises(TlcliError, match="does not exist"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TlcliError, match="not a model"):
        resolve_model(tmp_path / "notes.txt")
    with pytest.raises(TlcliError, match="no model.keras"):
        resolve_model(tmp_path)


def test_write_csv_survives_file_names_that_are_not_utf8(tmp_path):
    from tlcli.rundir import write_csv

    name = "caf\udce9.jpg"  # how Python hands over a Latin-1 byte in a file name
    write_csv(tmp_path / "s.csv", ["path"], [[name]])
    assert "caf\\udce9.jpg" in (tmp_path / "s.csv").read_text()  # escaped, not a crash


# ---------------------------------------------------------------- a lone .tflite


@pytest.fixture(scope="module")
def small_tflite(tmp_path_factory):
    """{"metadata": bytes, "plain": bytes, "multi": bytes}: an 8 px, 3-class .tflite with and without
    tlcli's metadata, and with a multi-label model's (thresholds)."""
    import keras

    from tlcli.convert import ModelInfo, convert_tflite, write_tflite

    inputs = keras.Input((8, 8, 3), batch_size=1)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)))
    folder = tmp_path_factory.mktemp("small")
    data = convert_tflite(model, "float32")[0]
    write_tflite(folder / "m.tflite", data, ModelInfo(("ant", "bee", "cow")))
    write_tflite(folder / "multi.tflite", data, ModelInfo(("ant", "bee", "cow"), thresholds=(0.25, 0.5, 0.75)))
    return {"metadata": (folder / "m.tflite").read_bytes(), "plain": data, "multi": (folder / "multi.tflite").read_bytes()}


def test_a_lone_tflite_takes_its_labels_from_its_metadata(small_tflite, tmp_path):
    lone = tmp_path / "deep" / "model.tflite"
    lone.parent.mkdir()
    lone.write_bytes(small_tflite["metadata"])
    ref = resolve_model(lone)
    # No size beside it: 0 tells the runner to read it from the model's input tensor.
    assert (ref.kind, ref.labels, ref.image_size, ref.run_dir) == ("tflite", ["ant", "bee", "cow"], 0, None)
    # A labels.txt beside it still comes first (it may rename the classes).
    (lone.parent / "labels.txt").write_text("a\nb\nc\n")
    assert resolve_model(lone).labels == ["a", "b", "c"]


def test_a_lone_tflite_without_metadata_cannot_name_its_classes(small_tflite, tmp_path):
    lone = tmp_path / "deep" / "model.tflite"
    lone.parent.mkdir()
    lone.write_bytes(small_tflite["plain"])
    with pytest.raises(TlcliError, match="no labels.txt beside .* or in its TFLite metadata"):
        resolve_model(lone)


def test_a_tflite_with_labels_but_no_model_json_is_sized_by_its_runner(small_tflite, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.tflite").write_bytes(small_tflite["plain"])
    (tmp_path / "m" / "labels.txt").write_text("a\nb\nc\n")
    assert resolve_model(tmp_path / "m" / "model.tflite").image_size == 0
    (tmp_path / "m" / "model.keras").write_bytes(b"")  # a Keras model still needs its size written down
    with pytest.raises(TlcliError, match="input size"):
        resolve_model(tmp_path / "m" / "model.keras")


def test_a_onnx_is_a_model_named_by_its_runner_unless_labels_are_beside_it(tmp_path):
    """resolve_model does not open the file (onnx_format imports rundir): a lone .onnx gets no
    labels and size 0, and OnnxRunner reads both from the file (tests/test_runtime.py)."""
    lone = tmp_path / "alone" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(b"not read here")
    ref = resolve_model(lone)
    assert (ref.kind, ref.path, ref.labels, ref.image_size, ref.run_dir) == ("onnx", lone, [], 0, None)
    (lone.parent / "labels.txt").write_text("a\nb\n")  # beside it: first, as for a .tflite
    assert (resolve_model(lone).labels, resolve_model(lone).image_size) == (["a", "b"], 0)
    with pytest.raises(TlcliError, match=r"\.tflite or \.onnx"):
        resolve_model(tmp_path / "missing.onnx")


# ---------------------------------------------------------------- multi-label: thresholds beside the model


def _run_folder(tmp_path, config: dict, thresholds: dict | None = None):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")  # not opened by resolve_model
    (run / "labels.txt").write_text("ant\nbee\ncow\n")
    (run / "config.json").write_text(json.dumps({"image_size": 32, **config}))
    if thresholds is not None:
        (run / "thresholds.json").write_text(json.dumps(thresholds))
    return run


def test_a_multi_label_run_gives_its_tuned_thresholds(tmp_path):
    run = _run_folder(tmp_path, {"multi_label": True},
                      {"labels": ["ant", "bee", "cow"], "thresholds": [0.3, 0.55, 1], "tuned_on": "val", "metric": "f1"})
    ref = resolve_model(run)
    assert (ref.multi_label, ref.thresholds) == (True, [0.3, 0.55, 1.0])


def test_a_single_label_run_has_no_thresholds(trained_run):
    ref = resolve_model(trained_run)
    assert (ref.multi_label, ref.thresholds) == (False, None)


def test_a_multi_label_run_without_thresholds_json_takes_one_half(tmp_path):
    assert resolve_model(_run_folder(tmp_path, {"multi_label": True})).thresholds == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("saved, match", [({"labels": ["ant", "bee", "cow"], "thresholds": [0.5, 0.5]}, "one threshold"),
                                          ({"labels": ["ant", "bee", "cow"], "thresholds": [0.5, 0.5, 2]}, "between 0 and 1"),
                                          ({"labels": ["cow", "bee", "ant"], "thresholds": [0.5] * 3}, "not labels.txt's")])
def test_thresholds_that_do_not_fit_the_labels_are_a_one_line_error(tmp_path, saved, match):
    with pytest.raises(TlcliError, match=match):
        resolve_model(_run_folder(tmp_path, {"multi_label": True}, saved))


def test_an_export_folder_gives_model_json_s_thresholds(small_tflite, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.tflite").write_bytes(small_tflite["plain"])
    (export / "labels.txt").write_text("ant\nbee\ncow\n")
    (export / "model.json").write_text(json.dumps({"input_size": 8, "multi_label": True, "thresholds": [0.1, 0.2, 0.3]}))
    ref = resolve_model(export / "model.tflite")
    assert (ref.multi_label, ref.thresholds, ref.image_size) == (True, [0.1, 0.2, 0.3], 8)


def test_a_lone_multi_label_tflite_takes_its_thresholds_from_its_metadata(small_tflite, tmp_path):
    lone = tmp_path / "model.tflite"
    lone.write_bytes(small_tflite["multi"])
    ref = resolve_model(lone)
    assert (ref.labels, ref.multi_label, ref.thresholds) == (["ant", "bee", "cow"], True, [0.25, 0.5, 0.75])
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")  # labels beside it, nothing about thresholds: still its own
    assert resolve_model(lone).thresholds == [0.25, 0.5, 0.75]

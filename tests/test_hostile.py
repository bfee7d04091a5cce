"""Hostile input and safe loading (issue 6): messy folders, broken and huge images, fuzzed bytes,
and model files that are not what they claim to be."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import hostile
from tlcli import images as tlcli_images
from tlcli.data import load_folder
from tlcli.images import ImageError, load_image, load_images

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = 32


def rel(root: Path, path: str) -> str:
    return Path(path).relative_to(root).as_posix()


def assert_one_readable_line(message: str) -> None:
    assert message and message == message.strip(), repr(message)
    assert "\n" not in message and message.isprintable() and len(message) <= 200, repr(message)
    assert "Traceback" not in message


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The hostile DATA_DIR and what tlcli must make of it. Read-only."""
    root = tmp_path_factory.mktemp("hostile") / "data"
    return root, hostile.make_hostile_folder(root)


# ---------------------------------------------------------------- the folder, without training


def test_load_folder_uses_every_usable_image_and_skips_each_unusable_one(corpus):
    root, expected = corpus
    folder = load_folder(root, SIZE, val_split=0.2, seed=0)
    assert folder.class_names == expected["classes"]
    used = {rel(root, p): folder.class_names[label]
            for split in (folder.train, folder.val) for p, label in zip(split.paths, split.labels)}
    assert used == expected["usable"]
    reasons = {rel(root, p): reason for p, reason in folder.skipped}
    assert set(reasons) == set(expected["skipped"])
    for path, reason in reasons.items():
        assert expected["skipped"][path] in reason, (path, reason)
        assert_one_readable_line(reason)
    notes = " ".join(folder.warnings)
    for name in expected["left_out"]:
        assert f"'{name}'" in notes
    assert "1 image(s) at the top" in notes  # stray.jpg


def test_decoding_in_threads_leaves_warning_filters_as_they_were(corpus):
    # catch_warnings entered in several threads at once can leave the process's filters changed.
    root, expected = corpus
    before = list(warnings.filters)
    load_images([root / p for p in expected["usable"]] * 3, SIZE)
    assert warnings.filters == before


@pytest.mark.parametrize("mode", list(hostile.MODE_FILES))
def test_every_mode_decodes_to_the_same_gray(corpus, mode):
    root, _ = corpus
    image = load_image(root / "cats" / hostile.MODE_FILES[mode][0], 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    tolerance = 20 if mode == "1" else 3  # 1-bit: dithered, so only the average is gray
    assert abs(image.astype(float).mean() - hostile.GRAY) <= tolerance
    if mode != "1":
        assert np.abs(image.astype(int) - hostile.GRAY).max() <= 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_shows_the_image_upright(corpus, orientation):
    root, _ = corpus
    upright = load_image(root / "cats/orientation/upright.png", 16).astype(int)
    turned = load_image(root / f"cats/orientation/exif_{orientation}.jpg", 16).astype(int)
    assert np.abs(turned - upright).mean() < 4  # JPEG noise only; a wrong turn moves whole quadrants


def test_animated_gif_uses_its_first_frame(corpus):
    root, _ = corpus
    assert load_image(root / "cats/animated.gif", 8)[4, 4].tolist() == [255, 0, 0]


def test_file_names_that_are_not_utf8_are_trained_on_and_listed_readably(tmp_path):
    root = tmp_path / "data"
    for cls, kind in (("a", "bright"), ("b", "dark")):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (200, 200, 200) if kind == "bright" else (20, 20, 20)).save(root / cls / f"{i}.png")
    good, bad = os.fsencode(root / "a") + b"/caf\xe9.png", os.fsencode(root / "a") + b"/junk\xff.jpg"
    Image.new("RGB", (8, 8)).save(good.decode("utf-8", "surrogateescape"), format="PNG")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    folder = load_folder(root, 8)
    assert len(folder.train) + len(folder.val) == 5
    (path, reason), = folder.skipped
    assert path.endswith("junk\\xff.jpg") and path.encode("utf-8")  # writable to skipped.csv


# ---------------------------------------------------------------- train, predict, evaluate through the CLI


@pytest.fixture(scope="module")
def hostile_run(corpus, tmp_path_factory):
    """`tlcli train` on the corpus: (exit code, stdout, run folder)."""
    from typer.testing import CliRunner

    from tlcli.cli import app

    root, _ = corpus
    project = tmp_path_factory.mktemp("hostile_runs")
    result = CliRunner().invoke(app, ["train", str(root), "--backbone", "tiny", "--weights", "none",
                                      "--image-size", str(SIZE), "--epochs", "1", "--fine-tune-epochs", "1",
                                      "--cache-views", "1", "--batch-size", "16", "--project", str(project),
                                      "--json"], catch_exceptions=False)
    return result, project / "train"


def test_train_on_hostile_folder_succeeds_and_lists_every_skipped_file(corpus, hostile_run):
    root, expected = corpus
    result, run = hostile_run
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_skipped"] == len(expected["skipped"])
    assert metrics["n_train"] + metrics["n_val"] == len(expected["usable"])
    assert metrics["n_classes"] == len(expected["classes"])
    with open(run / "skipped.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {rel(root, r["path"]): r["reason"] for r in rows}.keys() == expected["skipped"].keys()
    for row in rows:
        assert expected["skipped"][rel(root, row["path"])] in row["reason"]
    assert json.loads((run / "metrics.json").read_text())["n_skipped"] == len(expected["skipped"])
    assert (run / "labels.txt").read_text().split() == expected["classes"]


def test_predict_on_hostile_folder_reports_each_bad_file_and_exits_1(corpus, hostile_run, cli, tmp_path):
    root, expected = corpus
    _, run = hostile_run
    out = tmp_path / "predictions.json"
    result = cli(["predict", root, "--model", run, "-o", out, "-q"])
    assert result.exit_code == 1, result.output
    rows = {rel(root, r["path"]): r for r in json.loads(out.read_text(encoding="utf-8"))}
    failed = {path: r["error"] for path, r in rows.items() if r["error"]}
    assert failed.keys() == expected["skipped"].keys()
    with open(run / "skipped.csv", encoding="utf-8", newline="") as f:
        trained = {rel(root, r["path"]): r["reason"] for r in csv.DictReader(f)}
    assert failed == trained  # the same reason in every command
    predicted = {path for path, r in rows.items() if not r["error"]}
    assert predicted == set(expected["usable"]) | set(expected["stray"])
    assert all(rows[p]["label"] in expected["classes"] for p in predicted)


def test_evaluate_on_hostile_folder_measures_the_usable_images(corpus, hostile_run, cli, tmp_path):
    root, expected = corpus
    _, run = hostile_run
    result = cli(["evaluate", root, "--model", run, "-o", tmp_path / "eval", "--json", "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == len(expected["usable"])
    assert {rel(root, s["path"]) for s in metrics["skipped"]} == set(expected["skipped"])


# ---------------------------------------------------------------- very large images


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """100-megapixel JPEG and PNG, written by a subprocess (this one never holds them)."""
    folder = tmp_path_factory.mktemp("huge")
    subprocess.run([sys.executable, str(HERE / "hostile.py"), str(folder), "huge"], check=True,
                   capture_output=True)
    return {"jpeg": folder / "huge.jpg", "png": folder / "huge.png", "folder": folder}


_MEASURE = textwrap.dedent("""
    import resource, sys
    from PIL import Image
    from tlcli.images import load_image, load_images

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    warm, jpeg, png = sys.argv[1:]
    Image.new("RGB", (64, 64)).save(warm)
    load_image(warm, 32)  # imports and first-use allocations, before the baseline
    baseline = peak()
    for group in ([jpeg], [png], [png, png]):  # the peak only rises: JPEG first
        images, ok, skipped = load_images(group, 32)
        assert len(ok) == len(group) and images.shape[1:] == (32, 32, 3), skipped
        print(peak() - baseline)
""")

FULL_RGB_BYTES = 10_000 * 10_000 * 3  # a 100-megapixel image decoded once as 8-bit RGB


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and behaviour are Linux's")
def test_100_megapixel_images_are_never_decoded_twice_at_full_size(huge):
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(huge["folder"] / "warm.png"), str(huge["jpeg"]),
                           str(huge["png"])], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    jpeg, png, two_pngs = (int(line) for line in done.stdout.split())
    # JPEG decodes at 1/8 scale straight away: a fraction of one full-size copy.
    assert jpeg < FULL_RGB_BYTES / 8
    # Pillow holds RGB at 4 bytes a pixel: one decode is 1.33x FULL_RGB_BYTES, a second copy 2.67x.
    assert png < 2 * FULL_RGB_BYTES
    # load_images decodes in parallel threads, but two 100-megapixel images never coexist: two
    # decodes at once would be 2.67x; allocator arenas of the decoding threads add up to ~0.1x.
    assert two_pngs < 2.5 * FULL_RGB_BYTES


def test_pillows_bomb_guard_is_lifted_only_for_tlcli_and_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses anything over 2000 pixels
    Image.new("RGB", (300, 200), (9, 9, 9)).save(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", 16).max() == 9
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_tlcli_limit_applies_to_the_size_really_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(tlcli_images, "MAX_PIXELS", 10_000)
    Image.new("RGB", (800, 800)).save(tmp_path / "big.png")
    Image.new("RGB", (800, 800)).save(tmp_path / "big.jpg")
    with pytest.raises(ImageError, match="too large: 800x800"):
        load_image(tmp_path / "big.png", 16)
    assert load_image(tmp_path / "big.jpg", 16).shape == (16, 16, 3)  # decodes at 100x100


# ---------------------------------------------------------------- fuzzing the loader

_NOISE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (12, 10, 3), np.uint8))
SEEDS = {name: hostile.encoded(image, fmt, **options) for name, image, fmt, options in (
    ("png", _NOISE, "PNG", {}), ("png-palette", _NOISE.convert("P"), "PNG", {}),
    ("jpeg", _NOISE, "JPEG", {"quality": 80}), ("jpeg-progressive", _NOISE, "JPEG", {"progressive": True}),
    ("gif", _NOISE, "GIF", {"save_all": True, "append_images": [_NOISE.rotate(90)]}), ("bmp", _NOISE, "BMP", {}),
    ("tiff", _NOISE, "TIFF", {}), ("tiff-lzw", _NOISE, "TIFF", {"compression": "tiff_lzw"}),
    ("webp", _NOISE, "WEBP", {"quality": 80}), ("webp-lossless", _NOISE.convert("RGBA"), "WEBP", {"lossless": True}))}
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", b"GIF89a", b"GIF87a", b"BM", b"II*\x00",
          b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L"]
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "input.jpg"


def check_loader(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        image = load_image(path, 16)
    except ImageError as error:
        assert_one_readable_line(str(error))
    else:
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8


@FUZZ
@given(content=st.binary(max_size=4096))
def test_fuzz_random_bytes(fuzz_file, content):
    check_loader(fuzz_file, content)


@FUZZ
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=2048))
def test_fuzz_random_bytes_after_an_image_header(fuzz_file, magic, tail):
    check_loader(fuzz_file, magic + tail)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), draw=st.data())
def test_fuzz_damaged_real_images(fuzz_file, seed, draw):
    content = bytearray(SEEDS[seed])
    cut = draw.draw(st.integers(1, len(content)), label="length")
    for at, value in draw.draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)),
                                        max_size=6), label="changes"):
        content[at] = value
    check_loader(fuzz_file, bytes(content[:cut]))


# ---------------------------------------------------------------- safe loading of models


def model_folder(folder: Path, labels=("bright", "dark", "striped"), size: int = SIZE) -> Path:
    """A folder laid out like a run's, for --model: labels.txt and model.json beside the model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "model.json").write_text(json.dumps({"input_size": size}))
    return folder


def assert_exit_2_one_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_model_with_python_code_is_refused_and_its_code_never_runs(command, cli, image_folder, tmp_path):
    import keras

    marker = tmp_path / "code_ran"
    folder = model_folder(tmp_path / "evil")
    model = keras.Sequential([keras.Input((None, None, 3)),
                              keras.layers.Lambda(lambda x, m=str(marker): (open(m, "w").close(), x)[1]),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    model.save(folder / "model.keras")
    marker.unlink()  # building the model ran the lambda once; loading it must not
    target = image_folder / "dark" if command == "predict" else image_folder
    result = cli([command, target, "--model", folder / "model.keras", "-q"])
    assert_exit_2_one_line(result, "safe mode")
    assert not marker.exists()


def test_random_bytes_named_model_keras_is_exit_2(cli, image_folder, tmp_path):
    folder = model_folder(tmp_path / "m")
    (folder / "model.keras").write_bytes(np.random.default_rng(0).bytes(3000))
    assert_exit_2_one_line(cli(["predict", image_folder / "dark", "--model", folder / "model.keras", "-q"]),
                           "not a .keras file")


def test_h5_model_is_exit_2_by_name_or_renamed(cli, image_folder, tmp_path):
    import keras

    folder = model_folder(tmp_path / "h5")
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(folder / "model.h5")
    assert_exit_2_one_line(cli(["predict", image_folder / "dark", "--model", folder / "model.h5", "-q"]),
                           "not a model")
    shutil.copy(folder / "model.h5", folder / "model.keras")
    assert_exit_2_one_line(cli(["predict", image_folder / "dark", "--model", folder / "model.keras", "-q"]),
                           "HDF5")


def test_model_with_a_class_from_another_tool_is_exit_2(cli, image_folder, tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="othertool")
    class Widget(keras.layers.Layer):
        def call(self, x):
            return x

    folder = model_folder(tmp_path / "other")
    keras.Sequential([keras.Input((None, None, 3)), Widget(), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(3, activation="softmax")]).save(folder / "model.keras")
    del keras.saving.get_custom_objects()["othertool>Widget"]  # as in a process without that tool
    assert_exit_2_one_line(cli(["predict", image_folder / "dark", "--model", folder / "model.keras", "-q"]),
                           "Widget")


@pytest.mark.parametrize("kind, fragment", [("grayscale input", "not a batch of RGB images"),
                                            ("image output", "not one probability per class")])
def test_model_of_another_shape_is_exit_2_not_a_traceback(cli, image_folder, tmp_path, kind, fragment):
    import keras

    folder = model_folder(tmp_path / "shape")
    if kind == "grayscale input":
        inputs = keras.Input((64, 64, 1))
        outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    else:
        inputs = keras.Input((None, None, 3))
        outputs = keras.layers.Conv2D(3, 3)(inputs)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    assert_exit_2_one_line(cli(["predict", image_folder / "dark", "--model", folder / "model.keras", "-q"]),
                           fragment)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_labels_that_disagree_with_the_model_are_exit_2(command, cli, trained_run, image_folder, tmp_path):
    folder = model_folder(tmp_path / "run", labels=("bright", "dark"))
    shutil.copy(trained_run / "model.keras", folder / "model.keras")
    target = image_folder / "dark" if command == "predict" else image_folder
    assert_exit_2_one_line(cli([command, target, "--model", folder / "model.keras", "-q"]),
                           "outputs 3 classes", "lists 2")

"""`tlcli explain` and `evaluate --explain`: Grad-CAM that points at the evidence, for every backbone."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES

# ---------------------------------------------------------------- the heatmap points at the object

SIZE, OBJECT, MARGIN = 48, 12, 4  # px: image, square object, slack around it (half a feature cell)
COLOURS = {"green": (40, 200, 60), "red": (220, 40, 40)}
SEED = int(os.environ.get("TLCLI_EXPLAIN_SEED", "0"))  # fixed; the variable is for checking other seeds


def make_object_folder(root: Path, per_class: int, seed: int) -> dict[str, tuple[int, int]]:
    """Grey noise with one colour square anywhere: the square's colour is the class, so the only
    evidence is inside the square. Returns {path: (x, y) of the square's top-left corner}."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(60, 190, (SIZE, SIZE, 1)).repeat(3, axis=2).astype(np.uint8)
            x, y = (int(v) for v in rng.integers(0, SIZE - OBJECT + 1, 2))
            image[y:y + OBJECT, x:x + OBJECT] = colour
            path = root / name / f"{name}_{i}.png"
            Image.fromarray(image).save(path)
            boxes[str(path)] = (x, y)
    return boxes


@pytest.fixture(scope="module")
def object_run(tmp_path_factory) -> Path:
    """The tiny backbone trained from scratch (all layers) to tell the squares apart."""
    from tlcli.config import AugmentConfig, TrainConfig
    from tlcli.train import train

    root = tmp_path_factory.mktemp("objects")
    make_object_folder(root / "data", 24, SEED)
    config = TrainConfig(str(root / "data"), backbone="tiny", weights="none", image_size=SIZE, epochs=3,
                         fine_tune_epochs=8, unfreeze="1.0", fine_tune_lr=1e-3, batch_size=16, cache_views=1,
                         augment=AugmentConfig(enabled=False), project=str(root / "runs"), seed=SEED)
    return train(config, quiet=True).run_dir


def test_heatmap_mass_lies_on_the_object(object_run, tmp_path):
    from tlcli.explain import explain_files
    from tlcli.overlay import upsample
    from tlcli.rundir import resolve_model

    boxes = make_object_folder(tmp_path / "test", 8, SEED + 100)
    result = explain_files(resolve_model(object_run), [str(tmp_path / "test")], output=tmp_path / "out", quiet=True)
    assert result.layer == "relu2" and result.grid == (6, 6)
    # Three stride-2 "same" convolutions pad on the bottom/right only: each cell looks 3.5 px
    # (0.4375 of its 8) further down and right than a plain stretch puts it.
    assert result.span == ((-0.4375, 5.5625), (-0.4375, 5.5625))

    fractions, peaks_inside, correct = [], 0, 0
    for row, cam in zip(result.rows, result.cams):
        assert row["error"] is None and Path(row["heatmap"]).is_file()
        correct += row["predicted"] == Path(row["path"]).parent.name
        x, y = boxes[row["path"]]
        heat = upsample(cam, SIZE, SIZE, result.span)
        inside = np.zeros((SIZE, SIZE), bool)
        inside[max(0, y - MARGIN):y + OBJECT + MARGIN, max(0, x - MARGIN):x + OBJECT + MARGIN] = True
        fractions.append(heat[inside].sum() / heat.sum())
        py, px = np.unravel_index(np.argmax(heat), heat.shape)
        cell = SIZE // result.grid[0]  # the peak is as coarse as the grid: within a cell of the square
        peaks_inside += bool(y - cell <= py < y + OBJECT + cell and x - cell <= px < x + OBJECT + cell)
    fractions = np.asarray(fractions)
    area = (OBJECT + 2 * MARGIN) ** 2 / SIZE**2  # 17% of the image at most (less at the borders)
    print(f"heatmap mass on the object: mean {fractions.mean():.2f}, min {fractions.min():.2f} "
          f"(its area: <= {area:.2f}); peak on it in {peaks_inside}/{len(fractions)}")
    assert correct >= 0.9 * len(fractions)
    assert fractions.mean() >= 0.5  # three times its share of the area, and more
    assert fractions.min() >= 0.3
    assert peaks_inside >= 0.9 * len(fractions)


def test_heatmap_of_the_other_class_is_elsewhere_or_empty(object_run, tmp_path):
    """Explaining the class that is *not* in the image finds no evidence on the square."""
    from tlcli.gradcam import Explainer
    from tlcli.overlay import upsample
    from tlcli.model import load_classifier

    boxes = make_object_folder(tmp_path / "test", 4, SEED + 200)
    explainer = Explainer(load_classifier(object_run / "model.keras"), list(COLOURS))
    paths = sorted(boxes)
    images = np.stack([np.asarray(Image.open(p)) for p in paths])
    other = [1 - sorted(COLOURS).index(Path(p).parent.name) for p in paths]
    cams, probs = explainer.explain(images, other)
    for path, cam, cls, p in zip(paths, cams, other, probs):
        x, y = boxes[path]
        heat = upsample(cam, SIZE, SIZE, explainer.span)
        on_object = heat[y:y + OBJECT, x:x + OBJECT].mean()
        assert on_object <= 0.3 or heat.sum() == 0, (path, on_object)
        assert p[cls] < 0.5


# ---------------------------------------------------------------- the command


def _inputs(tmp_path: Path, image_folder: Path) -> Path:
    """Two folders with a same-named image, a wide image, and one broken file."""
    root = tmp_path / "in"
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        shutil.copy(image_folder / "bright" / "bright_0.jpg", root / sub / "same.jpg")
    Image.fromarray(np.full((150, 300, 3), 200, np.uint8)).save(root / "wide.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return root


def test_explain_files_folders_and_globs(cli, trained_run, image_folder, tmp_path):
    root = _inputs(tmp_path, image_folder)
    out = tmp_path / "out"
    result = cli(["explain", root / "a", str(root / "b" / "*.jpg"), root / "wide.png", "--model", trained_run,
                  "-o", out, "--json", "-q"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in rows] == ["same.jpg", "same.jpg", "wide.png"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["contact_sheet.png", "same-2.png", "same.png", "wide.png"]  # unique names
    assert all(r["label"] in CLASSES and 0 <= r["confidence"] <= 1 and r["error"] is None for r in rows)
    assert all(r["label"] == r["predicted"] for r in rows)
    # Drawn over the original (300x150), not over the 32 px the model saw; a 40 px one is enlarged.
    assert Image.open(out / "wide.png").size == (300, 150)
    assert Image.open(out / "same.png").size == (280, 280)
    assert Image.open(out / "contact_sheet.png").size[0] > 480


def test_unreadable_file_is_reported_and_the_rest_explained(cli, trained_run, image_folder, tmp_path):
    root = _inputs(tmp_path, image_folder)
    out = tmp_path / "out"
    result = cli(["explain", root / "broken.jpg", root / "wide.png", tmp_path / "missing.jpg", "--model",
                  trained_run, "-o", out])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "2 of 3 input(s) failed" in result.output and "file not found" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["wide.png"]  # one image: no contact sheet


def test_default_output_is_the_runs_explain_folder(cli, trained_run, image_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the shared run stays untouched
    result = cli(["explain", image_folder / "dark" / "dark_1.png", "--model", run, "-q"])
    assert result.exit_code == 0, result.output
    assert (run / "explain" / "dark_1.png").is_file()


def test_class_option(cli, trained_run, image_folder, tmp_path):
    image = image_folder / "striped" / "striped_0.jpg"
    result = cli(["explain", image, "--model", trained_run, "--class", "DARK", "-o", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["label"] == "dark" and row["predicted"] in CLASSES
    bad = cli(["explain", image, "--model", trained_run, "--class", "stripes", "-o", tmp_path])
    assert bad.exit_code == 2 and "Did you mean: striped" in bad.output


def test_tflite_model_needs_the_keras_model(cli, trained_run, image_folder, tmp_path):
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    for name in ("labels.txt", "config.json"):
        shutil.copy(trained_run / name, tmp_path / "run" / name)
    (export / "model.tflite").write_bytes(b"not even read")
    result = cli(["explain", image_folder / "dark" / "dark_1.png", "--model", export / "model.tflite"])
    assert result.exit_code == 2
    assert "explanations need the Keras model" in result.output and "Traceback" not in result.output
    result = cli(["evaluate", image_folder, "--model", export / "model.tflite", "--explain"])
    assert result.exit_code == 2 and "explanations need the Keras model" in result.output
    (export / "model.onnx").write_bytes(b"not even read")
    result = cli(["explain", image_folder / "dark" / "dark_1.png", "--model", export / "model.onnx"])
    assert result.exit_code == 2 and "is a .onnx model" in result.output


def test_evaluate_explain_puts_heatmaps_beside_the_mistakes(cli, trained_run, image_folder, tmp_path):
    # The class folders swapped round: nearly every image is a mistake, so the gallery is full.
    swapped = tmp_path / "swapped"
    for source, target in zip(CLASSES, CLASSES[1:] + CLASSES[:1]):
        shutil.copytree(image_folder / source, swapped / target)
    plain = cli(["evaluate", swapped, "--model", trained_run, "-o", tmp_path / "plain", "--max-errors", "4", "-q"])
    explained = cli(["evaluate", swapped, "--model", trained_run, "-o", tmp_path / "explained", "--max-errors", "4",
                     "--explain", "-q"])
    assert plain.exit_code == 0 and explained.exit_code == 0, explained.output
    metrics = json.loads((tmp_path / "explained" / "metrics.json").read_text())
    assert metrics["worst_errors"]
    plain_size = Image.open(tmp_path / "plain" / "errors.png").size
    explained_size = Image.open(tmp_path / "explained" / "errors.png").size
    assert explained_size[0] > 1.3 * plain_size[0]  # each mistake now has its heatmap beside it


def test_with_heatmaps_sets_each_image_beside_its_heatmap(trained_run, image_folder):
    from tlcli.images import load_image
    from tlcli.explain import with_heatmaps
    from tlcli.model import load_classifier

    image = load_image(image_folder / "bright" / "bright_0.jpg", 32)
    classifier = load_classifier(trained_run / "model.keras")
    side_by_side = with_heatmaps(classifier, list(CLASSES), lambda i: image, {0: 1})(0)
    assert side_by_side.shape == (32, 32 + 2 + 32, 3) and side_by_side.dtype == np.uint8
    assert (side_by_side[:, :32] == image).all()
    assert not (side_by_side[:, 34:] == image).all()


def test_label_option_explains_any_label_of_a_multi_label_model(cli, fixed_multilabel_run, image_folder, tmp_path):
    # Every image: circle 0.8 (threshold 0.5), square 0.3 (0.25), triangle 0.55 (0.6).
    result = cli(["explain", image_folder / "dark" / "dark_0.jpg", "--model", fixed_multilabel_run,
                  "--label", "triangle", "-o", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["label"], row["confidence"], row["threshold"], row["present"]) == ("triangle", pytest.approx(0.55),
                                                                                  0.6, False)
    assert (row["predicted"], row["predicted_confidence"]) == ("circle", pytest.approx(0.8))  # the most probable

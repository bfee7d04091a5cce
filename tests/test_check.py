"""`tlcli check`: planted duplicates, leakage and label errors are found; a clean folder is not flagged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FLOWERS, KERAS_HOME, requires_flowers, use_keras_home

COLOURS = {"red": (200, 60, 50), "green": (60, 170, 70), "blue": (50, 80, 200)}
SIZE = (160, 120)
MOVED = [("train", "red", "red_05.png", "blue"), ("train", "red", "red_06.jpg", "green"),
         ("train", "green", "green_07.png", "red"), ("train", "blue", "blue_08.jpg", "red"),
         ("val", "blue", "blue_v2.jpg", "green")]


def smooth_image(rng: np.random.Generator, colour, size=SIZE) -> Image.Image:
    """A class colour under smooth random blotches (a 6x5 field, upsampled) and fine grain: every
    image has its own layout of light and dark, so only copies of one share a perceptual hash."""
    coarse = np.clip(np.array(colour) + rng.normal(0, 30, (5, 6, 3)), 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), np.int16)
    grain = rng.integers(-10, 11, smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def make_split_folder(root: Path, seed: int, train: int = 14, val: int = 6) -> Path:
    """train/ and val/ folders of three colour classes, PNG and JPEG alternately."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        for split, count in (("train", train), ("val", val)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                stem = f"{name}_{i:02d}" if split == "train" else f"{name}_v{i}"
                smooth_image(rng, colour).save(folder / f"{stem}{'.png' if i % 2 else '.jpg'}", quality=92)
    return root


def plant(root: Path) -> dict:
    """An exact copy across train and val, a resized and re-encoded copy across them too, and
    five images filed under the wrong class. Returns where each planted file is."""
    exact = (root / "train/red/red_00.jpg", root / "val/red/red_copy.jpg")
    shutil.copyfile(*exact)
    original = root / "train/green/green_03.png"
    near = root / "val/green/green_small.jpg"
    Image.open(original).resize((88, 66), Image.LANCZOS).save(near, quality=70)
    moved = []
    for split, cls, name, wrong in MOVED:
        target = root / split / wrong / name
        shutil.move(root / split / cls / name, target)
        moved.append(str(target))
    return {"exact": {str(p) for p in exact}, "near": {str(original), str(near)}, "moved": set(moved)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = make_split_folder(tmp_path_factory.mktemp("planted") / "data", seed=1)
    return root, plant(root)


@pytest.fixture(scope="module")
def planted_result(planted, tmp_path_factory):
    from tlcli.check import check_folder

    root, _ = planted
    out = tmp_path_factory.mktemp("planted_out")
    return check_folder(root, features="pixels", output=out / "check", write_clean=out / "clean.txt", quiet=True)


def paths_of(result, group) -> set[str]:
    return {result.files[i]["path"] for i in group["members"]}


def snapshot(root: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the planted cases


def test_exact_duplicate_across_train_and_val_is_leakage(planted, planted_result):
    _, truth = planted
    assert [paths_of(planted_result, g) for g in planted_result.exact] == [truth["exact"]]
    assert planted_result.exact[0]["kinds"] == ["leakage"]


def test_resized_reencoded_copy_is_a_near_duplicate(planted, planted_result):
    _, truth = planted
    assert [paths_of(planted_result, g) for g in planted_result.near] == [truth["near"]]
    (i, j, bits, cosine), = planted_result.near[0]["pairs"]
    assert bits <= 6 and cosine is None  # found by the perceptual hash (no embeddings in pixels mode)
    assert planted_result.near[0]["kinds"] == ["leakage"]


def test_moved_images_are_the_likely_label_errors(planted, planted_result):
    _, truth = planted
    found = {planted_result.files[s["index"]]["path"]: s for s in planted_result.suspects}
    assert set(found) == truth["moved"]
    for split, cls, name, wrong in MOVED:
        s = found[str(planted[0] / split / wrong / name)]
        assert (s["given"], s["likely"]) == (wrong, cls)
        assert s["p_likely"] > 0.5 > s["p_given"]


def test_clean_folder_flags_nothing(tmp_path):
    from tlcli.check import check_folder

    root = make_split_folder(tmp_path / "data", seed=2)
    result = check_folder(root, features="pixels", output=tmp_path / "out", quiet=True)
    assert (result.exact, result.near, result.suspects, result.issues()) == ([], [], [], [])
    assert len(result.files) == 60 and not (tmp_path / "out" / "duplicates.png").exists()


def test_outputs_are_written_and_captioned(planted, planted_result):
    from tlcli.check_report import duplicate_tiles, suspect_tiles

    out = planted_result.out_dir
    saved = json.loads((out / "check.json").read_text())
    assert saved["issues"] == planted_result.issues() and len(saved["suspects"]) == 5
    assert {m["path"] for m in saved["exact_duplicates"][0]["members"]} == planted[1]["exact"]
    for name in ("duplicates.png", "suspects.png"):
        assert Image.open(out / name).format == "PNG"
    captions = [lines for _, lines in duplicate_tiles(planted_result)]
    assert captions[0] == ["train/red/red_00.jpg", "train: red", "#1 exact, leakage"]
    assert captions[1] == ["val/red/red_copy.jpg", "val: red", "#1 exact, leakage"]
    assert ["val/green/green_small.jpg", "val: green", "#2 near, leakage"] in captions
    first = suspect_tiles(planted_result)[0][1]
    assert first[0].endswith(".png") or first[0].endswith(".jpg")
    assert first[1].startswith("filed: ") and first[2].startswith("likely: ")


def test_users_files_are_never_touched(tmp_path):
    from tlcli.check import check_folder
    from tlcli.errors import TlcliError

    root = make_split_folder(tmp_path / "data", seed=3, train=6, val=2)
    plant_copy = root / "val/red/copy.jpg"
    shutil.copyfile(root / "train/red/red_00.jpg", plant_copy)
    before = snapshot(root)
    check_folder(root, features="pixels", output=tmp_path / "out", write_clean=tmp_path / "clean.txt", quiet=True)
    assert snapshot(root) == before
    with pytest.raises(TlcliError, match="inside DATA_DIR"):
        check_folder(root, features="pixels", output=root / "check", quiet=True)
    with pytest.raises(TlcliError, match="not a tlcli file list"):
        check_folder(root, features="pixels", output=tmp_path / "out", write_clean=plant_copy, quiet=True)
    assert snapshot(root) == before


# ---------------------------------------------------------------- the clean list


def test_clean_list_leaves_out_copies_and_suspects_and_train_reads_it(planted, planted_result):
    from tlcli.check import quick_check
    from tlcli.data import find_folder

    root, truth = planted
    listed = Path(planted_result.written["clean_list"])
    assert listed.read_text().splitlines()[2] == "path,label,split"  # a CSV label file, after two comments
    folder = find_folder(listed)
    kept = {p for split in (folder.train, folder.val) for p in split.paths}
    every = {f["path"] for f in planted_result.files}
    # The train copy of each duplicate stays; its val copy and the moved images go.
    assert every - kept == {str(root / "val/red/red_copy.jpg"), str(root / "val/green/green_small.jpg")} | truth["moved"]
    assert set(folder.val.paths) == {f["path"] for f in planted_result.files if f["split"] == "val"} - (every - kept)
    assert folder.class_names == ["blue", "green", "red"]
    assert quick_check(listed) is None  # the leak is gone


def test_file_list_format(tmp_path):
    from tlcli.data import find_folder
    from tlcli.errors import TlcliError

    root = make_split_folder(tmp_path / "data", seed=4, train=4, val=0)
    (tmp_path / "list.txt").write_text("# comment\nall\tred\tdata/train/red/red_00.jpg\n"
                                       f"all\tred\t{root}/train/red/red_01.png\nall\tred\tdata/train/red/red_02.jpg\n"
                                       "all\tblue\tdata/train/blue/blue_00.jpg\nall\tblue\tdata/train/blue/blue_01.png\n")
    folder = find_folder(tmp_path / "list.txt", val_split=0.5, seed=0)
    assert folder.class_names == ["blue", "red"] and len(folder.train) + len(folder.val) == 5
    assert str(root / "train/red/red_00.jpg") in folder.train.paths + folder.val.paths  # relative to the list
    (tmp_path / "bad.txt").write_text("train\tred\n")
    with pytest.raises(TlcliError, match="line 1: expected split<TAB>class<TAB>path"):
        find_folder(tmp_path / "bad.txt")
    (tmp_path / "mixed.txt").write_text("all\tred\ta.jpg\ntrain\tred\tb.jpg\n")
    with pytest.raises(TlcliError, match="mixes split 'all'"):
        find_folder(tmp_path / "mixed.txt")


# ---------------------------------------------------------------- train's cheap check


def test_quick_check_warns_of_leakage_without_decoding(planted, monkeypatch):
    import tlcli.images
    from tlcli.check import quick_check

    monkeypatch.setattr(tlcli.images, "load_image", lambda *a: pytest.fail("quick_check decoded an image"))
    root, _ = planted
    warning = quick_check(root)
    assert warning == (f"1 group(s) of identical image files in {root} (1 of them across train/val, which "
                       f"inflates the validation score); see them with: tlcli check {root}")


def test_quick_check_is_silent_on_a_clean_folder(tmp_path):
    from tlcli.check import quick_check

    root = make_split_folder(tmp_path / "data", seed=5, train=4, val=2)
    assert quick_check(root) is None
    shutil.copyfile(root / "train/red/red_00.jpg", root / "train/red/again.jpg")
    assert "(none across train/val)" in quick_check(root)


# ---------------------------------------------------------------- folder health


def test_folder_health(tmp_path):
    from tlcli.check import check_folder

    root = tmp_path / "data"
    rng = np.random.default_rng(6)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        count = {"red": 40, "green": 12, "blue": 12}[name]
        for i in range(count):
            image = smooth_image(rng, colour)
            if name == "green" and i < 8:
                image = image.convert("L")
            image.save(root / name / f"{name}_{i:02d}.png")
    smooth_image(rng, COLOURS["blue"], (40, 30)).save(root / "blue" / "tiny.png")
    smooth_image(rng, COLOURS["blue"], (400, 100)).save(root / "blue" / "banner.png")
    (root / "blue" / "page.jpg").write_text("<html><body>404</body></html>")
    result = check_folder(root, features="none", output=tmp_path / "out", quiet=True)
    h = result.health
    assert h["unreadable"] == [{"path": str(root / "blue" / "page.jpg"),
                                "reason": "not an image Pillow can read (an HTML page: a failed download?)"}]
    assert [r["path"] for r in h["tiny"]] == [str(root / "blue" / "tiny.png")]
    assert [(r["width"], r["height"]) for r in h["extreme_aspect"]] == [(400, 100)]
    assert h["grey"]["by_class"] == {"blue": 0, "green": 8, "red": 0}
    assert h["classes"]["red"] == {"train": 32, "val": 8} and h["classes"]["blue"] == {"train": 11, "val": 3}
    assert h["few_val"] == {"blue": 3, "green": 2}  # 20% of 12 or 14 images
    warnings = "\n".join(h["warnings"])
    for expected in ("1 unreadable file", "imbalanced classes: red has 32 training images, green 10",
                     "1 tiny image", "1 image(s) more than 3 times", "8 of 12 green images are greyscale",
                     "2 class(es) with under 5 validation images: blue (3), green (2)"):
        assert expected in warnings
    assert result.suspects == [] and result.features == "none"


# ---------------------------------------------------------------- the rules, by hand


def test_find_suspects_rule():
    from tlcli.suspects import find_suspects

    probs = np.array([[0.90, 0.05, 0.05], [0.80, 0.15, 0.05], [0.85, 0.10, 0.05],  # filed 0, look 0
                      [0.10, 0.85, 0.05], [0.05, 0.90, 0.05],  # filed 1, look 1
                      [0.02, 0.93, 0.05],  # filed 0, looks 1 surely: flagged
                      [0.30, 0.55, 0.15],  # filed 0, 1 at 0.55: below class 1's mean on its own images (0.875)
                      [0.45, 0.52, 0.03]])  # likewise
    given = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    assert find_suspects(probs, given) == [(5, 1, 0.02, 0.93)]
    probs[6] = [0.08, 0.90, 0.02]  # now confidently 1 (and 0's mean falls to 0.52)
    assert [row for row, *_ in find_suspects(probs, given)] == [5, 6]  # surest first
    probs[7] = [0.03, 0.60, 0.37]  # 1 below its mean, but 0 at under a tenth of its own: contradicted
    assert [row for row, *_ in find_suspects(probs, given)] == [5, 6, 7]
    judged = np.ones(8, bool)
    judged[5] = False
    assert [row for row, *_ in find_suspects(probs, given, judged)] == [6, 7]


def test_near_groups_combine_the_hash_and_embeddings():
    from tlcli.similarity import near_groups

    def in_plane(plane: int, degrees: float) -> list[float]:  # pairs in separate planes: cos 0 across
        row = [0.0] * 8
        row[2 * plane], row[2 * plane + 1] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        return row

    files = [{"split": "train", "class": "a"}] * 8
    hashes = np.array([0xAAAA_AAAA_AAAA_AAAA, 0x5555_5555_5555_5555,  # 0-1: 64 bits, cos 0
                       0xF0, 0xFFFFF,  # 2-3: 16 bits, cos 0.985
                       0xFFFF_FF00_0000_0000, 0xFFFF_FF00_0000_0003,  # 4-5: 2 bits, cos 0.87
                       0xFFFF_0000_FFFF_0000, 0x0000_FFFF_0000_FFFF], np.uint64)  # 6-7: 64 bits, cos 0.89
    embeddings = np.array([in_plane(3, 0), in_plane(3, 90), in_plane(0, 0), in_plane(0, 10),
                           in_plane(1, 0), in_plane(1, 30), in_plane(2, 0), in_plane(2, 27)], np.float32)
    ok = np.ones(8, bool)
    assert [g["members"] for g in near_groups(files, ok, hashes, embeddings, [])] == [[2, 3], [4, 5]]
    hashes[7] = hashes[6] ^ np.uint64(0xFF)  # now 8 bits apart: with cos 0.89 the two rules together join them
    assert [g["members"] for g in near_groups(files, ok, hashes, embeddings, [])] == [[2, 3], [4, 5], [6, 7]]
    assert [g["members"] for g in near_groups(files, ok, hashes, None, [])] == [[4, 5]]  # the hash alone
    assert near_groups(files, ok, hashes, None, [{"members": [4, 5]}]) == []  # an exact group already
    ok[5] = False
    assert near_groups(files, ok, hashes, None, []) == []  # unreadable: not compared


def test_model_probabilities_judge_the_labels():
    from tlcli.suspects import from_model

    files = [{"path": f"{cls}{i}", "split": split, "class": cls}
             for cls, split, i in [("a", "train", 0), ("a", "train", 1), ("a", "val", 2), ("b", "train", 3),
                                   ("b", "val", 4), ("c", "train", 5), ("a", "train", 6), ("a", "train", 7)]]
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.9, 0.1], [0.8, 0.2],  # columns: b, a
                      [0.5, 0.5], [0.97, 0.03], [np.nan, np.nan]], np.float32)
    ok = np.array([True] * 7 + [False])
    notes = []
    found = from_model(files, probs, ["b", "a"], ok, notes)
    assert found == [{"index": 6, "given": "a", "likely": "b", "p_given": 0.03, "p_likely": 0.97}]
    assert notes == ["the model has no class c: those images are not judged."]
    from_model(files, probs, ["b", "a"], ok, notes, trained_on=True)
    assert "learnt its training images' labels" in notes[-1]


# ---------------------------------------------------------------- real photos


@pytest.mark.slow
@requires_flowers
def test_flowers_planted_cases_with_mobilenet(tmp_path, monkeypatch):
    """flowers-dev through a file list (the photos stay where they are) with five labels
    changed and one photo resized and re-encoded into val: mobilenet_v2 features find them."""
    from tlcli.check import check_folder
    from tlcli.data import find_folder

    use_keras_home(monkeypatch, KERAS_HOME)
    folder = find_folder(FLOWERS)
    names = folder.class_names
    rows = [("train", names[int(label)], path) for path, label in zip(folder.train.paths, folder.train.labels)]
    rows += [("val", names[int(label)], path) for path, label in zip(folder.val.paths, folder.val.labels)]
    moved = {}
    for k, i in enumerate(range(7, len(rows), 70)):  # 5 photos, each filed under the next class
        split, cls, path = rows[i]
        rows[i] = (split, names[(names.index(cls) + 1 + k % 3) % len(names)], path)
        moved[path] = cls
    split, cls, original = rows[20]
    copy = tmp_path / "copy.jpg"
    with Image.open(original) as image:
        image.convert("RGB").resize((image.width // 2, image.height // 2), Image.LANCZOS).save(copy, quality=70)
    rows.append(("val", cls, str(copy)))
    listed = tmp_path / "flowers.txt"
    listed.write_text("".join(f"{s}\t{c}\t{p}\n" for s, c, p in rows))
    result = check_folder(listed, output=tmp_path / "out", quiet=True)
    assert result.features == "mobilenet_v2"
    groups = [{result.files[i]["path"] for i in g["members"]} for g in result.near]
    assert {original, str(copy)} in groups
    found = {result.files[s["index"]]["path"]: s["likely"] for s in result.suspects}
    assert sum(found.get(path) == cls for path, cls in moved.items()) >= 3  # recall ~86%: see tlcli.suspects
    assert len(result.suspects) <= 25  # 12 on flowers-dev as it is


# ---------------------------------------------------------------- the command


def test_check_command(cli, planted, tmp_path):
    root, truth = planted
    result = cli(["check", root, "--features", "pixels", "-o", tmp_path / "out", "--write-clean", tmp_path / "c.txt"])
    assert result.exit_code == 0, result.output
    for line in ("1 exact duplicate group(s) across splits (leakage)", "1 near-duplicate group(s) across splits",
                 "5 likely label error(s)", f"Wrote check.json, duplicates.png, suspects.png to {tmp_path / 'out'}",
                 f"train on it with: tlcli train {tmp_path / 'c.txt'}"):
        assert line in " ".join(result.stdout.split()), line
    result = cli(["check", root, "--features", "pixels", "-o", tmp_path / "out", "--json"])
    report = json.loads(result.stdout)
    assert {s["path"] for s in report["suspects"]} == truth["moved"]
    assert report["features"] == "pixels" and report["n_images"] == 62


def test_check_command_pixels_mode_never_loads_tensorflow(planted, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from tlcli.cli import app; "
            f"r = CliRunner().invoke(app, ['check', {str(planted[0])!r}, '--features', 'pixels', '-o', "
            f"{str(tmp_path / 'out')!r}, '-q']); assert r.exit_code == 0, r.output; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("args, message", [
    (["--features", "resnet"], "unknown --features 'resnet'. Did you mean: resnet50"),
    (["--features", "tiny"], "--features tiny: this backbone has no ImageNet weights"),
    (["--val-split", "1"], "--val-split must be above 0 and below 1"),
    (["--model", "nowhere"], "--model: 'nowhere' does not exist"),
    (["--features", "none", "--label-delimiter", ";"], "is a folder, one label an image (its class folder): "
                                                       "--multi-label and --label-delimiter need a label file"),
    (["--features", "none", "--multi-label"], "is a folder, one label an image"),
    (["--label-delimiter", ""], "--label-delimiter must be the character (or text) between labels"),
])
def test_check_command_bad_input_is_one_line(cli, image_folder, tmp_path, args, message):
    result = cli(["check", image_folder, "-o", tmp_path / "out", *args])
    assert result.exit_code == 2 and result.stderr.startswith("Error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_check_command_with_a_run(cli, trained_run, image_folder):
    """--model: the run's model judges the labels, on its own split; the results go in the run."""
    result = cli(["check", image_folder, "--model", trained_run, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["features"] == f"model: {trained_run / 'model.keras'}"
    assert report["out_dir"] == str(trained_run / "check") and (trained_run / "check" / "check.json").is_file()
    assert "learnt its training images' labels" in " ".join(report["notes"])


@pytest.mark.slow
def test_train_takes_the_clean_list(planted, planted_result, tmp_path):
    from tlcli.config import TrainConfig
    from tlcli.train import train

    listed = planted_result.written["clean_list"]
    config = TrainConfig(listed, backbone="tiny", weights="none", image_size=32, epochs=1, cache_views=1,
                         fine_tune_epochs=0, batch_size=16, project=str(tmp_path / "runs"))
    metrics = train(config, quiet=True).metrics
    assert (metrics["n_train"], metrics["n_val"]) == (38, 17)  # 42 and 20, less the 2 copies and 5 moved


# ---------------------------------------------------------------- multi-label

SHAPE_COLOURS = {"circle": (220, 40, 40), "cross": (40, 170, 40), "square": (40, 70, 220),
                 "triangle": (230, 200, 30)}  # sample_data/shapes.py's
ORACLE_LABELS = ["circle", "cross", "square", "star", "triangle"]  # "star": in no image
ORACLE_THRESHOLDS = [0.5, 0.4, 0.3, 0.5, 0.6]
ON, OFF = 0.9375, 0.0625  # exact in binary: a label's mean over identical values is the value itself


def read_labels(path: Path, delimiter: str = ";") -> dict[str, set[str]]:
    """{absolute image path: its labels} of a path,label[,split] CSV (comment lines skipped),
    read here with the csv module alone."""
    import csv

    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return {os.path.normpath(path.parent / row[0]): set(row[1].split(delimiter)) for row in csv.reader(lines[1:])}


def colour_oracle(monkeypatch, multi_label: bool = True) -> None:
    """Make every model tlcli opens a colour detector of the shapes: ON for each shape whose
    colour covers 20 pixels or more of the image, OFF for the others."""
    import tlcli.runtime

    class Oracle(tlcli.runtime.Runner):
        kind, uses_tensorflow = "tflite", False

        def predict(self, images):
            x = np.asarray(images, np.int16)
            probs = np.full((len(x), len(self.labels)), OFF, np.float32)
            for c, label in enumerate(self.labels):
                if label in SHAPE_COLOURS:
                    near = (np.abs(x - np.array(SHAPE_COLOURS[label])) <= 40).all(axis=-1)
                    probs[near.sum(axis=(1, 2)) >= 20, c] = ON
            return probs

    monkeypatch.setattr(tlcli.runtime, "open_model", lambda ref: Oracle(ref))


def fake_run(root: Path, multi_label: bool = True, delimiter: str | None = ";", data_dir: str = "") -> Path:
    """A run folder that resolve_model takes (labels.txt, config.json, thresholds.json) whose
    model.tflite is an empty file: `colour_oracle` answers for it. Returns the .tflite's path."""
    root.mkdir(parents=True)
    (root / "labels.txt").write_text("\n".join(ORACLE_LABELS) + "\n")
    (root / "config.json").write_text(json.dumps({"data_dir": data_dir, "image_size": 64, "val_split": 0.2, "seed": 0,
                                                  "multi_label": multi_label, "label_delimiter": delimiter}))
    if multi_label:
        (root / "thresholds.json").write_text(json.dumps({"labels": ORACLE_LABELS, "thresholds": ORACLE_THRESHOLDS}))
    (root / "model.tflite").write_bytes(b"")
    return root / "model.tflite"


# (row of shapes_csv, label, how): a label the image has dropped from its row, or one it lacks added.
FLIPS = [(0, "square", "drop"), (4, "square", "add"), (9, "triangle", "drop"), (17, "triangle", "add"),
         (30, "cross", "add"), (45, "cross", "drop")]


@pytest.fixture(scope="module")
def noisy_shapes(shapes_csv, tmp_path_factory) -> tuple[Path, set]:
    """shapes_csv's rows with FLIPS applied, as noisy.csv (absolute paths), and the flips as
    {(image path, label, whether the file gives it)}."""
    import csv

    rows = list(csv.reader(shapes_csv.read_text().splitlines()))[1:]
    planted = set()
    for row, label, how in FLIPS:
        labels = rows[row][1].split(";")
        assert (label in labels) == (how == "drop") and (how == "add" or len(labels) > 1), (row, labels)
        rows[row][1] = ";".join(l for l in labels if l != label) if how == "drop" else rows[row][1] + ";" + label
        planted.add((os.path.normpath(shapes_csv.parent / rows[row][0]), label, how == "add"))
    noisy = tmp_path_factory.mktemp("noisy") / "noisy.csv"
    noisy.write_text("path,labels\n" + "".join(f"{shapes_csv.parent / p},{cell}\n" for p, cell in rows))
    return noisy, planted


def test_find_label_suspects_rule():
    from tlcli.suspects import MARGIN, find_label_suspects

    assert MARGIN == 0.6  # the figures below are worked out for it
    thresholds = [0.5, 0.4, 0.5]  # so a given label is in doubt under 0.2, 0.16; a missing one over 0.8, 0.76
    given = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    probs = np.array([[0.9, 0.1, 0.99], [0.85, 0.7, 0.99], [0.1, 0.9, 0.99],
                      [0.05, 0.1, 0.99],  # 0 given at 0.05: in doubt, 0.9 of the way from its threshold to 0
                      [0.9, 0.8, 0.99],  # 0 missing at 0.9 (over its mean on images with it, 0.6): in doubt, 0.8
                      [0.3, 0.1, 0.99],  # 0 given at 0.3: under its threshold but not far enough
                      [0.78, 0.5, 0.99],  # 0 missing at 0.78: likewise
                      [0.9, 0.97, 0.99]])  # 1 missing at 0.97: in doubt, 0.95 of the way to 1
    # Label 2 is on no image: its 0.99 everywhere puts nothing in doubt.
    assert find_label_suspects(probs, given, thresholds) == [(7, [1]), (3, [0]), (4, [0])]
    typical = probs.copy()
    typical[[2, 4, 6], 0] = 0.01  # the images without label 0 now score it under 0.05: row 3's is usual
    assert find_label_suspects(typical, given, thresholds) == [(7, [1])]
    twice = probs.copy()
    twice[3, 1] = 0.99  # row 3 also misses label 1, surer (0.98 of the way) than its label 0
    assert find_label_suspects(twice, given, thresholds) == [(3, [1, 0]), (7, [1]), (4, [0])]


def test_multi_label_model_finds_the_flipped_labels(cli, noisy_shapes, monkeypatch, tmp_path):
    """--model of a multi-label run: the run's delimiter reads the file; the flipped labels, and
    nothing else, are in doubt; the clean list reads back with train's --label-delimiter."""
    from tlcli.data import find_folder

    noisy, planted = noisy_shapes
    colour_oracle(monkeypatch)
    model = fake_run(tmp_path / "run")
    args = ["check", noisy, "--model", model, "-o", tmp_path / "out", "--write-clean", tmp_path / "clean.csv"]
    report = json.loads(cli([*args, "--json"]).stdout)
    assert (report["multi_label"], report["label_delimiter"], report["classes"]) == (
        True, ";", ["circle", "cross", "square", "triangle"])
    found = {(s["path"], d["label"], d["given"]) for s in report["suspects"] for d in s["disputed"]}
    assert found == planted
    truth = read_labels(noisy)
    for s in report["suspects"]:
        flip = next((label, given) for path, label, given in planted if path == s["path"])
        assert set(s["likely"]) == truth[s["path"]] ^ {flip[0]}  # the image's own shapes
        d = s["disputed"][0]
        assert (d["probability"], d["threshold"]) == (OFF if d["given"] else ON,
                                                      ORACLE_THRESHOLDS[ORACLE_LABELS.index(d["label"])])
    assert "no image here has the model's label(s) star: not judged." in report["notes"]
    assert Image.open(tmp_path / "out" / "suspects.png").format == "PNG"

    clean = tmp_path / "clean.csv"
    folder = find_folder(clean, label_delimiter=";")
    kept = {p: {folder.class_names[c] for c in np.flatnonzero(row)}
            for split in (folder.train, folder.val) for p, row in zip(split.paths, split.labels)}
    assert folder.multi_label and len(kept) >= 100
    assert not {path for path, _, _ in planted} & set(kept)
    assert all(kept[p] == truth[p] for p in kept)

    import tlcli.cli_check
    from rich.console import Console

    monkeypatch.setattr(tlcli.cli_check, "out", Console(width=200))  # table cells unwrapped
    table = " ".join(cli(args).stdout.split())
    for text in (f"{len(planted)} likely label error(s)", "in doubt", "triangle: not labelled, 94% (threshold 60%)",
                 "cross: labelled, 6% (threshold 40%)", f"tlcli train {clean} --label-delimiter ';'"):
        assert text in table, text


def test_multi_label_health_counts_each_label(shapes_csv, tmp_path):
    """Images per label and split, labels per image and the per-label warnings, from a CSV with
    --label-delimiter and from JSON label lists (multi-label by themselves)."""
    import csv
    from collections import Counter

    from tlcli.check import check_folder
    from tlcli.suspects import NO_MODEL_MULTILABEL

    rows = [(str(shapes_csv.parent / p), cell.split(";"), "train" if i < 30 else "val")
            for i, (p, cell) in enumerate(list(csv.reader(shapes_csv.read_text().splitlines()))[1:41])]
    (tmp_path / "rows.csv").write_text("path,labels,split\n" + "".join(f"{p},{';'.join(l)},{s}\n" for p, l, s in rows))
    (tmp_path / "rows.json").write_text(json.dumps([{"path": p, "labels": [*l, "any"], "split": s} for p, l, s in rows]))
    counted = Counter((label, split) for _, labels, split in rows for label in labels)

    result = check_folder(tmp_path / "rows.csv", features="none", output=tmp_path / "out", quiet=True,
                          label_delimiter=";")
    h = result.health
    assert result.multi_label and result.class_names == ["circle", "cross", "square", "triangle"]
    assert h["classes"] == {name: {s: counted[name, s] for s in ("train", "val")} for name in result.class_names}
    assert h["labels_per_image"] == {str(n): k for n, k in sorted(Counter(len(l) for _, l, _ in rows).items())}
    assert h["few_val"] == {"cross": 4, "triangle": 3}  # rows 30-39 of shapes_csv
    assert "2 label(s) on under 5 validation images (each label's threshold is tuned on them): cross (4), " \
           "triangle (3)" in h["warnings"]
    assert result.suspects == [] and NO_MODEL_MULTILABEL in result.notes

    from tlcli.check_report import left_out

    hexagon = tmp_path / "hexagon.png"  # a val image whose one label no training row has
    smooth_image(np.random.default_rng(0), (90, 90, 90), (64, 64)).save(hexagon)
    with open(tmp_path / "rows.csv", "a") as f:
        f.write(f"{hexagon},hexagon,val\n")
    result = check_folder(tmp_path / "rows.csv", features="none", output=tmp_path / "out", quiet=True,
                          label_delimiter=";", write_clean=tmp_path / "clean.csv")
    assert result.health["labels_per_image"]["0"] == 1
    index = next(i for i, f in enumerate(result.files) if f["path"] == str(hexagon))
    assert left_out(result)[index] == "no label of the training rows"
    assert str(hexagon) not in (tmp_path / "clean.csv").read_text()

    listed = check_folder(tmp_path / "rows.json", features="none", output=tmp_path / "out", quiet=True)
    assert listed.multi_label and listed.class_names == ["any", "circle", "cross", "square", "triangle"]
    assert listed.health["classes"]["any"] == {"train": 30, "val": 10}
    assert {k: v for k, v in listed.health["classes"].items() if k != "any"} == h["classes"]
    assert "label(s) on every training image, which the model can only learn to always say: any" in \
        listed.health["warnings"]


@pytest.mark.parametrize("layout, flags, joiner", [
    ("long", ["--multi-label"], ";"),  # one row per image and label
    ("pipe", ["--label-delimiter", "|"], "|"),
    ("long", ["--model"], ";"),  # a run that read a long file: --multi-label by default
])
def test_multi_label_clean_list_reads_back(cli, shapes_csv, monkeypatch, tmp_path, layout, flags, joiner):
    """--write-clean of a multi-label file: every kept image with the same labels, read as
    `tlcli train LIST --label-delimiter JOINER` reads it; the summary says so."""
    import csv

    from tlcli.data import find_folder

    listed = list(csv.reader(shapes_csv.read_text().splitlines()))[1:31]
    rows = [(str(shapes_csv.parent / p), cell.split(";")) for p, cell in listed]
    data = tmp_path / "rows.csv"
    if layout == "long":
        data.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, labels in rows for label in labels))
    else:
        data.write_text("path,labels\n" + "".join(f"{p},{'|'.join(labels)}\n" for p, labels in rows))
    if flags == ["--model"]:
        colour_oracle(monkeypatch)
        flags = ["--model", fake_run(tmp_path / "run", delimiter=None)]
    clean = tmp_path / "clean.csv"
    result = cli(["check", data, *flags, "--features", "none", "-o", tmp_path / "out", "--write-clean", clean])
    assert result.exit_code == 0, result.output
    command = f"tlcli train {clean} --label-delimiter '{joiner}'"
    assert command in " ".join(result.stdout.split()) and command in clean.read_text().splitlines()[1]
    folder = find_folder(clean, label_delimiter=joiner)
    kept = {p: {folder.class_names[c] for c in np.flatnonzero(row)}
            for split in (folder.train, folder.val) for p, row in zip(split.paths, split.labels)}
    assert len(kept) >= 25 and all(kept[p] == set(labels) for p, labels in rows if p in kept)


def test_multi_label_file_and_single_label_model_is_one_line(cli, noisy_shapes, monkeypatch, tmp_path):
    colour_oracle(monkeypatch)
    model = fake_run(tmp_path / "run", multi_label=False)
    result = cli(["check", noisy_shapes[0], "--model", model, "--label-delimiter", ";", "-o", tmp_path / "out"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"gives images several labels and '{model}' gives one class per image" in result.stderr


def test_check_follows_a_multi_label_runs_reading(cli, fixed_multilabel_run, tmp_path):
    """A real multi-label run (a Keras model): its config.json's delimiter reads its label file."""
    from collections import Counter

    from conftest import FIXED_LABELS, FIXED_ROWS

    data = json.loads((fixed_multilabel_run / "config.json").read_text())["data_dir"]
    result = cli(["check", data, "--model", fixed_multilabel_run, "-o", tmp_path / "out", "--json"])
    report = json.loads(result.stdout)
    assert (report["multi_label"], report["label_delimiter"], report["classes"]) == (True, ";", list(FIXED_LABELS))
    counted = Counter((label, split) for _, cell, split in FIXED_ROWS for label in cell.split(";"))
    assert report["health"]["classes"] == {name: {s: counted[name, s] for s in ("train", "val", "test")}
                                           for name in FIXED_LABELS}

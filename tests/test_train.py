"""`tlcli train` end to end on synthetic data, and the flowers-dev acceptance run."""

import csv
import json
import os
import re
import zipfile

import pytest

from typer.testing import CliRunner

from conftest import (FLOWERS, KERAS_HOME, make_folder, read_events, requires_flowers, saved_model_figures,
                      use_keras_home)

TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "32", "--epochs", "2", "--cache-views", "2",
        "--fine-tune-epochs", "1", "--batch-size", "8"]


def test_train_leaves_a_complete_run_directory(cli, trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"model.keras", "labels.txt", "config.json", "history.csv", "metrics.json", "curves.png", ".complete"} <= names
    assert "skipped.csv" not in names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["backbone"] == "tiny" and config["image_size"] == 32 and config["unfreeze"] == 0.5
    assert config["class_names"] == ["bright", "dark", "striped"]
    assert {"tlcli", "tensorflow", "keras"} <= set(config["versions"])
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "2")]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"val_accuracy", "val_loss", "n_train", "n_val", "n_skipped", "seconds", "peak_memory_mb"} <= set(metrics)
    assert metrics["n_train"] + metrics["n_val"] == 24 and metrics["n_skipped"] == 0
    assert {"phase1", "phase2", "total"} <= set(metrics["seconds"])
    assert metrics["saved_model_check"]["agrees"] is True
    assert (trained_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (trained_run.parent / "latest").read_text().strip() == trained_run.name


def test_saved_model_reproduces_reported_val_metrics(trained_run):
    """metrics.json describes the saved model, not the last epoch (end-to-end phase 2)."""
    accuracy, _ = saved_model_figures(trained_run)
    assert accuracy == pytest.approx(json.loads((trained_run / "metrics.json").read_text())["val_accuracy"])


def test_train_cli_json_skips_bad_files_and_never_overwrites(cli, tmp_path):
    data = make_folder(tmp_path / "data", per_class=5, size=32)
    (data / "dark" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "empty").mkdir()
    project = tmp_path / "runs"
    result = cli(["train", data, *TINY, "--fine-tune-epochs", "0", "--project", project, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_skipped"] == 1 and metrics["run_dir"].endswith("train")
    assert "phase2" not in metrics["seconds"]
    skipped = list(csv.DictReader((project / "train" / "skipped.csv").open()))
    assert skipped[0]["path"].endswith("corrupt.png") and skipped[0]["reason"]
    again = cli(["train", data, *TINY, "--fine-tune-epochs", "0", "--project", project, "--quiet"])
    assert again.exit_code == 0 and (project / "train2" / "model.keras").exists()
    assert (project / "latest").read_text().strip() == "train2"


def test_train_with_train_val_layout_and_name(cli, tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=4, size=32)
    make_folder(tmp_path / "d" / "val", per_class=2, size=32, seed=1)
    result = cli(["train", tmp_path / "d", *TINY, "--project", tmp_path / "r", "--name", "exp", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert (metrics["n_train"], metrics["n_val"]) == (12, 6)


@pytest.mark.parametrize("args,message", [
    (["--backbone", "mobilenetv2"], "Did you mean: mobilenet_v2"),
    (["--unfreeze", "many"], "--unfreeze"),
    (["--image-size", "4"], "minimum"),
    (["--patience", "-1"], "--patience must be at least 0"),
])
def test_train_bad_flags_are_one_line_errors(cli, image_folder, tmp_path, args, message):
    result = cli(["train", image_folder, "--weights", "none", *args, "--project", tmp_path])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not any(tmp_path.iterdir())  # nothing created for a run that never started


def test_train_one_class_exits_2(cli, tmp_path):
    make_folder(tmp_path / "d", per_class=3, size=16, classes=("alone",))
    result = cli(["train", tmp_path / "d", *TINY, "--project", tmp_path / "r"])
    assert result.exit_code == 2 and "at least 2 classes" in result.output


def test_train_missing_folder_exits_2(cli, tmp_path):
    result = cli(["train", tmp_path / "nowhere", *TINY])
    assert result.exit_code == 2 and "not a folder" in result.output


@pytest.mark.slow
@requires_flowers
def test_flowers_mobilenet_v2_defaults_reach_080(cli, tmp_path, monkeypatch):
    """Acceptance: default settings on real photos with real ImageNet weights."""
    use_keras_home(monkeypatch, KERAS_HOME)
    result = cli(["train", FLOWERS, "--backbone", "mobilenet_v2", "--project", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    print("flowers-dev val_accuracy:", metrics["val_accuracy"])
    assert metrics["val_accuracy"] >= 0.80
    assert metrics["saved_model_check"]["agrees"] is True
    # evaluate on flowers-dev/val gives the val accuracy the run reported (calibration never
    # changes an answer), and calibration lowered the validation NLL
    run = metrics["run_dir"]
    evaluated = cli(["evaluate", FLOWERS, "--model", run, "-o", tmp_path / "ev", "--json", "-q"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    calibration = metrics["calibration"]
    assert calibration["after"]["nll"] < calibration["before"]["nll"]


@pytest.mark.parametrize("cache_ram_gb", [1.0, 0.0])  # in memory, and spilled to a file
def test_cached_fine_tuning_reports_what_model_keras_computes(tmp_path, image_folder, cache_ram_gb):
    """With pretrained weights (here a saved random-init weights file, so no download) phase 2
    trains on cached activations; the figures reported for the best epoch must be those of
    model.keras run on the validation images themselves."""
    from tlcli.backbones import build_backbone
    from tlcli.config import TrainConfig
    from tlcli.train import train

    weights = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", "none", 32).save_weights(weights)
    config = TrainConfig(str(image_folder), backbone="tiny", weights=str(weights), image_size=32, epochs=1,
                         cache_views=2, fine_tune_epochs=3, fine_tune_lr=1e-2, batch_size=8, label_smoothing=0.0,
                         cache_ram_gb=cache_ram_gb, project=str(tmp_path / "r"))
    result = train(config, quiet=True)
    assert [row["phase"] for row in result.history] == [1, 2, 2, 2]
    assert result.metrics["best_epoch"] > 1, "the check needs a best epoch from the cached phase 2"
    accuracy, cross_entropy = saved_model_figures(result.run_dir)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert cross_entropy == pytest.approx(metrics["val_loss"], rel=1e-3)
    assert not (result.run_dir / ".cache").exists()  # the cache is removed with training


def test_mixed_precision_run_saves_a_float32_model_that_exports(tmp_path, image_folder, cli):
    """A mixed_float16 run (as on a GPU) must save a model that computes in float32 everywhere."""
    from tlcli.config import TrainConfig
    from tlcli.model import load_classifier
    from tlcli.train import train

    config = TrainConfig(str(image_folder), backbone="tiny", weights="none", image_size=32, epochs=1,
                         cache_views=1, fine_tune_epochs=1, batch_size=8, mixed_precision="on",
                         project=str(tmp_path / "r"))
    run = train(config, quiet=True).run_dir
    with zipfile.ZipFile(run / "model.keras") as archive:
        saved_config = archive.read("config.json").decode()
    model = load_classifier(run / "model.keras")
    policies = {layer.dtype_policy.name for layer in model.layers}
    policies |= {layer.dtype_policy.name for layer in model.get_layer("backbone").layers}
    assert policies == {"float32"}
    assert "mixed_float16" not in saved_config and "float16" not in saved_config
    result = cli(["export", "--model", run, "--tflite"])
    assert result.exit_code == 0, result.output


def test_a_saved_model_that_disagrees_with_training_is_reported(tmp_path, image_folder, monkeypatch):
    """The final check runs model.keras itself: a file that does not compute what training
    measured (here, weights altered on their way to disk) is flagged, not hidden."""
    import tlcli.callbacks as callbacks
    from tlcli.config import TrainConfig
    from tlcli.train import train

    real_save = callbacks.save_model

    def corrupting_save(model, path):
        bias = model.get_layer("predictions").bias
        original = bias.numpy()
        bias.assign(original + [5.0, -5.0, -5.0])
        real_save(model, path)
        bias.assign(original)

    monkeypatch.setattr(callbacks, "save_model", corrupting_save)
    config = TrainConfig(str(image_folder), backbone="tiny", weights="none", image_size=32, epochs=1,
                         cache_views=1, fine_tune_epochs=0, batch_size=8, project=str(tmp_path / "r"))
    result = train(config, quiet=True)
    check = json.loads((result.run_dir / "metrics.json").read_text())["saved_model_check"]
    assert check["agrees"] is False and check["val_accuracy"] == pytest.approx(1 / 3)


def test_train_warns_in_one_line_about_identical_files_across_train_and_val(cli, tmp_path):
    import shutil

    make_folder(tmp_path / "d" / "train", per_class=4, size=32)
    make_folder(tmp_path / "d" / "val", per_class=2, size=32, seed=1)
    shutil.copy(tmp_path / "d" / "train" / "dark" / "dark_0.jpg", tmp_path / "d" / "val" / "dark" / "copy.jpg")
    result = cli(["train", tmp_path / "d", *TINY, "--fine-tune-epochs", "0", "--project", tmp_path / "r"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "warning:" in line and "tlcli check" in line]
    assert len(warning) == 1 and ("leak" in warning[0] or "val" in warning[0]), result.output


# ---------------------------------------------------------------- --patience, --tensorboard, --config


class Crash(Exception):
    """Stands for a kill -9 right after an epoch's checkpoint was written."""


def test_patience_and_tensorboard_through_a_crash_and_a_resume(image_folder, tmp_path):
    """A --patience 1 --tensorboard run whose validation score never moves (learning rates of 1e-9),
    so each phase stops after its second epoch; killed right after epoch 2 (the end of phase 1),
    then resumed from the command line. Pretrained weights (a saved random-init file, no download)
    make phase 2 train on cached activations, as with real backbones. One run for all the checks:
    under pytest -n 2 a shared fixture would train once per worker."""
    from tlcli.backbones import build_backbone
    from tlcli.cli import app
    from tlcli.config import TrainConfig
    from tlcli.train import EpochCheckpoint, train

    weights = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", "none", 32).save_weights(weights)
    config = TrainConfig(str(image_folder), backbone="tiny", weights=str(weights), image_size=32, epochs=3,
                         cache_views=1, fine_tune_epochs=3, batch_size=8, lr=1e-9, fine_tune_lr=1e-9, patience=1,
                         tensorboard=True, project=str(tmp_path / "runs"))
    original = EpochCheckpoint.on_epoch_end

    def crash_after_epoch_2(self, epoch, logs=None):
        original(self, epoch, logs)
        if len(self.history) == 2:
            raise Crash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EpochCheckpoint, "on_epoch_end", crash_after_epoch_2)
        with pytest.raises(Crash):
            train(config, quiet=True)
    run = tmp_path / "runs" / "train"
    result = CliRunner().invoke(app, ["train", "--resume", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # --patience: each phase ended after its 2nd epoch; the resumed run did not reopen phase 1
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [(r["epoch"], r["phase"], r["stopped_early"]) for r in rows] == [
        ("1", "1", "0"), ("2", "1", "1"), ("3", "2", "0"), ("4", "2", "1")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped_early"] == {"phase1": 2, "phase2": 4}
    assert metrics["saved_model_check"]["agrees"] is True  # the best model is still the one kept
    summary = " ".join(result.output.split())
    assert "Fine-tuning stopped early at epoch 4: 1 epoch(s) without a better validation score" in summary
    assert re.search(r"stopped early \(phase1\)\W+at epoch 2\W+stopped early \(phase2\)\W+at epoch 4", summary)

    # --tensorboard: every epoch of both phases, once, across the crash; the pictures
    train_events = read_events(run / "tensorboard" / "train")
    validation = read_events(run / "tensorboard" / "validation")
    assert train_events["epoch_loss"] == [(i + 1, pytest.approx(float(r["loss"]))) for i, r in enumerate(rows)]
    assert [step for step, _ in train_events["epoch_accuracy"]] == [1, 2, 3, 4]
    # Phase 1's rate is constant; phase 2's decays along a cosine over its 3 planned epochs (its
    # second epoch starts a third of the way: (1 + cos 60°) / 2 = 0.75 of the rate).
    assert train_events["epoch_learning_rate"] == [(step, pytest.approx(lr, rel=1e-4))
                                                   for step, lr in ((1, 1e-9), (2, 1e-9), (3, 1e-9), (4, 7.5e-10))]
    assert validation["epoch_accuracy"] == [(i + 1, pytest.approx(float(r["val_accuracy"]))) for i, r in enumerate(rows)]
    assert [step for step, _ in validation["epoch_loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in train_events["augmented_images"]] == [0]  # written once: not again on resume
    [(step, (_, _, png))] = validation["confusion_matrix"]
    assert step == 4 and png[:4] == b"\x89PNG"


def test_config_reruns_a_run_in_a_new_folder_with_the_flags_given_on_top(trained_run, cli, tmp_path):
    project = tmp_path / "elsewhere"  # not the shared run's project: its latest run must stay the same
    (project / "train").mkdir(parents=True)
    (project / "train" / "mine.txt").write_text("kept")
    result = cli(["train", "--config", trained_run / "config.json", "--epochs", "1", "--fine-tune-epochs", "0",
                  "--project", project, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_dir"] == str(project / "train2")  # a new folder, never one taken
    assert [p.name for p in (project / "train").iterdir()] == ["mine.txt"]
    before, after = (json.loads((r / "config.json").read_text()) for r in (trained_run, project / "train2"))
    # data_dir and every other setting: the run's
    assert after == {**before, "epochs": 1, "fine_tune_epochs": 0, "project": str(project)}


def test_config_bad_input_is_a_one_line_error(cli, trained_run, tmp_path):
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**json.loads((trained_run / "config.json").read_text()), "fine_tune_epoch": 1}))
    for args, message in [
        (["--config", tmp_path / "missing.json"], f"Error: --config: '{tmp_path / 'missing.json'}' does not exist."),
        (["--config", typo], f"Error: {typo}: unknown setting 'fine_tune_epoch' (did you mean: fine_tune_epochs"),
        (["--config", trained_run, "--resume", trained_run], "Error: --resume continues a run with its own settings"),
    ]:
        result = cli(["train", *args, "--project", tmp_path / "runs"])
        assert result.exit_code == 2 and result.output.startswith(message), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- multi-label (issue 18)


def test_a_multi_label_run_stores_its_mode_thresholds_and_figures(multilabel_run):
    from conftest import PLANTED_MULTILABEL

    config = json.loads((multilabel_run / "config.json").read_text())
    assert config["multi_label"] is True and config["label_delimiter"] == ";"
    labels = (multilabel_run / "labels.txt").read_text().split()
    assert labels == ["circle", "cross", "square", "triangle"]
    thresholds = json.loads((multilabel_run / "thresholds.json").read_text())
    assert set(thresholds) == {"labels", "thresholds", "tuned_on", "metric"}
    assert thresholds["labels"] == labels and (thresholds["tuned_on"], thresholds["metric"]) == ("val", "f1")
    assert len(thresholds["thresholds"]) == 4 and all(0 < t < 1 for t in thresholds["thresholds"])
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    assert metrics["val_macro_f1"] >= 0.9  # the acceptance figure, on this set's validation images
    assert metrics["val_accuracy"] == metrics["val_exact_match"]
    assert metrics["saved_model_check"]["agrees"] is True and "multi-label" in metrics["calibration"]["skipped"]
    assert set(metrics["pos_weights"]) == set(labels)
    # The best epoch was chosen by the validation mAP history.csv records, and metrics.json says which.
    rows = list(csv.DictReader((multilabel_run / "history.csv").open()))
    assert {"map", "val_map"} <= set(rows[0])
    best = max(rows, key=lambda r: (round(float(r["val_map"]), 4), -float(r["val_loss"])))
    assert int(best["epoch"]) == metrics["best_epoch"]
    assert float(best["val_map"]) == pytest.approx(metrics["val_pr_auc"], abs=1e-4)
    with open(multilabel_run / "skipped.csv", newline="") as f:
        skipped = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in csv.DictReader(f)}
    assert {name: reason.split(" (")[0] for name, reason in skipped.items()} == {
        path.rsplit("/", 1)[-1]: why for path, _, why in PLANTED_MULTILABEL}


def test_a_multi_label_model_keras_reproduces_the_figures_at_its_thresholds(multilabel_run):
    """model.keras's sigmoid outputs on the run's validation images, thresholded by hand with
    thresholds.json, give metrics.json's macro F1 and exact match."""
    import numpy as np

    from tlcli.config import TrainConfig
    from tlcli.data import load_folder
    from tlcli.model import load_classifier

    config = TrainConfig.from_dict(json.loads((multilabel_run / "config.json").read_text()))
    folder = load_folder(config.data_dir, config.image_size, config.val_split, config.seed,
                         label_delimiter=config.label_delimiter, multi_label=config.multi_label)
    model = load_classifier(multilabel_run / "model.keras")
    assert model.get_layer("predictions").get_config()["activation"] == "sigmoid"
    probs = model.predict(folder.val.images.astype("float32"), verbose=0)
    thresholds = np.asarray(json.loads((multilabel_run / "thresholds.json").read_text())["thresholds"])
    predicted, truth = probs >= thresholds, folder.val.labels > 0.5
    tp, fp, fn = ((predicted & truth).sum(0), (predicted & ~truth).sum(0), (~predicted & truth).sum(0))
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    assert np.mean(2 * tp / (2 * tp + fp + fn)) == pytest.approx(metrics["val_macro_f1"])
    assert np.mean((predicted == truth).all(1)) == pytest.approx(metrics["val_exact_match"])


def test_quiet_multi_label_training_prints_nothing(shapes_csv, tmp_path):
    """--quiet is silent down to native code: the mAP metric's bool ops make oneDNN log a line
    ("supports DT_BOOL only on platforms with AVX-512") on CPUs without AVX-512."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tlcli", "train", str(shapes_csv), "--label-delimiter", ";",
                           "--backbone", "tiny", "--weights", "none", "--image-size", "32", "--epochs", "1",
                           "--fine-tune-epochs", "1", "--cache-views", "1", "--no-augment",
                           "--project", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")

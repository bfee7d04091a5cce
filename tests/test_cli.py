"""The command line as a whole: documented commands, instant help, lazy TensorFlow."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import tlcli.cli as cli_module
import tlcli.cli_train as cli_train_module
from tlcli.cli import app


def test_every_command_is_documented_with_an_example(cli):
    for command in app.registered_commands:
        doc = command.callback.__doc__ or ""
        assert doc.strip(), command.name
        assert "Example:" in doc, command.name
        name = command.name or command.callback.__name__
        result = cli([name, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_help_and_backbones_do_not_import_tensorflow():
    code = ("import sys; from typer.testing import CliRunner; from tlcli.cli import app; r = CliRunner();"
            "assert r.invoke(app, ['--help']).exit_code == 0;"
            "assert r.invoke(app, ['backbones']).exit_code == 0;"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TF'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backbones_table_lists_every_entry(cli):
    result = cli(["backbones"])
    assert result.exit_code == 0
    for name in ("xception", "mobilenet_v2", "convnext_xlarge", "efficientnetv2_l"):
        assert name in result.output


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "tlcli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "tlcli" in result.stdout


def test_augment_preview_command(cli, image_folder, tmp_path):
    result = cli(["augment-preview", image_folder, "-o", tmp_path / "p.png", "--samples", "2", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").exists()
    bad = cli(["augment-preview", tmp_path / "nothing"])
    assert bad.exit_code == 2


# ---------------------------------------------------------------- flag ranges, checked at parse time

class ReachedTensorFlow(Exception):
    """Raised instead of importing TensorFlow: the command got past all of its flag checks."""


@pytest.fixture
def no_tensorflow(monkeypatch):
    def refuse():
        raise ReachedTensorFlow

    for module in (cli_module, cli_train_module):
        monkeypatch.setattr(module, "_import_tensorflow_quietly", refuse)


@pytest.mark.parametrize("args, message", [
    (["train", "{data}", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "{data}", "--fine-tune-epochs", "-1"], "--fine-tune-epochs"),
    (["train", "{data}", "--cache-views", "0"], "--cache-views"),
    (["train", "{data}", "--cache-ram-gb", "-1"], "--cache-ram-gb"),
    (["train", "{data}", "--lr", "0"], "--lr must be above 0"),
    (["train", "{data}", "--fine-tune-lr", "inf"], "--fine-tune-lr"),
    (["train", "{data}", "--batch-size", "0"], "--batch-size"),
    (["train", "{data}", "--val-split", "1"], "--val-split"),
    (["train", "{data}", "--seed", "-1"], "--seed must be at least 0"),
    (["train", "{data}", "--dropout", "1"], "--dropout"),
    (["train", "{data}", "--label-smoothing", "1"], "--label-smoothing"),
    (["train", "{data}", "--class-weights", "balanced"], "--class-weights"),
    (["train", "{data}", "--mixed-precision", "yes"], "--mixed-precision"),
    (["train", "{data}", "--xla", "yes"], "--xla"),
    (["train", "{data}", "--strategy", "mirored"], "--strategy"),
    (["train", "{data}", "--image-size", "0"], "--image-size 0 is below"),  # 0 used to mean the default
    (["train", "{data}", "--unfreeze", "1.5"], "--unfreeze"),
    (["train", "{data}", "--backbone", "mobilenet_v9"], "mobilenet_v2"),
    (["train", "{data}", "--rotation", "181"], "--rotation must be at least 0 and at most 180"),
    (["train", "{data}", "--shift", "1.5"], "--shift"),
    (["train", "{data}", "--shear", "46"], "--shear must be at least 0 and at most 45"),  # crashed in RandomShear
    (["train", "{data}", "--shear", "89"], "--shear"),
    (["train", "{data}", "--zoom", "-0.1"], "--zoom"),
    (["train", "{data}", "--label-delimiter", ""], "--label-delimiter must be"),
    (["augment-preview", "{data}", "--shear", "60"], "--shear"),
    (["augment-preview", "{data}", "--samples", "0"], "--samples must be at least 1"),
    (["augment-preview", "{data}", "--variants", "0"], "--variants must be at least 1"),
    (["augment-preview", "{data}", "--image-size", "0"], "--image-size must be at least 1"),
    (["augment-preview", "{data}", "--seed", "-1"], "--seed"),
    (["predict", "{data}", "--top-k", "0"], "--top-k must be at least 1"),
    (["predict", "{data}", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "{data}", "--top-k", "0"], "--top-k must be at least 1"),
    (["evaluate", "{data}", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "{data}", "--max-errors", "-1"], "--max-errors must be at least 0"),
    (["evaluate", "{data}", "--split", "validation"], "--split must be one of"),
    (["explain", "{data}", "--batch-size", "0"], "--batch-size"),
    (["export", "--calibration-samples", "0"], "--calibration-samples must be at least 1"),
    (["export", "--min-agreement", "1.5"], "--min-agreement must be at least 0 and at most 1"),
])
def test_a_flag_out_of_range_is_one_line_and_exit_2_before_anything_starts(cli, no_tensorflow, image_folder,
                                                                           tmp_path, args, message):
    """Checked when parsed: no run folder, no TensorFlow (and no model looked up) before the error."""
    project = tmp_path / "runs"
    args = [str(image_folder) if a == "{data}" else a for a in args]
    output = ["-o", project / "preview.png"] if args[0] == "augment-preview" else ["--project", project]
    result = cli([*args, *output])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error:") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not project.exists()


def test_an_error_message_is_printed_as_text_not_as_markup(cli, no_tensorflow, tmp_path):
    """Messages hold paths (which may hold brackets) and "[onnx]"; rich must not eat or choke on them."""
    missing = tmp_path / "[bold]x[/]" / "[onnx]" / "model.onnx"
    result = cli(["predict", "a.jpg", "--model", missing])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: --model: '{missing}' does not exist (give a run folder, .keras, " \
                                    "SavedModel folder, .tflite or .onnx)."


def test_help_shows_the_extra_to_install_not_markup(cli):
    result = cli(["export", "--help"], env={"COLUMNS": "400"})
    assert "needs pip install 'tlcli[onnx]'." in result.output


@pytest.mark.parametrize("command", ["train", "augment-preview"])
def test_the_ends_of_the_augmentation_ranges_are_accepted(cli, no_tensorflow, image_folder, tmp_path, command):
    extremes = ["--rotation", "180", "--shift", "1", "--shear", "45", "--zoom", "1", "--seed", "4294967295"]
    output = ["--project", tmp_path / "runs"] if command == "train" else ["-o", tmp_path / "p.png"]
    with pytest.raises(ReachedTensorFlow):
        cli([command, image_folder, *extremes, *output])


# ---------------------------------------------------------------- --help

@pytest.mark.parametrize("name", [c.name or c.callback.__name__ for c in app.registered_commands])
def test_help_paragraphs_wrap_at_the_terminal_not_at_the_docstring_lines(cli, name):
    """On a terminal wide enough for any paragraph, each one is a single line."""
    from rich.text import Text

    command = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == name)
    result = cli([name, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    for paragraph in inspect.cleandoc(command.callback.__doc__).split("\n\n"):
        text = " ".join(Text.from_markup(paragraph).plain.split())
        assert any(text in line for line in lines), text


# ---------------------------------------------------------------- train: run folder and resume

def test_resume_takes_the_data_dir_the_images_moved_to(cli, monkeypatch, tmp_path):
    import tlcli.train

    calls = []

    def fake_train(config=None, console=None, quiet=False, resume=None, data_dir=None):
        calls.append((resume, data_dir))
        return SimpleNamespace(run_dir=Path(resume), metrics={})

    monkeypatch.setattr(tlcli.train, "train", fake_train)
    assert cli(["train", "--resume", tmp_path / "run", tmp_path / "moved", "--json"]).exit_code == 0
    assert cli(["train", "--resume", tmp_path / "run", "--json"]).exit_code == 0
    assert calls == [(tmp_path / "run", str(tmp_path / "moved")), (tmp_path / "run", None)]
    result = cli(["train"])
    assert result.exit_code == 2 and "DATA_DIR" in result.stderr


@pytest.fixture(scope="module")
def relative_run(image_folder, tmp_path_factory):
    """A run trained from a relative DATA_DIR (typed in its parent folder): (CLI result, run folder)."""
    project = tmp_path_factory.mktemp("relative") / "runs"
    cwd = os.getcwd()
    os.chdir(image_folder.parent)
    try:
        result = CliRunner().invoke(app, ["train", image_folder.name, "--backbone", "tiny", "--weights", "none",
                                          "--image-size", "32", "--epochs", "1", "--cache-views", "1",
                                          "--fine-tune-epochs", "0", "--batch-size", "8", "--project", str(project)],
                                    catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return result, project / "train"


def test_config_json_stores_data_dir_absolute(relative_run, image_folder):
    _, run = relative_run
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(image_folder)


def test_train_says_where_the_curves_are(relative_run):
    result, run = relative_run
    assert f"Curves: {run / 'curves.png'}" in " ".join(result.stdout.split())
    assert (run / "curves.png").is_file()


# ---------------------------------------------------------------- predict's terminal summary

def test_predict_prints_a_summary_for_many_images_and_every_row_with_full(cli, trained_run, image_folder):
    summary = cli(["predict", image_folder, "--model", trained_run, "-q"])
    assert summary.exit_code == 0, summary.output
    assert "24 predictions" in summary.stdout and "First 5 of 24" in summary.stdout
    full = cli(["predict", image_folder, "--model", trained_run, "-q", "--full"])
    assert "24 prediction(s)" in full.stdout and "First 5" not in full.stdout
    few = cli(["predict", image_folder / "dark", "--model", trained_run, "-q"])
    assert "8 prediction(s)" in few.stdout and "First 5" not in few.stdout

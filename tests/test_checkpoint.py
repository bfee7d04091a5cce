"""Interruption, resume, atomic files under kill -9, and full or unwritable disks."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tlcli import checkpoint
from tlcli.config import TrainConfig
from tlcli.errors import TlcliError


def _config(data, project, **changes):
    values = dict(backbone="tiny", weights="none", image_size=32, epochs=3, cache_views=2, fine_tune_epochs=3,
                  batch_size=8, project=str(project))
    values.update(changes)
    return TrainConfig(str(data), **values)


def _interrupt_at(monkeypatch, overall_epoch):
    """Send this process a real SIGINT when `overall_epoch` (1-based, both phases) ends."""
    from tlcli import train as train_module

    original = train_module.HistoryRecorder.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.rows[-1]["epoch"] == overall_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module.HistoryRecorder, "on_epoch_end", on_epoch_end)


@pytest.mark.parametrize("stop_after,phase,epoch_in_phase", [(2, 1, 2), (4, 2, 1)])
def test_sigint_saves_last_checkpoint_and_resume_completes(image_folder, tmp_path, monkeypatch, stop_after, phase,
                                                           epoch_in_phase):
    from tlcli.train import train

    _interrupt_at(monkeypatch, stop_after)
    with pytest.raises(TlcliError) as error:
        train(_config(image_folder, tmp_path), quiet=True)
    assert error.value.exit_code == 130 and "--resume" in str(error.value)
    run = tmp_path / "train"
    state = json.loads((run / "last" / "state.json").read_text())
    # The SIGINT arrives after epoch `stop_after` ended; training stops at the next step.
    assert (state["phase"], state["epoch"]) == (phase, epoch_in_phase)
    assert len(state["history"]) == stop_after
    assert (run / "model.keras").exists() and not (run / ".complete").exists()
    assert not (tmp_path / "latest").exists()

    monkeypatch.undo()
    result = train(resume=run, quiet=True)
    assert result.run_dir == run and result.metrics["resumed"]
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in result.history] == [1, 1, 1, 2, 2, 2]
    assert (run / ".complete").exists() and not (run / "last").exists()
    assert len(list(csv.DictReader((run / "history.csv").open()))) == 6
    assert (tmp_path / "latest").read_text().strip() == "train"


def test_resume_cli_errors(cli, trained_run, tmp_path, image_folder):
    done = cli(["train", "--resume", trained_run])
    assert done.exit_code == 2 and "finished already" in done.output
    neither = cli(["train"])
    assert neither.exit_code == 2 and "DATA_DIR" in neither.output
    (tmp_path / "empty").mkdir()
    missing = cli(["train", "--resume", tmp_path / "empty"])
    assert missing.exit_code == 2 and "no checkpoint" in missing.output


def test_second_signal_stops_at_once():
    with checkpoint.GracefulStop() as stopper:
        stopper._handle(signal.SIGINT, None)
        with pytest.raises(checkpoint.StopRequested):
            stopper.check()
        with pytest.raises(KeyboardInterrupt):
            stopper._handle(signal.SIGINT, None)


KILL_DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import tlcli.callbacks as callbacks
    import tlcli.rundir as rundir
    import tlcli.train as train_module
    from tlcli.config import TrainConfig

    saves = []
    def slow_save(model, path):
        saves.append(path)
        with rundir.atomic_path(path) as tmp:
            model.save(tmp)
            if len(saves) == 2:  # the second save: its new file is half-way to replacing the old one
                Path(sys.argv[3]).write_text(str(tmp))
                time.sleep(60)
    callbacks.save_model = slow_save
    config = TrainConfig(sys.argv[1], backbone="tiny", weights="none", image_size=32, epochs=1, cache_views=1,
                         fine_tune_epochs=20, fine_tune_lr=0.05, batch_size=8, project=sys.argv[2])
    train_module.train(config, quiet=True)
""")


@pytest.mark.slow
def test_kill_9_mid_save_leaves_the_old_file_whole(image_folder, tmp_path):
    marker = tmp_path / "saving"
    process = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, str(image_folder), str(tmp_path / "runs"), str(marker)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "training never reached its second save"
        assert os.path.exists(marker.read_text())  # the new model is on disk under its temporary name
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    run = tmp_path / "runs" / "train"
    from tlcli.model import load_classifier

    model = load_classifier(run / "model.keras")  # the first save, whole
    assert model.output_shape == (None, 3)
    json.loads((run / "config.json").read_text())
    assert not (run / ".complete").exists()


def test_full_disk_is_a_one_line_error_and_the_run_is_not_complete(cli, image_folder, tmp_path, monkeypatch):
    import tlcli.rundir as rundir

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("metrics.json"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(rundir.os, "replace", replace)
    result = cli(["train", image_folder, "--backbone", "tiny", "--weights", "none", "--image-size", "32", "--epochs",
                  "1", "--fine-tune-epochs", "0", "--project", tmp_path])
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "train" / ".complete").exists() and not (tmp_path / "latest").exists()
    assert not [p for p in (tmp_path / "train").iterdir() if ".tmp" in p.name]  # no temporaries left


def test_unwritable_project_folder_is_a_one_line_error(cli, image_folder, tmp_path):
    (tmp_path / "a_file").write_text("x")
    result = cli(["train", image_folder, "--backbone", "tiny", "--weights", "none", "--image-size", "32",
                  "--project", tmp_path / "a_file" / "runs"])
    assert result.exit_code == 2 and "cannot create a run folder" in result.output


KILL_9_DRIVER = textwrap.dedent("""
    import sys
    from tlcli.config import TrainConfig
    from tlcli.train import train

    config = TrainConfig(sys.argv[1], backbone="tiny", weights="none", image_size=32, epochs=2, cache_views=1,
                         fine_tune_epochs=40, batch_size=8, project=sys.argv[2])
    train(config, quiet=True)
""")


@pytest.mark.slow
def test_kill_9_in_phase_2_resumes_from_the_last_epoch(image_folder, tmp_path):
    """No signal handler runs on SIGKILL: the per-epoch checkpoint and history are all there is."""
    run = tmp_path / "runs" / "train"
    process = subprocess.Popen([sys.executable, "-c", KILL_9_DRIVER, str(image_folder), str(tmp_path / "runs")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            try:
                if json.loads((run / "last" / "state.json").read_text())["phase"] == 2:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()[-2000:]
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    state = checkpoint.load_state(run)
    assert state["phase"] == 2 and state["epoch"] >= 1 and state["best"] is not None
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert len(rows) >= len(state["history"]) >= 3  # written at every epoch end, not only at the end
    assert (run / "curves.png").exists() and not (run / ".complete").exists()

    from tlcli.train import train

    result = train(resume=run, quiet=True)
    assert [r["epoch"] for r in result.history] == list(range(1, 43))
    assert [r["phase"] for r in result.history] == [1, 1] + [2] * 40
    assert (run / ".complete").exists() and not (run / "last").exists()


def test_a_kill_between_the_two_renames_keeps_the_previous_checkpoint(tmp_path):
    old = tmp_path / ".last.old"
    old.mkdir()
    (old / "state.json").write_text(json.dumps({"phase": 2, "epoch": 3, "history": [], "best": None}))
    assert checkpoint.load_state(tmp_path)["epoch"] == 3
    assert (tmp_path / "last" / "state.json").exists() and not old.exists()


def test_resume_after_the_data_moved(image_folder, tmp_path, monkeypatch):
    """The error says what to pass; passing the new place resumes and is remembered in config.json."""
    import shutil

    from tlcli.train import train

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(TlcliError):
        train(_config(data, tmp_path / "runs", epochs=2, fine_tune_epochs=1), quiet=True)
    monkeypatch.undo()
    run = tmp_path / "runs" / "train"
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(data)
    moved = data.rename(tmp_path / "moved")
    with pytest.raises(TlcliError) as error:
        train(resume=run, quiet=True)
    assert str(data) in str(error.value) and f"--resume {run} NEW_DATA_DIR" in str(error.value)
    result = train(resume=run, data_dir=moved, quiet=True)
    assert (run / ".complete").exists() and len(result.history) == 3
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(moved)

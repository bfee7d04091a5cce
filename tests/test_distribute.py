"""tf.distribute strategies: selection, chief detection, and a real two-worker run on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import saved_model_figures
from tlcli import distribute
from tlcli.errors import TlcliError


@pytest.mark.parametrize("tf_config,chief", [
    (None, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
])
def test_is_chief(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribute.is_chief() is chief


@pytest.mark.parametrize("strategy", ["one", "auto"])
def test_a_stray_tf_config_does_not_make_a_single_host_run_a_worker(cli, image_folder, tmp_path, monkeypatch,
                                                                      strategy):
    """Worker roles apply only under multiworker: a left-over TF_CONFIG must not throw the run away."""
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    result = cli(["train", image_folder, "--backbone", "tiny", "--weights", "none", "--image-size", "32",
                  "--epochs", "1", "--fine-tune-epochs", "0", "--strategy", strategy, "--project", tmp_path])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train" / ".complete").exists() and (tmp_path / "train" / "model.keras").exists()
    assert "TF_CONFIG is set but ignored" in result.output


def test_strategy_choice_on_this_machine(monkeypatch):
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    assert distribute.make_strategy("auto").num_replicas_in_sync == (gpus if gpus > 1 else 1)
    assert isinstance(distribute.make_strategy("one"), tf.distribute.OneDeviceStrategy)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TlcliError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")


def test_mirrored_strategy_trains_a_complete_run(image_folder, tmp_path):
    from tlcli.config import TrainConfig
    from tlcli.train import train

    result = train(TrainConfig(str(image_folder), backbone="tiny", weights="none", image_size=32, epochs=1,
                               cache_views=2, fine_tune_epochs=1, batch_size=8, strategy="mirrored",
                               project=str(tmp_path)), quiet=True)
    assert (result.run_dir / ".complete").exists()
    assert saved_model_figures(result.run_dir)[0] == pytest.approx(result.metrics["val_accuracy"])


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    except OSError:
        return None
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["none", "file"])
def test_two_workers_train_one_run(image_folder, tmp_path, weights):
    """Two processes on 127.0.0.1 with their own TF_CONFIG: both finish, only the chief writes.

    With a weights file the backbone counts as pretrained, so phase 2 trains on cached
    activations; with none it runs end to end: both paths under MultiWorkerMirroredStrategy."""
    ports = _free_ports(2)
    if ports is None:
        pytest.skip("cannot bind ports on 127.0.0.1")
    weights_arg = "none"
    if weights == "file":
        from tlcli.backbones import build_backbone

        weights_arg = str(tmp_path / "tiny.weights.h5")
        build_backbone("tiny", "none", 32).save_weights(weights_arg)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    project = tmp_path / "runs"
    args = ["train", str(image_folder), "--backbone", "tiny", "--weights", weights_arg,
            "--image-size", "32", "--epochs", "1", "--cache-views", "2", "--fine-tune-epochs", "1",
            "--batch-size", "8", "--strategy", "multiworker", "--project", str(project), "--json"]
    outputs = _run_workers(cluster, lambda i: [LOGGING_DRIVER, str(tmp_path / f"decoded{i}"), *args])
    chief_metrics = json.loads(outputs[0][0])
    runs = [p for p in project.iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["train"]  # the worker wrote no run of its own
    run = runs[0]
    assert (run / ".complete").exists() and chief_metrics["n_train"] > 0
    from tlcli.model import load_classifier

    assert load_classifier(run / "model.keras").output_shape == (None, 3)

    # Each worker decoded only its own shard of the training files; both read the val files.
    from tlcli.data import find_folder

    split = find_folder(str(image_folder), 0.2, 0)
    decoded = [set((tmp_path / f"decoded{i}").read_text().split("\n")) - {""} for i in range(2)]
    train = set(split.train.paths)
    assert decoded[0] & decoded[1] & train == set()
    assert (decoded[0] | decoded[1]) & train == train
    assert all(len(d & train) in (len(train) // 2, len(train) - len(train) // 2) for d in decoded)
    assert set(split.val.paths) <= decoded[0] and set(split.val.paths) <= decoded[1]


def _run_workers(cluster: dict, args_of) -> list[tuple[str, str]]:
    """Run `python -c *args_of(i)` as worker i of `cluster`, all at once; their (stdout, stderr)."""
    workers = []
    for index in range(len(cluster["worker"])):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        workers.append(subprocess.Popen([sys.executable, "-c", *args_of(index)], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
    try:
        outputs = [w.communicate(timeout=240) for w in workers]
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
        pytest.fail("the workers did not finish in time")
    for w, (_, stderr) in zip(workers, outputs):
        assert w.returncode == 0, stderr[-2000:]
    return outputs


LOGGING_DRIVER = """
import sys
from tlcli import images
from tlcli.cli import app

real = images.load_image

def load_image(path, size):  # every file this process decodes, one per line
    with open(sys.argv[1], "a") as log:
        log.write(str(path) + "\\n")
    return real(path, size)

images.load_image = load_image
app(sys.argv[2:])
"""


RESUME_DRIVER = """
import hashlib, sys
import numpy as np
import tlcli.train as train_module
from tlcli.train import train

original = train_module._compile_phase2

def compile_phase2(session, top, augmenter):
    # The weights every replica starts phase 2 from, written where the test can compare them.
    digest = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in session.classifier.get_weights()))
    with open(sys.argv[2], "w") as f:
        f.write(digest.hexdigest())
    return original(session, top, augmenter)

train_module._compile_phase2 = compile_phase2
train(resume=sys.argv[1], quiet=True)
"""


@pytest.mark.slow
def test_two_workers_resume_phase_2_from_the_same_best_weights(image_folder, tmp_path, monkeypatch):
    """A multi-worker run interrupted in phase 1, after its best epoch: on resume every worker must
    restore the same best weights before phase 2, not keep the last epoch's."""
    import signal

    from tlcli import checkpoint
    from tlcli import train as train_module
    from tlcli.config import TrainConfig
    from tlcli.errors import TlcliError

    ports = _free_ports(2)
    if ports is None:
        pytest.skip("cannot bind ports on 127.0.0.1")
    original = train_module.HistoryRecorder.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module.HistoryRecorder, "on_epoch_end", interrupt_after_first_epoch)
    config = TrainConfig(str(image_folder), backbone="tiny", weights="none", image_size=32, epochs=2, cache_views=1,
                         fine_tune_epochs=1, batch_size=8, project=str(tmp_path / "runs"))
    with pytest.raises(TlcliError):
        train_module.train(config, quiet=True)
    monkeypatch.undo()
    run = tmp_path / "runs" / "train"
    # Make the last weights differ from the best ones, and the best score unbeatable, so phase 2
    # must start from the restored best weights on every worker.
    from tlcli.model import build_classifier

    model = build_classifier("tiny", 3, 32, "none")
    model.load_weights(run / "last" / "classifier.weights.h5")
    model.set_weights([w + 0.5 for w in model.get_weights()])
    model.save_weights(run / "last" / "classifier.weights.h5")
    state = json.loads((run / "last" / "state.json").read_text())
    state["best"] = [1.0, 0.0]
    (run / "last" / "state.json").write_text(json.dumps(state))
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "strategy": "multiworker"}))
    assert checkpoint.best_weights(run) is not None

    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    _run_workers(cluster, lambda i: [RESUME_DRIVER, str(run), str(tmp_path / f"w{i}")])
    assert (tmp_path / "w0").read_text() == (tmp_path / "w1").read_text()
    assert (run / ".complete").exists()

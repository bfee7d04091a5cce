"""--patience's arithmetic and callback, and history.csv's columns, on hand-made history rows."""

import csv
from types import SimpleNamespace

import pytest

from tlcli.callbacks import HISTORY_COLUMNS, BestKeeper, Patience, epochs_without_improvement, stopped_early, write_history


def _row(epoch, phase, val_accuracy, val_loss, **extra):
    return {"epoch": epoch, "phase": phase, "loss": 1.0, "accuracy": 0.5, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "lr": 1e-3, "seconds": 0.1, "stopped_early": 0, **extra}


@pytest.mark.parametrize("scores, waited", [
    ([(0.5, 1.0)], 0),
    ([(0.5, 1.0), (0.5, 1.0)], 1),  # the same score is no improvement
    ([(0.5, 1.0), (0.5, 0.9)], 0),  # same accuracy, lower loss: better, as the best model is chosen
    ([(0.5, 1.0), (0.6, 2.0)], 0),  # higher accuracy wins whatever the loss
    ([(0.6, 1.0), (0.5, 0.1), (0.5, 0.05)], 2),  # lower accuracy is worse, however low the loss
    ([(0.6, 1.0), (0.5, 1.0), (0.5, 1.0), (0.7, 1.0), (0.6, 1.0)], 1),
])
def test_epochs_without_improvement_follow_the_best_models_order(scores, waited):
    rows = [_row(i + 1, 1, accuracy, loss) for i, (accuracy, loss) in enumerate(scores)]
    assert epochs_without_improvement(rows, 1) == waited


def test_each_phase_counts_from_its_own_first_epoch():
    rows = [_row(1, 1, 0.9, 0.1), _row(2, 1, 0.8, 0.1), _row(3, 2, 0.5, 1.0), _row(4, 2, 0.6, 1.0)]
    assert epochs_without_improvement(rows, 1) == 1
    assert epochs_without_improvement(rows, 2) == 0  # below phase 1's best, but better than phase 2's


def _patience(rows, phase, patience, epochs):
    callback = Patience(rows, phase, patience)
    callback.set_model(SimpleNamespace(stop_training=False))
    callback.set_params({"epochs": epochs})
    return callback


def test_patience_stops_the_phase_and_marks_the_epoch():
    rows = [_row(1, 1, 0.5, 1.0), _row(2, 1, 0.5, 1.0)]
    callback = _patience(rows, 1, 2, epochs=5)
    callback.on_epoch_end(1)
    assert not callback.model.stop_training and rows[-1]["stopped_early"] == 0
    rows.append(_row(3, 1, 0.5, 1.1))
    callback.on_epoch_end(2)
    assert callback.model.stop_training and rows[-1]["stopped_early"] == 1
    assert stopped_early(rows) == {"phase1": 3}


def test_the_last_epoch_of_a_phase_is_not_an_early_stop():
    rows = [_row(1, 2, 0.5, 1.0), _row(2, 2, 0.5, 1.0)]
    callback = _patience(rows, 2, 1, epochs=2)
    callback.on_epoch_end(1)
    assert not callback.model.stop_training and stopped_early(rows) == {}


def test_history_csv_reads_as_before_and_takes_rows_of_older_checkpoints(tmp_path):
    old = _row(1, 1, 0.5, 1.0)
    del old["stopped_early"]  # a row saved in a checkpoint before the column existed
    write_history(tmp_path, [old, _row(2, 1, 0.5, 1.0, stopped_early=1)], plot=False)
    with (tmp_path / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert HISTORY_COLUMNS[:8] == ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert [(r["epoch"], r["val_accuracy"], r["stopped_early"]) for r in rows] == [("1", "0.5", "0"), ("2", "0.5", "1")]


def test_best_weights_from_a_checkpoint_reach_model_keras_without_a_better_epoch(tmp_path):
    """A run killed before its best epoch was written to model.keras (writes wait up to 30 s) and
    resumed without improving must still save those weights."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = [w + 1 for w in model.get_weights()]
    keeper = BestKeeper(model, tmp_path / "model.keras", best=(0.5, -1.0), best_epoch=1, epochs_seen=1,
                        best_weights=best)
    keeper.on_train_end()
    saved = keras.saving.load_model(tmp_path / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), best))


# ---------------------------------------------------------------- multi-label: mAP decides


def test_multi_label_runs_are_judged_by_val_map_then_loss():
    # Binary accuracy rises while mAP falls: a multi-label run has waited 2 epochs, a single-label one 0.
    rows = [_row(1, 1, 0.80, 1.0, val_map=0.9), _row(2, 1, 0.85, 1.0, val_map=0.7), _row(3, 1, 0.90, 1.0, val_map=0.8)]
    assert epochs_without_improvement(rows, 1, multi_label=True) == 2
    assert epochs_without_improvement(rows, 1) == 0
    rows.append(_row(4, 1, 0.5, 0.9, val_map=0.8999999))  # the same mAP as the best to 4 places, a lower loss: better
    assert epochs_without_improvement(rows, 1, multi_label=True) == 0
    callback = Patience(rows, 1, 1, multi_label=True)
    callback.set_model(SimpleNamespace(stop_training=False))
    callback.set_params({"epochs": 9})
    rows.append(_row(5, 1, 0.99, 0.1, val_map=0.85))
    callback.on_epoch_end(4)
    assert callback.model.stop_training


def test_best_keeper_of_a_multi_label_run_keeps_the_best_map(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keeper = BestKeeper(model, tmp_path / "model.keras", multi_label=True, every_seconds=1e9)
    for logs in ({"val_accuracy": 0.5, "val_loss": 1.0, "val_map": 0.9},
                 {"val_accuracy": 0.9, "val_loss": 0.5, "val_map": 0.8}):
        keeper.on_epoch_end(0, logs)
    assert keeper.best_epoch == 1 and keeper.best == (0.9, -1.0)


def test_history_csv_has_map_columns_only_for_multi_label_rows(tmp_path):
    write_history(tmp_path, [_row(1, 1, 0.5, 1.0)], plot=False)
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == ",".join(HISTORY_COLUMNS)
    write_history(tmp_path, [_row(1, 1, 0.5, 1.0, map=0.6, val_map=0.7)], plot=False)
    with (tmp_path / "history.csv").open() as f:
        row = next(csv.DictReader(f))
    assert list(row)[:len(HISTORY_COLUMNS)] == HISTORY_COLUMNS and (row["map"], row["val_map"]) == ("0.6", "0.7")


def test_history_records_the_rate_a_schedule_gives_each_epoch():
    import keras

    from tlcli.callbacks import HistoryRecorder

    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=10))
    optimizer.build([keras.Variable(0.0)])
    rows = []
    recorder = HistoryRecorder(rows, phase=2, lr=1e-3)
    recorder.set_model(SimpleNamespace(optimizer=optimizer))
    logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
    for step in (0, 5, 10):  # start, half way (cos 90° → half the rate), end
        optimizer.iterations.assign(step)
        recorder.on_epoch_begin(0)
        recorder.on_epoch_end(0, logs)
    assert [row["lr"] for row in rows] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)

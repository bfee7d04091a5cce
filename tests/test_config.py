"""Defaults, "auto" resolution and validation of TrainConfig, and every flag's range."""

import dataclasses
import json
import os

import pytest

from tlcli.config import AUGMENT_FLAGS, AugmentConfig, TrainConfig, check_options, parse_unfreeze
from tlcli.errors import TlcliError


def test_resolve_fills_auto_from_backbone():
    config = TrainConfig("d", backbone="xception").resolve()
    assert config.image_size == 299 and config.unfreeze == 0.3
    assert TrainConfig("d", backbone="mobilenet_v2").resolve().unfreeze == 0.35
    assert TrainConfig("d", image_size=96, unfreeze="12").resolve().image_size == 96


@pytest.mark.parametrize("text,expected", [("40", 40), ("0.3", 0.3), ("1.0", 1.0), ("all", 1.0), (12, 12), (0.5, 0.5)])
def test_parse_unfreeze(text, expected):
    value = parse_unfreeze(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("changes,message", [
    ({"backbone": "mobilenet_v9"}, "mobilenet_v2"),
    ({"image_size": 8}, "minimum"),
    ({"unfreeze": "lots"}, "--unfreeze"),
    ({"unfreeze": "1.5"}, "--unfreeze"),
    ({"val_split": 1.5}, "--val-split"),
    ({"epochs": 0}, "--epochs"),
    ({"class_weights": "balanced"}, "--class-weights"),
    ({"augment": AugmentConfig(rotation=400)}, "--rotation"),
])
def test_resolve_rejects_bad_values_with_a_hint(changes, message):
    with pytest.raises(TlcliError, match=message):
        dataclasses.replace(TrainConfig("d"), **changes).resolve()


def test_round_trip_through_dict_and_unknown_keys_suggest():
    config = TrainConfig("d", epochs=3).resolve()
    data = {**config.to_dict(), "class_names": ["a", "b"], "versions": {}}
    assert TrainConfig.from_dict(data) == config
    with pytest.raises(TlcliError, match=r"unknown setting 'epoch' \(did you mean: epochs"):
        TrainConfig.from_dict({**config.to_dict(), "epoch": 3})


def test_every_unknown_key_is_named_in_one_line_with_its_suggestions():
    values = {**TrainConfig("d").to_dict(), "epoch": 3, "paitence": 2, "qqq": 1}
    values["augment"] = {**values["augment"], "rotatoin": 5}
    with pytest.raises(TlcliError) as error:
        TrainConfig.from_dict(values, source="runs/train3/config.json")
    message = str(error.value)
    assert "\n" not in message and message.startswith("runs/train3/config.json: unknown settings ")
    for part in ("'epoch' (did you mean: epochs", "'paitence' (did you mean: patience?)", "'qqq',",
                 "'augment.rotatoin' (did you mean: augment.rotation?)", "Known: augment, backbone,"):
        assert part in message


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 2.5}, "epochs must be a whole number, not 2.5"),
    ({"epochs": True}, "epochs must be a whole number, not true"),
    ({"lr": "fast"}, 'lr must be a number, not "fast"'),
    ({"calibrate": "yes"}, 'calibrate must be true or false, not "yes"'),
    ({"backbone": 3}, "backbone must be a string, not 3"),
    ({"augment": {"flip": 1}}, "augment.flip must be true or false, not 1"),
    ({"augment": [1]}, "expected a JSON object of settings"),
])
def test_a_value_of_the_wrong_type_is_a_one_line_error(changes, message):
    with pytest.raises(TlcliError, match="^c.json: " + message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig.from_dict({**TrainConfig("d").to_dict(), **changes}, source="c.json")


def test_numbers_of_either_kind_and_auto_values_pass_the_type_check():
    config = TrainConfig.from_dict({**TrainConfig("d").to_dict(), "lr": 1, "image_size": 96, "unfreeze": 0.3})
    assert (config.lr, config.image_size, config.unfreeze) == (1, 96, 0.3)


def test_patience_is_off_by_default_and_range_checked():
    assert TrainConfig("d").patience == 0 and TrainConfig("d").tensorboard is False
    assert dataclasses.replace(TrainConfig("d"), patience=3).resolve().patience == 3
    with pytest.raises(TlcliError, match=r"--patience must be at least 0 \(epochs without improvement; 0 never"):
        dataclasses.replace(TrainConfig("d"), patience=-1).resolve()


# ---------------------------------------------------------------- tlcli train --config


def _flags(**given):
    """What `tlcli train` parses when `given` are the flags typed: (every flag's value, their names)."""
    params = {**{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name != "augment"},
              **{flag: getattr(AugmentConfig(), name) for flag, name in AUGMENT_FLAGS.items()},
              "data_dir": None, "image_size": None, "cache_ram_gb": None, "resume": None, "quiet": False}
    params.update(given)
    return TrainConfig.from_flags(params), set(given)


def _saved_run(tmp_path, **settings):
    run = tmp_path / "train3"
    run.mkdir()
    config = TrainConfig(str(tmp_path / "photos"), backbone="tiny", epochs=7, **settings).resolve()
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "class_names": ["a", "b"], "versions": {}}))
    return run, config


def test_from_flags_reads_the_parameters_as_the_settings():
    flags, _ = _flags(epochs=9, rotation=3.0, augment=False, image_size=None)
    assert flags.epochs == 9 and flags.augment == AugmentConfig(enabled=False, rotation=3.0)
    assert flags.image_size == "auto" and flags.data_dir == ""


def test_rerun_takes_the_runs_settings_and_only_the_flags_given(tmp_path):
    run, saved = _saved_run(tmp_path, patience=2, tensorboard=True, augment=AugmentConfig(zoom=0.3))
    flags, given = _flags(lr=0.01, rotation=5.0, flip=False, data_dir=str(tmp_path / "moved"))
    config = TrainConfig.rerun(run / "config.json", flags, given)
    assert config == dataclasses.replace(saved, lr=0.01, data_dir=str(tmp_path / "moved"),
                                         augment=AugmentConfig(zoom=0.3, rotation=5.0, flip=False))
    # a flag typed with its default value still overrides; a run folder stands for its config.json
    flags, given = _flags(epochs=5, patience=0)
    assert TrainConfig.rerun(run, flags, given) == dataclasses.replace(saved, epochs=5, patience=0)


@pytest.mark.parametrize("content, message", [
    (None, "--config: '{path}' does not exist."),
    ("{ not json", "--config: '{path}' is not valid JSON (Expecting property name enclosed in double quotes, "
                   "line 1 column 3)."),
    (b"\xff\xfe\x00", "--config: '{path}' is not a text file."),
    ("[1, 2]", "{path}: expected a JSON object of settings, as a run's config.json holds."),
    ('{"epochs": 3}', "{path}: no data_dir: give DATA_DIR."),
])
def test_rerun_a_bad_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(TlcliError) as error:
        TrainConfig.rerun(path, *_flags())
    assert str(error.value) == message.format(path=path)


# One value just outside each range, for a TrainConfig field or an AugmentConfig field.
@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"fine_tune_epochs": -1}, "--fine-tune-epochs must be at least 0"),
    ({"cache_views": 0}, "--cache-views must be at least 1"),
    ({"cache_ram_gb": -0.5}, "--cache-ram-gb must be at least 0"),
    ({"cache_ram_gb": float("inf")}, "--cache-ram-gb"),
    ({"lr": 0.0}, "--lr must be above 0"),
    ({"lr": float("inf")}, "--lr"),
    ({"fine_tune_lr": -1e-4}, "--fine-tune-lr must be above 0"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"val_split": 0.0}, "--val-split must be above 0 and below 1"),
    ({"val_split": 1.0}, "--val-split must be above 0 and below 1"),
    ({"seed": -1}, "--seed must be at least 0"),  # keras.utils.set_random_seed raised a ValueError
    ({"seed": 2**32}, "at most 4294967295"),
    ({"dropout": 1.0}, "--dropout must be at least 0 and below 1"),
    ({"label_smoothing": -0.1}, "--label-smoothing"),
    ({"label_smoothing": 1.0}, "--label-smoothing"),
    ({"mixed_precision": "yes"}, "--mixed-precision must be one of auto, on, off"),
    ({"xla": "always"}, "--xla must be one of auto, on, off"),
    ({"strategy": "mirored"}, "--strategy must be one of"),
    ({"augment": AugmentConfig(rotation=181)}, "--rotation must be at least 0 and at most 180 degrees"),
    ({"augment": AugmentConfig(rotation=-5)}, "--rotation"),
    ({"augment": AugmentConfig(rotation=float("nan"))}, "--rotation"),
    ({"augment": AugmentConfig(shift=1.01)}, "--shift must be at least 0 and at most 1"),
    ({"augment": AugmentConfig(shear=46)}, "--shear must be at least 0 and at most 45 degrees"),  # crashed in RandomShear
    ({"augment": AugmentConfig(shear=89)}, "--shear"),
    ({"augment": AugmentConfig(zoom=1.5)}, "--zoom must be at least 0 and at most 1"),
    ({"augment": AugmentConfig(zoom=-0.1)}, "--zoom"),
])
def test_resolve_rejects_each_value_just_out_of_range(changes, message):
    with pytest.raises(TlcliError, match=message.replace("(", r"\(")):
        dataclasses.replace(TrainConfig("d"), **changes).resolve()


# Each end of each range that is itself allowed; shift and zoom 1 were refused although Keras
# takes them, and shear is allowed up to RandomShear's own limit.
@pytest.mark.parametrize("changes", [
    {"epochs": 1}, {"fine_tune_epochs": 0}, {"cache_views": 1}, {"cache_ram_gb": 0.0}, {"batch_size": 1},
    {"lr": 1e-9}, {"val_split": 0.01}, {"val_split": 0.99}, {"seed": 0}, {"seed": 2**32 - 1},
    {"dropout": 0.0}, {"label_smoothing": 0.0},
    {"augment": AugmentConfig(rotation=180, shift=1.0, shear=45, zoom=1.0)},
    {"augment": AugmentConfig(rotation=0, shift=0, shear=0, zoom=0)},
])
def test_resolve_accepts_the_ends_of_each_range(changes):
    config = dataclasses.replace(TrainConfig("d"), **changes)
    assert config.resolve().augment == config.augment


@pytest.mark.parametrize("options, message", [
    ({"top_k": 0}, "--top-k must be at least 1"),
    ({"max_errors": -1}, "--max-errors must be at least 0"),
    ({"split": "validation"}, "--split must be one of train, val, test, all"),
    ({"samples": 0}, "--samples must be at least 1"),
    ({"variants": 0}, "--variants must be at least 1"),
    ({"preview_size": 0}, "--image-size must be at least 1"),
    ({"calibration_samples": 0}, "--calibration-samples must be at least 1"),
    ({"min_agreement": 1.5}, "--min-agreement must be at least 0 and at most 1"),
    ({"min_agreement": -0.1}, "--min-agreement"),
])
def test_check_options_rejects_other_commands_values(options, message):
    with pytest.raises(TlcliError, match=message):
        check_options(**options)
    check_options(top_k=1, max_errors=0, split="all", samples=1, variants=1, preview_size=1,
                  calibration_samples=1, min_agreement=1.0)


def test_data_dir_is_stored_absolute_but_urls_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(os.path.join("photos", "flowers")).resolve()
    assert config.data_dir == str(tmp_path / "photos" / "flowers")
    assert config.resolve() == config  # resolving again (as a resume does) changes nothing
    for url in ("gs://bucket/flowers", "ram://flowers"):
        assert TrainConfig(url).resolve().data_dir == url


@pytest.mark.parametrize("available,budget", [(10.0, 5.0), (0.6, 0.5)])
def test_the_default_cache_budget_follows_the_memory_available(monkeypatch, available, budget):
    from tlcli import config as config_module

    monkeypatch.setattr(config_module, "available_memory_gb", lambda: available)
    assert TrainConfig("data", backbone="tiny").resolve().cache_ram_gb == budget
    assert TrainConfig("data", backbone="tiny", cache_ram_gb=1.5).resolve().cache_ram_gb == 1.5


def test_available_memory_is_read_from_the_system():
    from tlcli.config import available_memory_gb

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert 0 < available_memory_gb() <= total


def test_a_preset_sets_its_fields_but_not_the_flags_given_beside_it():
    from tlcli.config import PRESETS

    base = TrainConfig("data")
    fast = base.with_preset("fast")
    assert fast.preset == "fast" and fast.epochs == PRESETS["fast"]["epochs"] != base.epochs
    kept = base.with_preset("fast", keep={"epochs"})
    assert kept.epochs == base.epochs and kept.fine_tune_epochs == PRESETS["fast"]["fine_tune_epochs"]
    assert kept.fine_tune_epochs != base.fine_tune_epochs
    assert base.with_preset("default") == dataclasses.replace(base, preset="default")
    with pytest.raises(TlcliError, match="--preset must be one of fast, default; not 'fsat'"):
        base.with_preset("fsat")

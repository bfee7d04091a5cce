"""Defaults, "auto" resolution and validation of TrainConfig."""

import dataclasses

import pytest

from tlcli.config import AugmentConfig, TrainConfig, parse_unfreeze
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
    with pytest.raises(TlcliError, match="Did you mean: epochs"):
        TrainConfig.from_dict({**config.to_dict(), "epoch": 3})

"""Every default tlcli has lives here, in frozen dataclasses; a run's config.json is their dump.

Fields whose default is "auto" are resolved against the chosen backbone by `resolve()`, the
way keras-hub's `compile()` fills in its defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tlcli.errors import TlcliError, unknown_name


# Keys config.json carries besides the settings themselves.
RUN_INFO_KEYS = ("versions", "class_names")


@dataclass(frozen=True)
class AugmentConfig:
    """The training-only augmentation stage (ImageDataGenerator-style units)."""

    enabled: bool = True
    rotation: float = 15.0  # degrees, either way
    shift: float = 0.1  # fraction of width/height, either way
    shear: float = 10.0  # degrees, either way
    zoom: float = 0.15  # fraction, in or out
    flip: bool = True  # random horizontal flip


@dataclass(frozen=True)
class TrainConfig:
    """Everything `tlcli train` needs; the CLI's flags map one to one onto these fields."""

    data_dir: str
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"  # "imagenet", "none" or a path to a weights file
    image_size: int | str = "auto"  # "auto": the backbone's default size
    epochs: int = 5  # phase 1: head only, backbone frozen
    # The frozen part of the backbone runs once per view of each image (one clean view plus
    # cache_views - 1 augmented ones) and both phases train on its cached output. A phase 1
    # epoch is one pass over every cached view; a phase 2 epoch sees each image once, in a
    # randomly chosen view.
    cache_views: int = 4
    cache_ram_gb: float = 4.0  # cached activations beyond this spill to a file in the run folder
    fine_tune_epochs: int = 5  # phase 2: top of the backbone unfrozen; 0 skips it
    lr: float = 1e-3
    # A tenth of the head rate: 1e-5 (the keras.io guide) barely moves the weights in a few epochs.
    fine_tune_lr: float = 1e-4
    unfreeze: float | int | str = "auto"  # layer count ("40"), fraction ("0.3", "1.0", "all") or "auto"
    batch_size: int = 32
    val_split: float = 0.2  # used only when DATA_DIR has no val/ folder
    seed: int = 0
    dropout: float = 0.2
    label_smoothing: float = 0.1
    class_weights: str = "auto"  # "auto" balances uneven classes; "none"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: str = "auto"  # "auto": on when a GPU is present; "on"; "off"
    xla: str = "auto"  # XLA-compiled training steps; "auto": on when a GPU is present
    strategy: str = "auto"  # tf.distribute: auto, one, mirrored, multiworker (see tlcli.distribute)
    project: str = "runs"
    name: str = "train"

    def resolve(self) -> "TrainConfig":
        """Check every value and fill in the "auto" ones from the backbone's registry entry."""
        from tlcli.backbones import get_spec

        spec = get_spec(self.backbone)
        image_size = spec.default_size if self.image_size == "auto" else _int("image-size", self.image_size)
        unfreeze = spec.unfreeze if self.unfreeze == "auto" else parse_unfreeze(self.unfreeze)
        if image_size < spec.min_size:
            raise TlcliError(f"--image-size {image_size} is below {self.backbone}'s minimum of {spec.min_size}.")
        _check(self.epochs >= 1, "--epochs must be at least 1.")
        _check(self.cache_views >= 1, "--cache-views must be at least 1 (the clean view).")
        _check(self.fine_tune_epochs >= 0, "--fine-tune-epochs must be 0 or more.")
        _check(self.lr > 0 and self.fine_tune_lr > 0, "learning rates must be positive.")
        _check(self.batch_size >= 1, "--batch-size must be at least 1.")
        _check(0 < self.val_split < 1, "--val-split must be between 0 and 1.")
        _check(0 <= self.dropout < 1, "--dropout must be in [0, 1).")
        _check(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1).")
        _check(self.class_weights in ("auto", "none"), "--class-weights must be auto or none.")
        _check(self.cache_ram_gb >= 0, "--cache-ram-gb must be 0 or more.")
        _check(self.mixed_precision in ("auto", "on", "off"), "--mixed-precision must be auto, on or off.")
        _check(self.xla in ("auto", "on", "off"), "--xla must be auto, on or off.")
        _check(self.strategy in ("auto", "one", "mirrored", "multiworker"),
               "--strategy must be auto, one, mirrored or multiworker.")
        a = self.augment
        _check(0 <= a.rotation <= 180, "--rotation is in degrees, 0 to 180.")
        _check(0 <= a.shear < 90, "--shear is in degrees, 0 to 89.")
        _check(0 <= a.shift < 1 and 0 <= a.zoom < 1, "--shift and --zoom are fractions below 1.")
        return dataclasses.replace(self, image_size=image_size, unfreeze=unfreeze)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Rebuild a config from config.json; unknown keys get close-match suggestions."""
        values = {k: v for k, v in values.items() if k not in RUN_INFO_KEYS}
        augment = values.pop("augment", {}) or {}
        _reject_unknown(cls, values)
        _reject_unknown(AugmentConfig, augment)
        return cls(**values, augment=AugmentConfig(**augment))


def _reject_unknown(cls, values: dict) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise unknown_name("setting", key, known)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TlcliError(message)


def _int(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TlcliError(f"--{name} must be a whole number or 'auto', not '{value}'.") from None


def parse_unfreeze(value) -> int | float:
    """A whole number is a layer count ("40"); a decimal is a fraction of the layers ("0.3", "1.0")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
    else:
        text = str(value).strip().lower()
    if text == "all":
        return 1.0
    try:
        if "." in text:
            fraction = float(text)
            if 0 <= fraction <= 1:
                return fraction
        elif int(text) >= 0:
            return int(text)
    except ValueError:
        pass
    raise TlcliError(f"--unfreeze must be a layer count (40), a fraction (0.3, 1.0), all or auto; not '{value}'.")

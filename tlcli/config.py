"""Every default tlcli has lives here, in frozen dataclasses; a run's config.json is their dump.
So does the range of every numeric or choice flag (`LIMITS`), checked as soon as a command has
parsed its flags: before a run folder exists or TensorFlow is imported.

Fields whose default is "auto" are resolved against the chosen backbone by `resolve()`, the
way keras-hub's `compile()` fills in its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tlcli.errors import TlcliError, close_matches


# Keys config.json carries besides the settings themselves.
RUN_INFO_KEYS = ("versions", "class_names")

# Multi-label positive weights (class weights "auto") stay within [1/limit, limit]: see
# tlcli.multilabel.positive_weights.
POS_WEIGHT_LIMIT = 10.0


@dataclass(frozen=True)
class Limit:
    """The finite numbers a flag accepts: from `low` to `high`, either end excluded when open."""

    flag: str
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    unit: str = ""  # said in the error: "degrees"
    why: str = ""  # said in the error, for a bound that is not obvious

    def check(self, value) -> None:
        """Raise a one-line TlcliError unless `value` is in range."""
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if number and (value > self.low if self.low_open else value >= self.low) and (
                value < self.high if self.high_open else value <= self.high):
            return
        bounds = [f"{'above' if self.low_open else 'at least'} {_show(self.low)}"]
        if self.high != math.inf:
            bounds.append(f"{'below' if self.high_open else 'at most'} {_show(self.high)}")
        unit = f" {self.unit}" if self.unit else ""
        why = f" ({self.why})" if self.why else ""
        raise TlcliError(f"{self.flag} must be {' and '.join(bounds)}{unit}{why}; not {_show(value)}.")


def _show(number) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class Choice:
    """The words a flag accepts."""

    flag: str
    choices: tuple[str, ...]

    def check(self, value) -> None:
        """Raise a one-line TlcliError unless `value` is one of the choices."""
        if value not in self.choices:
            raise TlcliError(f"{self.flag} must be one of {', '.join(self.choices)}; not '{value}'.")


# Every numeric or choice flag's range, by the name of its TrainConfig/AugmentConfig field or
# command parameter. The bounds are those the code downstream really accepts.
LIMITS: dict[str, Limit | Choice] = {
    # train
    "epochs": Limit("--epochs", 1),
    "cache_views": Limit("--cache-views", 1, why="the clean view"),
    "cache_ram_gb": Limit("--cache-ram-gb", 0),
    "fine_tune_epochs": Limit("--fine-tune-epochs", 0),
    "lr": Limit("--lr", 0, low_open=True),
    "fine_tune_lr": Limit("--fine-tune-lr", 0, low_open=True),
    "fine_tune_schedule": Choice("--fine-tune-schedule", ("constant", "cosine")),
    "preset": Choice("--preset", ("fast", "default")),
    "batch_size": Limit("--batch-size", 1),
    "val_split": Limit("--val-split", 0, 1, low_open=True, high_open=True),
    "seed": Limit("--seed", 0, 2**32 - 1, why="a NumPy seed"),
    "dropout": Limit("--dropout", 0, 1, high_open=True),
    "label_smoothing": Limit("--label-smoothing", 0, 1, high_open=True),
    "class_weights": Choice("--class-weights", ("auto", "none")),
    "mixed_precision": Choice("--mixed-precision", ("auto", "on", "off")),
    "xla": Choice("--xla", ("auto", "on", "off")),
    "strategy": Choice("--strategy", ("auto", "one", "mirrored", "multiworker")),
    "patience": Limit("--patience", 0, why="epochs without improvement; 0 never stops early"),
    # augmentation, each either way; RandomShear takes tan(angle) <= 1, RandomTranslation and
    # RandomZoom a fraction <= 1
    "rotation": Limit("--rotation", 0, 180, unit="degrees", why="either way: 180 reaches every angle"),
    "shift": Limit("--shift", 0, 1, why="a fraction of the size"),
    "shear": Limit("--shear", 0, 45, unit="degrees", why="Keras's RandomShear takes at most 45"),
    "zoom": Limit("--zoom", 0, 1, why="a fraction"),
    # augment-preview
    "samples": Limit("--samples", 1),
    "variants": Limit("--variants", 1),
    "preview_size": Limit("--image-size", 1),
    # predict, evaluate, explain
    "top_k": Limit("--top-k", 1),
    "max_errors": Limit("--max-errors", 0),
    "split": Choice("--split", ("train", "val", "test", "all")),
    "tta": Choice("--tta", ("flip", "flip+crops")),  # test-time augmentation: tlcli.runtime.TTARunner
    "min_confidence": Limit("--min-confidence", 0, 1, why="a probability"),
    # export
    "calibration_samples": Limit("--calibration-samples", 1),
    "min_agreement": Limit("--min-agreement", 0, 1, why="a fraction of the images"),
}


def check_options(**values) -> None:
    """Check each flag value against its range in `LIMITS`; the first one out of range raises."""
    for name, value in values.items():
        LIMITS[name].check(value)


def _check_fields(config) -> None:
    check_options(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in LIMITS})


# A data_dir like gs://bucket/flowers is a URL, not a path relative to the current directory.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def available_memory_gb() -> float:
    """Memory the system can give this process now (Linux: MemAvailable), else a quarter of RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30
    except (ValueError, OSError, AttributeError):
        return 4.0


def absolute_data_dir(data_dir: str) -> str:
    """`data_dir` made absolute, so that a run's config.json works from any directory; URLs as they are."""
    data_dir = str(data_dir)
    return data_dir if _URL.match(data_dir) else os.path.abspath(os.path.expanduser(data_dir))


# --preset: named trade-offs between time and accuracy, each measured on flowers-train (the
# README's "Presets" table). A preset sets TrainConfig fields; flags given beside it win.
# No "best": nothing tried paid for its time. The one larger setting that scored higher, 4 views
# at 2e-4 (94.38% mean over seeds 0-2), costs 86 s more than the default's 94.21%.
PRESETS: dict[str, dict] = {
    # Fewer epochs: phase 2's are most of a default run's time once its 2 views are cached.
    # flowers-train, seeds 0-2: 93.87/94.21/92.67% against the default's 94.72/94.04/93.87%,
    # in about 0.9 of its CPU time (330 s against 341-431 s).
    "fast": {"epochs": 3, "fine_tune_epochs": 3},
    "default": {},
}


@dataclass(frozen=True)
class AugmentConfig:
    """The training-only augmentation stage (ImageDataGenerator-style units)."""

    enabled: bool = True
    rotation: float = 15.0  # degrees, either way
    shift: float = 0.1  # fraction of width/height, either way
    shear: float = 10.0  # degrees, either way
    zoom: float = 0.15  # fraction, in or out
    flip: bool = True  # random horizontal flip

    def check(self) -> None:
        """Raise a one-line TlcliError for a value Keras's augmentation layers would refuse."""
        _check_fields(self)


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
    # randomly chosen view. 2, by accuracy per second: on flowers-train's val split (587 images),
    # seeds 0-2, 2 views scored 94.38/94.04/92.16% and 3 views 93.87/93.87/92.16% against 4
    # views' 94.89/93.02/93.02% (means 93.53, 93.30, 93.64: within one seed's spread), while
    # each view costs about 43 s there (37 s caching, 6 s pooling and head) on 2 CPU cores.
    cache_views: int = 2
    # Cached activations beyond this spill to a file in the run folder. "auto": half the memory
    # available when training starts, at least 0.5 GB (the resolved figure goes in config.json).
    cache_ram_gb: float | str = "auto"
    fine_tune_epochs: int = 5  # phase 2: top of the backbone unfrozen; 0 skips it
    lr: float = 1e-3
    # A fifth of the head rate, decayed along a cosine. 1e-5 (the keras.io guide) barely moves the
    # weights in a few epochs; 2e-4 beat 1e-4 on all of flowers-train's seeds 0-2 (4 views:
    # 95.23/93.70/94.21% against 94.89/93.02/93.02%; 2 views: 94.72/94.04/93.87%), at equal cost.
    fine_tune_lr: float = 2e-4
    # "cosine" decays fine_tune_lr to zero over phase 2; "constant" keeps it. Cosine, at the same
    # cost: on flowers-train's val split (587 images), seeds 0-2, 94.89/93.02/93.02% against
    # 94.38/92.33/93.19% (mean +0.34 points).
    fine_tune_schedule: str = "cosine"
    unfreeze: float | int | str = "auto"  # layer count ("40"), fraction ("0.3", "1.0", "all") or "auto"
    batch_size: int = 32
    val_split: float = 0.2  # used only when DATA_DIR has no val/ folder
    seed: int = 0
    # A label file's columns of image paths and of labels; None: found by name (tlcli.labelfile).
    path_column: str | None = None
    label_column: str | None = None
    # Multi-label: a label cell split at label_delimiter into several labels turns it on, as
    # multi_label does (which also merges a file's rows of one image each). config.json records
    # it resolved: true when the data turned it on.
    multi_label: bool = False
    label_delimiter: str | None = None
    dropout: float = 0.2
    label_smoothing: float = 0.1  # single-label only: see tlcli.objective for multi-label
    class_weights: str = "auto"  # "auto" balances uneven classes; "none"
    # Fit one temperature on the validation images at the end and fold it into the saved model,
    # so its probabilities mean what they say (tlcli.calibration).
    calibrate: bool = True
    # Stop a phase after this many epochs without a better validation score (accuracy, then
    # loss: what the best model is chosen by); 0 runs every epoch, as Ultralytics' patience=0.
    patience: int = 0
    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard/ (tlcli.tensorboard)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: str = "auto"  # "auto": on when a GPU is present; "on"; "off"
    xla: str = "auto"  # XLA-compiled training steps; "auto": on when a GPU is present
    strategy: str = "auto"  # tf.distribute: auto, one, mirrored, multiworker (see tlcli.distribute)
    project: str = "runs"
    name: str = "train"
    preset: str = "default"  # the PRESETS entry applied (with_preset): recorded for the run's config.json

    def with_preset(self, preset: str, keep=()) -> "TrainConfig":
        """This config with the settings of PRESETS[`preset`], except the fields named in `keep`
        (the flags a user gave beside --preset)."""
        LIMITS["preset"].check(preset)
        values = {name: value for name, value in PRESETS[preset].items() if name not in set(keep)}
        return dataclasses.replace(self, preset=preset, **values)

    def resolve(self) -> "TrainConfig":
        """Check every value, fill in the "auto" ones from the backbone's registry entry and make
        data_dir absolute (a run's config.json then works from any directory)."""
        from tlcli.backbones import get_spec

        spec = get_spec(self.backbone)
        image_size = spec.default_size if self.image_size == "auto" else _int("image-size", self.image_size)
        unfreeze = spec.unfreeze if self.unfreeze == "auto" else parse_unfreeze(self.unfreeze)
        if image_size < spec.min_size:
            raise TlcliError(f"--image-size {image_size} is below {self.backbone}'s minimum of {spec.min_size}.")
        check_label_delimiter(self.label_delimiter)
        cache_ram_gb = available_memory_gb() / 2 if self.cache_ram_gb == "auto" else self.cache_ram_gb
        resolved = dataclasses.replace(self, data_dir=absolute_data_dir(self.data_dir), image_size=image_size,
                                       unfreeze=unfreeze, cache_ram_gb=round(max(0.5, cache_ram_gb), 2)
                                       if self.cache_ram_gb == "auto" else cache_ram_gb)
        _check_fields(resolved)
        resolved.augment.check()
        return resolved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "") -> "TrainConfig":
        """Rebuild a config from config.json (`source`, named in errors): every unknown key gets
        close-match suggestions, a value of the wrong type a one-line error."""
        where = f"{source}: " if source else ""
        if not isinstance(values, dict) or not isinstance(values.get("augment") or {}, dict):
            raise TlcliError(f"{where}expected a JSON object of settings, as a run's config.json holds.")
        values = {k: v for k, v in values.items() if k not in RUN_INFO_KEYS}
        augment = values.pop("augment", None) or {}
        if unknown := _unknown_keys(values, augment):
            known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
            raise TlcliError(f"{where}unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
                             f"Known: {known}.")
        if "data_dir" not in values:
            raise TlcliError(f"{where}no data_dir: give DATA_DIR.")
        _check_types(cls, values, where)
        _check_types(AugmentConfig, augment, where, prefix="augment.")
        return cls(**values, augment=AugmentConfig(**augment))

    @classmethod
    def from_flags(cls, params: dict) -> "TrainConfig":
        """A config from `tlcli train`'s parameters, named as the fields they set (augmentation's as
        in AUGMENT_FLAGS); None means "auto", and parameters that are not settings are ignored."""
        names = {f.name for f in dataclasses.fields(cls)} - {"augment"}
        values = {name: value for name, value in params.items() if name in names and value is not None}
        augment = AugmentConfig(**{field: params[flag] for flag, field in AUGMENT_FLAGS.items()})
        return cls(**{**values, "data_dir": str(params.get("data_dir") or "")}, augment=augment)

    @classmethod
    def rerun(cls, path: str | os.PathLike, flags: "TrainConfig", given: set[str]) -> "TrainConfig":
        """`tlcli train --config`: the settings in a run's config.json (or a run folder's), with the
        flags given beside it on top. `flags` holds every flag's value; `given`, the names of the
        command's parameters the user typed (the others are only defaults)."""
        path = Path(path)
        path = path / "config.json" if path.is_dir() else path
        values = read_config_file(path)
        if isinstance(values, dict) and isinstance(values.get("augment") or {}, dict):  # else from_dict says why
            values = {**values, "augment": dict(values.get("augment") or {})}
            for name in given:
                if name in AUGMENT_FLAGS:
                    values["augment"][AUGMENT_FLAGS[name]] = getattr(flags.augment, AUGMENT_FLAGS[name])
                elif name in {f.name for f in dataclasses.fields(cls)}:
                    values[name] = getattr(flags, name)
        return cls.from_dict(values, source=str(path))


# `tlcli train`'s augmentation flags, by parameter name, and the AugmentConfig field each sets.
AUGMENT_FLAGS = {"augment": "enabled", "rotation": "rotation", "shift": "shift", "shear": "shear", "zoom": "zoom",
                 "flip": "flip"}


def read_config_file(path: Path):
    """The JSON in `path`; a one-line error when it is missing, unreadable or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TlcliError(f"--config: '{path}' does not exist.") from None
    except UnicodeDecodeError:
        raise TlcliError(f"--config: '{path}' is not a text file.") from None
    except OSError as error:
        raise TlcliError(f"--config: cannot read '{path}': {error.strerror or error}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TlcliError(f"--config: '{path}' is not valid JSON ({error.msg}, line {error.lineno} column "
                         f"{error.colno}).") from None


def _unknown_keys(values: dict, augment: dict) -> list[str]:
    """Each key that is not a setting, quoted, with the settings it looks like."""
    found = []
    for keys, cls, prefix in ((values, TrainConfig, ""), (augment, AugmentConfig, "augment.")):
        known = [f.name for f in dataclasses.fields(cls)]
        for key in keys:
            if key not in known:
                close = ", ".join(prefix + name for name in close_matches(key, known))
                found.append(f"'{prefix}{key}'" + (f" (did you mean: {close}?)" if close else ""))
    return found


def _check_types(cls, values: dict, where: str, prefix: str = "") -> None:
    """A one-line error for a value a flag could never have given: a word for a number, 2.5 epochs.
    Fields that default to "auto" take a word or a number, checked by resolve()."""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.default == "auto":
            continue
        value, kind = values[f.name], f.default if f.default is not dataclasses.MISSING else ""
        if isinstance(kind, bool):
            ok, wanted = isinstance(value, bool), "true or false"
        elif isinstance(kind, int):
            ok, wanted = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(kind, float):
            ok, wanted = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(kind, str):
            ok, wanted = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise TlcliError(f"{where}{prefix}{f.name} must be {wanted}, not {json.dumps(value)}.")


def _int(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TlcliError(f"--{name} must be a whole number or 'auto', not '{value}'.") from None


def check_label_delimiter(label_delimiter: str | None) -> None:
    """Refuse an empty --label-delimiter in one line (train and check)."""
    if label_delimiter == "":
        raise TlcliError("--label-delimiter must be the character (or text) between labels, e.g. ';'; not empty.")


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

"""`tlcli train`: the training command (training itself is in tlcli.train).

Kept beside tlcli.cli rather than in it so each module stays small; registered on the same app,
first, so that --help lists it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tlcli import tables
from tlcli.cli_app import (AsJson, Augment, Flip, LabelColumn, PathColumn, ProjectOption, Quiet, Rotation, Shear,
                           Shift, Zoom, _default, _import_tensorflow_quietly, command, err, out)
from tlcli.config import AugmentConfig, TrainConfig
from tlcli.errors import TlcliError


@command()
def train(
    ctx: typer.Context,
    # A string, not a Path: Path would turn gs://bucket/flowers into gs:/bucket/flowers.
    data_dir: Annotated[Optional[str], typer.Argument(help="One folder per class, or train/ and val/ (and test/) folders of class folders; a local folder or a URL TensorFlow reads (gs://...); or a label file (CSV, JSON: path,label[,split]), such as `tlcli check --write-clean` writes. With --resume: where the run's images are now, if they moved. With --config: default, the run's.", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run folder, with its own settings.", show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option(help="fast or default: a measured trade-off between time and accuracy (see the README); flags given beside it win.", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Rerun the settings of a run's config.json (or run folder) in a new run; flags given beside it override them.", show_default=False)] = None,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone name (see `tlcli backbones`).")] = _default(TrainConfig, "backbone"),
    weights: Annotated[str, typer.Option(help="imagenet, none, or a path to a weights file for the backbone.")] = _default(TrainConfig, "weights"),
    image_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the backbone's).", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Phase 1 epochs: head only, backbone frozen.", rich_help_panel="Schedule")] = _default(TrainConfig, "epochs"),
    cache_views: Annotated[int, typer.Option(help="Views cached per image: 1 clean + N-1 augmented.", rich_help_panel="Speed")] = _default(TrainConfig, "cache_views"),
    fine_tune_epochs: Annotated[int, typer.Option(help="Phase 2 epochs with the top of the backbone unfrozen; 0 skips it.", rich_help_panel="Schedule")] = _default(TrainConfig, "fine_tune_epochs"),
    lr: Annotated[float, typer.Option(help="Phase 1 learning rate (Adam).", rich_help_panel="Schedule")] = _default(TrainConfig, "lr"),
    fine_tune_lr: Annotated[float, typer.Option(help="Phase 2 learning rate (Adam).", rich_help_panel="Schedule")] = _default(TrainConfig, "fine_tune_lr"),
    fine_tune_schedule: Annotated[str, typer.Option(help="Phase 2 learning rate over time: constant, or cosine (decays to zero by the last epoch).", rich_help_panel="Schedule")] = _default(TrainConfig, "fine_tune_schedule"),
    unfreeze: Annotated[str, typer.Option(help="Backbone layers trained in phase 2: a count (40), a fraction (0.3, 1.0), all, or auto.", rich_help_panel="Schedule")] = _default(TrainConfig, "unfreeze"),
    batch_size: Annotated[int, typer.Option(help="Images per training step.", rich_help_panel="Schedule")] = _default(TrainConfig, "batch_size"),
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier layer.", rich_help_panel="Head")] = _default(TrainConfig, "dropout"),
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the loss (single-label only).", rich_help_panel="Head")] = _default(TrainConfig, "label_smoothing"),
    class_weights: Annotated[str, typer.Option(help="auto (balance uneven classes; multi-label: weigh each label's positives by its negatives / positives) or none.", rich_help_panel="Head")] = _default(TrainConfig, "class_weights"),
    patience: Annotated[int, typer.Option(help="End a phase after N epochs without a better validation score; 0 never does.", rich_help_panel="Schedule")] = _default(TrainConfig, "patience"),
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit one temperature on the validation images and fold it into the saved model, so its probabilities mean what they say.", rich_help_panel="Head")] = _default(TrainConfig, "calibrate"),
    val_split: Annotated[float, typer.Option(help="Validation fraction when DATA_DIR has no val/ folder.", rich_help_panel="Data")] = _default(TrainConfig, "val_split"),
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and augmentation.", rich_help_panel="Data")] = _default(TrainConfig, "seed"),
    path_column: PathColumn = None,
    label_column: LabelColumn = None,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Each image may have several labels: a sigmoid head, one probability per label, thresholds tuned on val. A label file may then list an image on several rows (one per label). On by itself when --label-delimiter splits some cell in two.", rich_help_panel="Data")] = _default(TrainConfig, "multi_label"),
    label_delimiter: Annotated[Optional[str], typer.Option(help="Split a label file's label cells at this text into several labels, e.g. ';' for beach;sunset.", rich_help_panel="Data", show_default=False)] = None,
    cache_ram_gb: Annotated[Optional[float], typer.Option(help="Memory (GB) for cached activations; beyond it they spill to disk. Default: half the available memory.", rich_help_panel="Speed", show_default=False)] = None,
    mixed_precision: Annotated[str, typer.Option(help="float16 compute: auto (on with a GPU), on, off.", rich_help_panel="Speed")] = _default(TrainConfig, "mixed_precision"),
    xla: Annotated[str, typer.Option(help="XLA-compiled training steps: auto (on with a GPU), on, off.", rich_help_panel="Speed")] = _default(TrainConfig, "xla"),
    strategy: Annotated[str, typer.Option(help="tf.distribute: auto (mirrored with 2+ GPUs), one, mirrored, multiworker (TF_CONFIG).", rich_help_panel="Speed")] = _default(TrainConfig, "strategy"),
    augment: Augment = _default(AugmentConfig, "enabled"),
    rotation: Rotation = _default(AugmentConfig, "rotation"),
    shift: Shift = _default(AugmentConfig, "shift"),
    shear: Shear = _default(AugmentConfig, "shear"),
    zoom: Zoom = _default(AugmentConfig, "zoom"),
    flip: Flip = _default(AugmentConfig, "flip"),
    project: ProjectOption = _default(TrainConfig, "project"),
    name: Annotated[str, typer.Option(help="Run name; train2, train3, … when taken.", rich_help_panel="Output")] = _default(TrainConfig, "name"),
    tensorboard: Annotated[bool, typer.Option("--tensorboard/--no-tensorboard", help="Write TensorBoard event files to <run>/tensorboard/ (view: tensorboard --logdir runs).", rich_help_panel="Output")] = _default(TrainConfig, "tensorboard"),
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Fine-tune a pretrained backbone on DATA_DIR: head first, then the top of the backbone.

    Leaves a run folder (model.keras, labels.txt, config.json, history.csv, metrics.json, curves.png; thresholds.json when multi-label) that `predict`, `evaluate` and `export` use by default.

    Ctrl-C stops after the current step and keeps everything; continue with --resume RUN, with
    the run's own settings (other flags are ignored). If its images have moved since, give their
    new place too: --resume RUN DATA_DIR.

    --config runs/train3/config.json reruns that run's settings in a new run folder; the flags
    given beside it (and DATA_DIR) override them.

    Multi-label (a label file whose cells hold several labels, or --multi-label): one sigmoid
    output per label, and thresholds.json with one threshold per label, tuned on the validation
    images for F1.

    Example: [bold]tlcli train ./flowers --backbone xception --epochs 10 --patience 3 --tensorboard[/]

    Example: [bold]tlcli train photos/labels.csv --label-delimiter ';'[/]
    """
    if data_dir is None and resume is None and config_file is None:
        raise TlcliError("give DATA_DIR to start a run, --resume RUN to continue one, or --config to rerun one.")
    if resume is not None and config_file is not None:
        raise TlcliError("--resume continues a run with its own settings; --config starts a new one: give one of them.")
    if resume is not None:
        _import_tensorflow_quietly()
        from tlcli.train import train as run_training

        result = run_training(resume=resume, data_dir=str(data_dir) if data_dir else None, console=err,
                              quiet=quiet or as_json)
        return _report(result, as_json, quiet)
    flags = TrainConfig.from_flags(ctx.params)
    # By name: typer bundles its own click (typer._click) since 0.26, and older ones use click's.
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    config = TrainConfig.rerun(config_file, flags, given) if config_file is not None else flags
    if preset is not None:
        config = config.with_preset(preset, keep=given)
    config = config.resolve()  # bad flags fail here, before TensorFlow is even imported
    _import_tensorflow_quietly()
    from tlcli.train import train as run_training

    _report(run_training(config, console=err, quiet=quiet or as_json), as_json, quiet)


def _report(result, as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}))
    elif not quiet:
        out.print(tables.train_summary(result.run_dir, result.metrics))
        run = result.run_dir
        out.print(f"Curves: {run / 'curves.png'} (loss and accuracy per epoch)", highlight=False, soft_wrap=True)
        if (run / "tensorboard").is_dir():
            out.print(f"TensorBoard: tensorboard --logdir {run.parent}", highlight=False, soft_wrap=True)
        out.print(f"Next:   tlcli predict IMAGES --model {run}", highlight=False, soft_wrap=True)

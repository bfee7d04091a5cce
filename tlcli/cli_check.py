"""`tlcli check`: the dataset checks' command (the checks themselves are in tlcli.check).

Kept beside tlcli.cli rather than in it so each module stays small; registered on the same app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tlcli.cli_app import (AsJson, BatchSize, LabelColumn, PathColumn, Quiet, _import_tensorflow_quietly, command,
                           err, out)
from tlcli.config import check_label_delimiter, check_options
from tlcli.labelfile import Columns


@command()
def check(
    data_dir: Annotated[str, typer.Argument(help="One folder per class, or train/ and val/ (and test/) folders of class folders; or a label file (CSV, JSON: path,label[,split]), such as --write-clean writes.", show_default=False)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Judge the labels by this model (a run folder, .keras, SavedModel, .tflite or .onnx) on its run's split, instead of a cross-validated fit.", show_default=False)] = None,
    features: Annotated[str, typer.Option(help="Image features for near-duplicates and the label check: auto (mobilenet_v2's ImageNet features; none with --model), pixels (colour and texture statistics, no model), none, or a pretrained backbone's name.")] = "auto",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for check.json, duplicates.png and suspects.png (default: <run>/check with --model, else ./check).", rich_help_panel="Output", show_default=False)] = None,
    write_clean: Annotated[Optional[Path], typer.Option(help="Write this label file (CSV: path,label,split) of the files to train on: all but the extra copies of duplicates, the likely label errors and unreadable files. `tlcli train LIST` takes it in place of DATA_DIR.", rich_help_panel="Output", show_default=False)] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Validation fraction when DATA_DIR has no val/ folder, as training splits it (default: the --model run's, else 0.2).", rich_help_panel="Data", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of that split (default: the --model run's, else 0).", rich_help_panel="Data", show_default=False)] = None,
    path_column: PathColumn = None,
    label_column: LabelColumn = None,
    label_delimiter: Annotated[Optional[str], typer.Option(help="Split a label file's label cells at this text into several labels, e.g. ';' for beach;sunset, as `tlcli train` does: counts, health and (with --model) label errors then go label by label (default: the --model run's).", rich_help_panel="Data", show_default=False)] = None,
    multi_label: Annotated[bool, typer.Option("--multi-label", help="Each image may have several labels: a label file may list an image on several rows, one per label, as for `tlcli train --multi-label` (default: the --model run's).", rich_help_panel="Data")] = False,
    batch_size: BatchSize = 32,
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Find duplicates, train/val leakage, likely label errors and unhealthy files in DATA_DIR, before training.

    Exact duplicates by content; near-duplicates (the same photo resized or re-encoded) by a
    perceptual hash and backbone features; likely label errors by a cross-validated fit on
    those features, or by --model. DATA_DIR is split as `tlcli train` splits it, so a
    duplicate across train and val is leakage.

    Also: unreadable files, class counts, tiny or oblong images, greyscale images, classes
    short of validation images.

    A multi-label label file (--label-delimiter, --multi-label, or the --model run's setting)
    is counted label by label; with --model of a multi-label run, each image's labels are judged
    one by one: a given label the model finds very unlikely, or a missing one it is sure of, at
    the run's thresholds.

    Writes check.json and contact sheets (duplicates.png, suspects.png: each image with its
    path and labels); DATA_DIR is only read. --write-clean LIST writes the files to keep.

    Example: [bold]tlcli check ./flowers --write-clean clean.txt && tlcli train clean.txt[/]

    Example: [bold]tlcli check labels.csv --label-delimiter ';' --model runs/train[/]
    """
    from tlcli.check import check_features, needs_tensorflow

    check_options(batch_size=batch_size)
    if val_split is not None:
        check_options(val_split=val_split)
    if seed is not None:
        check_options(seed=seed)
    check_features(features)
    check_label_delimiter(label_delimiter)
    ref = None
    if model is not None:
        from tlcli.rundir import resolve_model

        ref = resolve_model(model)
    if needs_tensorflow(features, ref):
        _import_tensorflow_quietly()
    from tlcli.check import check_folder
    from tlcli.check_report import summary

    result = check_folder(data_dir, ref, features, val_split, seed, output, write_clean, batch_size, console=err,
                          quiet=quiet or as_json, columns=Columns(path_column, label_column),
                          label_delimiter=label_delimiter, multi_label=multi_label)
    if as_json:
        print(json.dumps(result.to_dict()))
    elif not quiet:
        for part in summary(result):  # lines unwrapped, so paths and the train command copy whole
            out.print(part, highlight=False, soft_wrap=isinstance(part, str))

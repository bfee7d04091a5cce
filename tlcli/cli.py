"""The command line: each command parses its flags, builds a config, calls one library function
and turns `TlcliError` into a one-line message with an exit code (the app, error handling and
shared options are in `tlcli.cli_app`).

TensorFlow is imported only inside the commands that need it, so `tlcli --help` is instant.
Every default and every flag's range comes from `tlcli.config`; each command's docstring is its
--help; the tables the commands print are built in `tlcli.tables`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tlcli import tables
from tlcli.config import AugmentConfig, TrainConfig, check_options
from tlcli.errors import TlcliError
from tlcli.cli_app import (AsJson, Augment, BatchSize, DataDir, Flip, KerasModelOption, LabelColumn, ModelOption,
                           PathColumn, ProjectOption, Quiet, Rotation, Shear, Shift, TopK, Tta, Zoom, _default,
                           _import_tensorflow_quietly, app, command, err, out)
from tlcli.labelfile import Columns
from tlcli import cli_train  # noqa: F401  (registers `tlcli train` on the same app, listed first)


@command()
def backbones(
    as_json: AsJson = False,
):
    """List the backbones `train --backbone` accepts, with their sizes and preprocessing.

    Example: [bold]tlcli backbones[/]
    """
    from tlcli.backbones import BACKBONES

    if as_json:
        print(json.dumps({name: dataclasses.asdict(spec) for name, spec in BACKBONES.items()}, indent=2))
        return
    out.print(tables.backbones_table(BACKBONES))


@command("augment-preview")
def augment_preview(
    data_dir: DataDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("augment_preview.png"),
    samples: Annotated[int, typer.Option(help="How many images to show (one row each).")] = 6,
    variants: Annotated[int, typer.Option(help="Augmented versions per image.")] = 5,
    image_size: Annotated[int, typer.Option(help="Size the images are shown at.")] = 160,
    seed: Annotated[int, typer.Option(help="Seed for picking images and augmenting.")] = _default(TrainConfig, "seed"),
    augment: Augment = _default(AugmentConfig, "enabled"),
    rotation: Rotation = _default(AugmentConfig, "rotation"),
    shift: Shift = _default(AugmentConfig, "shift"),
    shear: Shear = _default(AugmentConfig, "shear"),
    zoom: Zoom = _default(AugmentConfig, "zoom"),
    flip: Flip = _default(AugmentConfig, "flip"),
):
    """Write a PNG grid of augmented training images, to see what the augmentation flags do.

    Each row is one image: the original, then augmented versions.

    Example: [bold]tlcli augment-preview ./flowers --rotation 30 -o aug.png[/]
    """
    config = AugmentConfig(augment, rotation, shift, shear, zoom, flip)
    config.check()
    check_options(samples=samples, variants=variants, preview_size=image_size, seed=seed)
    _import_tensorflow_quietly()
    from tlcli.augment import write_preview

    path = write_preview(data_dir, output, config, samples=samples, variants=variants, size=image_size, seed=seed)
    out.print(f"Wrote {path}")




def _load_model_ref(model: Optional[str], project: str):
    """Resolve --model and import TensorFlow only for the model kinds that need it (.tflite and
    .onnx do not)."""
    from tlcli.rundir import resolve_model

    ref = resolve_model(model, project)
    if ref.kind not in ("tflite", "onnx"):
        _import_tensorflow_quietly()
    return ref


@command()
def predict(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) and globs, mixed.", show_default=False)],
    model: ModelOption = None,
    project: ProjectOption = _default(TrainConfig, "project"),
    top_k: TopK = 3,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="table, json or csv (default: from --output's extension, else table).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results to this file instead of the terminal.", show_default=False)] = None,
    batch_size: BatchSize = 32,
    full: Annotated[bool, typer.Option("--full", help=f"Print every row of the table, even for more than {tables.SUMMARY_ABOVE} images.")] = False,
    tta: Tta = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="Label an image 'unknown' when its top probability is below this (0-1); its top-k are still listed. Multi-label: every label's threshold is raised to at least this.", show_default=False)] = None,
    quiet: Quiet = False,
):
    """Predict the class of images with a trained model (.keras, SavedModel, .tflite or .onnx).

    Image size, preprocessing and labels come from the model and its run folder. A file that
    cannot be read gets a row with its error and makes the exit code 1; the others are still
    predicted. JSON rows: {"path", "label", "confidence", "top_k": [{"label", "confidence"}], "error"}.

    A multi-label model gives each image every label at or above its threshold (tuned in
    training), or none: JSON rows {"path", "labels": [{"label", "confidence", "threshold"}],
    "top_k", "error"}; CSV columns labels and confidences, ;-separated.

    In the terminal, more than a screenful of images gets a summary (images and mean confidence
    per predicted class, and how many are unknown) and the first rows; --full, --format or
    --output give every row.

    Example: [bold]tlcli predict photos/ extra.jpg 'more/*.png' --format json -o predictions.json[/]

    Example: [bold]tlcli predict photos/ --tta flip --min-confidence 0.6[/]
    """
    from tlcli.predict import FORMATS, format_for, predict_files, render, results_table

    fmt = format_for(output, fmt.lower() if fmt else None)
    if fmt not in FORMATS:
        raise TlcliError(f"--format must be one of {', '.join(FORMATS)}; not '{fmt}'.")
    check_options(top_k=top_k, batch_size=batch_size)
    if tta is not None:
        check_options(tta=tta)
    if min_confidence is not None:
        check_options(min_confidence=min_confidence)
    ref = _load_model_ref(model, project)
    results = predict_files(ref, paths, top_k=top_k, batch_size=batch_size, console=err, quiet=quiet, tta=tta,
                            min_confidence=min_confidence)
    failed = sum(1 for r in results if r["error"])
    if output is not None:
        from tlcli.rundir import write_text

        write_text(output, render(results, fmt))
        if not quiet:
            err.print(f"Wrote {len(results)} prediction(s) to {output}", highlight=False)
    elif fmt == "table" and (full or len(results) <= tables.SUMMARY_ABOVE):
        out.print(results_table(results))
    elif fmt == "table":
        for part in tables.predictions_summary(results):
            out.print(part, highlight=False)
    else:
        sys.stdout.write(render(results, fmt))
    if failed:
        if not quiet:
            err.print(f"[yellow]{failed} of {len(results)} input(s) failed.[/]", highlight=False)
        raise typer.Exit(1)


@command()
def evaluate(
    data_dir: Annotated[str, typer.Argument(help="One folder per class, or train/ and val/ (and test/) folders of class folders; a local folder or a URL TensorFlow reads (gs://...); or a label file (CSV, JSON: path,label[,split]).", show_default=False)],
    model: ModelOption = None,
    project: ProjectOption = _default(TrainConfig, "project"),
    split: Annotated[Optional[str], typer.Option(help="train, val, test or all (default: test/ or a label file's test rows if present, else val/; all for a folder of classes or a label file without splits).", show_default=False)] = None,
    path_column: PathColumn = None,
    label_column: LabelColumn = None,
    label_delimiter: Annotated[Optional[str], typer.Option(help="Multi-label model: split a label file's label cells at this text (default: as its run did).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the results (default: <run>/eval/, or <run>/eval/<model file name>/ for other models of the run).", show_default=False)] = None,
    top_k: TopK = 3,
    batch_size: BatchSize = 32,
    max_errors: Annotated[int, typer.Option(help="Misclassified images shown in errors.png.")] = 16,
    explain: Annotated[bool, typer.Option("--explain", help="Show each misclassified image's Grad-CAM heatmap beside it in errors.png (Keras models).")] = False,
    tta: Tta = None,
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Measure a model on labelled images: accuracy, top-k accuracy, loss, calibration, per-class scores.

    DATA_DIR has one folder per class, or train/ val/ (test/) folders; its classes must be the
    model's. Writes metrics.json, predictions.csv, confusion_matrix.png, reliability.png and
    errors.png (the most confident mistakes). The loss is plain cross-entropy, without
    training's label smoothing. Works the same for .keras, SavedModel, .tflite and .onnx models.

    Calibration: the expected calibration error (ECE, 15 bins), the Brier score, whether the
    model is over- or under-confident, and reliability.png (accuracy per confidence bin). With
    --tta, the accuracy with and without test-time augmentation.

    A multi-label model: mAP, micro and macro F1, exact-match accuracy, per-label precision,
    recall, F1, AP and TP/FP/FN/TN at its thresholds; label_confusion.png, and errors.png: the
    most confident false positives and false negatives.

    Example: [bold]tlcli evaluate ./flowers --model runs/train/export/model_int8.tflite --tta flip[/]
    """
    check_options(top_k=top_k, batch_size=batch_size, max_errors=max_errors)
    if split is not None:
        check_options(split=split)
    if tta is not None:
        check_options(tta=tta)
    ref = _load_model_ref(model, project)
    if explain:
        from tlcli.explain import require_keras

        require_keras(ref)
    from tlcli.evaluate import evaluate as run_evaluation

    result = run_evaluation(data_dir, ref, split=split, output=output, top_k=top_k, batch_size=batch_size,
                            max_errors=max_errors, console=err, quiet=quiet or as_json, explain=explain, tta=tta,
                            columns=Columns(path_column, label_column), label_delimiter=label_delimiter)
    if as_json:
        print(json.dumps({"out_dir": str(result.out_dir), **result.metrics}))
        return
    if not quiet:
        for table in tables.evaluation_tables(result.metrics):
            out.print(table)
        files = ("metrics.json, predictions.csv, label_confusion.png, errors.png" if result.metrics.get("multi_label")
                 else "metrics.json, predictions.csv, confusion_matrix.png, reliability.png, errors.png")
        out.print(f"Wrote {files} to {result.out_dir}", highlight=False)


@command()
def explain(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) and globs, mixed.", show_default=False)],
    model: KerasModelOption = None,
    class_name: Annotated[Optional[str], typer.Option("--class", "--label", "-c", help="Explain this class (of a multi-label model: this label) instead of each image's predicted one.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder for the PNGs (default: <run>/explain/, or ./explain for a model outside a run).", show_default=False)] = None,
    project: ProjectOption = _default(TrainConfig, "project"),
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Show where the model looks: a Grad-CAM heatmap over each image, for the predicted class or --class.

    Red marks the regions that raise the class's score most, from the backbone's last convolutional feature map; a model that is right for the wrong reason (the background, a watermark) shows it there.

    Writes one PNG per image (the original image, the heatmap, the label and its confidence) and contact_sheet.png when there are several. Needs the Keras model (a run or .keras file), not a .tflite export. A file that cannot be read is reported and makes the exit code 1.

    A multi-label model: the most probable label by default, or any one label with --label NAME; each picture says whether the label is above its threshold.

    Example: [bold]tlcli explain photos/ 'more/*.jpg' --model runs/train --class roses[/]

    Example: [bold]tlcli explain beach.jpg --label sunset[/]
    """
    from tlcli.explain import class_index, require_keras
    from tlcli.rundir import resolve_model

    check_options(batch_size=batch_size)
    ref = resolve_model(model, project)
    require_keras(ref)  # a .tflite or SavedModel fails here, before TensorFlow loads
    class_index(class_name, ref.labels)
    _import_tensorflow_quietly()
    from tlcli.explain import explain_files

    result = explain_files(ref, paths, class_name, output, batch_size=batch_size, console=err, quiet=quiet or as_json)
    if as_json:
        print(json.dumps(result.rows, indent=2))
    elif not quiet:
        out.print(tables.explain_table(result))
        sheet = f" and {result.sheet.name}" if result.sheet else ""
        done = len(result.rows) - result.failed
        out.print(f"Wrote {done} heatmap(s){sheet} to {result.out_dir}", highlight=False)
    if result.failed:
        if not quiet:
            err.print(f"[yellow]{result.failed} of {len(result.rows)} input(s) failed.[/]", highlight=False)
        raise typer.Exit(1)


@command()
def export(
    model: KerasModelOption = None,
    tflite: Annotated[bool, typer.Option("--tflite", help="Write model.tflite (float32); the default when nothing else is asked for.", rich_help_panel="Formats")] = False,
    quantize: Annotated[Optional[list[str]], typer.Option("--quantize", help="Also write a quantized TFLite model: float16, dynamic, int8 or all (repeatable).", rich_help_panel="Formats", show_default=False)] = None,
    saved_model: Annotated[bool, typer.Option("--saved-model", help="Write a SavedModel folder for TF Serving.", rich_help_panel="Formats")] = False,
    int8_io: Annotated[bool, typer.Option("--int8-io", help="Also write model_int8_io.tflite: the int8 model with uint8 input/output tensors (input 0..255 as is).", rich_help_panel="Formats")] = False,
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write model.onnx (raw RGB float32 in, probabilities out), checked on onnxruntime; needs pip install 'tlcli\\[onnx]'.", rich_help_panel="Formats")] = False,
    calibration_data: Annotated[Optional[Path], typer.Option(help="Images to calibrate int8 on (default: the run's training images).", rich_help_panel="Quantization", show_default=False)] = None,
    calibration_samples: Annotated[int, typer.Option(help="How many calibration images int8 uses.", rich_help_panel="Quantization")] = 200,
    check_data: Annotated[Optional[Path], typer.Option(help="Class folders (or train/val layout: val) to check the exports on (default: the run's validation images).", rich_help_panel="Check", show_default=False)] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Minimum top-1 agreement with the Keras model (default: 0.98 float, 0.95 int8/dynamic).", rich_help_panel="Check", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder to write to (default: <run>/export).", rich_help_panel="Output", show_default=False)] = None,
    project: ProjectOption = _default(TrainConfig, "project"),
    as_json: AsJson = False,
    quiet: Quiet = False,
):
    """Export a trained model to TFLite (float32, float16, dynamic, int8), SavedModel and ONNX, and check each.

    Every file takes raw RGB images (preprocessing is inside, augmentation is not) and comes
    with labels.txt and model.json. Every .tflite carries TFLite metadata (labels,
    normalization), so MediaPipe Tasks loads it as it is; the .onnx carries its labels.

    Each file is run next to the Keras model on the run's validation images: agreement,
    accuracy, size and latency. One below --min-agreement is a failure (exit code 1), kept to
    inspect.

    Example: [bold]tlcli export --quantize all --saved-model[/]
    """
    from tlcli.export import select_formats

    check_options(calibration_samples=calibration_samples)
    if min_agreement is not None:
        check_options(min_agreement=min_agreement)
    formats = select_formats(tflite, quantize or [], saved_model, int8_io, onnx)  # bad flags fail before TensorFlow loads
    _import_tensorflow_quietly()
    from tlcli.export import export as run_export

    result = run_export(model=model, project=project, formats=formats, output=output,
                        calibration_data=calibration_data, calibration_samples=calibration_samples,
                        int8_io=int8_io, check_data=check_data, min_agreement=min_agreement,
                        console=err, quiet=quiet or as_json)
    if as_json:
        print(json.dumps(result.to_dict()))
    elif not quiet:
        out.print(tables.export_table(result))
        for check in result.artifacts:
            for note in check.notes:
                err.print(f"[yellow]* {check.file}:[/] {note}", highlight=False)
    if result.failures:
        names = ", ".join(f"{c.file} ({c.agreement:.1%} < {c.min_agreement * 100:g}%)" for c in result.failures)
        raise TlcliError(f"below --min-agreement, kept for inspection: {names}", exit_code=1)


from tlcli import cli_check  # noqa: E402,F401  (registers `tlcli check` on the same app, listed last)
from tlcli import cli_runs  # noqa: E402,F401  (registers `tlcli runs`)


def main():
    app()


if __name__ == "__main__":
    main()

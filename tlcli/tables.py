"""The tables the commands print: functions from results to rich renderables, no I/O.

Kept apart from tlcli.cli so that the command definitions stay readable. Importing it imports
only rich, so `tlcli --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

SUMMARY_ABOVE = 10  # more images than this: the terminal table is a summary and the first rows
FIRST_ROWS = 5


def backbones_table(backbones: dict) -> Table:
    """`tlcli backbones`: each registry entry's sizes, preprocessing and defaults."""
    table = Table(title="Backbones (Keras Applications)", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(map(len, backbones)))
    for column in ("size", "min", "features", "prep", "unfreeze", "imagenet"):
        table.add_column(column, justify="left" if column == "prep" else "right", no_wrap=True)
    for name, spec in backbones.items():
        table.add_row(name, str(spec.default_size), str(spec.min_size), str(spec.features), spec.preprocess,
                      f"{spec.unfreeze:.0%}", "yes" if spec.pretrained else "no")
    return table


def train_summary(run_dir: Path, metrics: dict) -> Table:
    """`tlcli train`'s result: accuracy (multi-label: mAP, macro F1 and exact match at the tuned
    thresholds), loss, image counts, time and memory of the run."""
    table = Table(title=f"Trained: {run_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    if "val_map" in metrics:
        table.add_row("val mAP", f"{metrics['val_map']:.3f}")
        table.add_row("val macro F1 (tuned thresholds)", f"{metrics['val_macro_f1']:.3f}")
        table.add_row("val exact match", f"{metrics['val_exact_match']:.3f}")
    else:
        table.add_row("val accuracy", f"{metrics['val_accuracy']:.3f}")
    table.add_row("val loss", f"{metrics['val_loss']:.3f}")
    table.add_row("best epoch", str(metrics["best_epoch"]))
    for phase, epoch in metrics.get("stopped_early", {}).items():  # --patience
        table.add_row(f"stopped early ({phase})", f"at epoch {epoch}")
    table.add_row("images (train / val / skipped)", f"{metrics['n_train']} / {metrics['n_val']} / {metrics['n_skipped']}")
    for phase, seconds in metrics["seconds"].items():
        table.add_row(f"seconds ({phase})", f"{seconds:.1f}")
    table.add_row("peak memory", f"{metrics['peak_memory_mb']:.0f} MB")
    return table


def predictions_summary(results: list[dict]) -> list:
    """Images and mean confidence per predicted class, then those labelled unknown (below
    --min-confidence), the first rows (and any that failed), and a hint. For a multi-label
    model: images per label (and with none above threshold), and the mean probability of each
    label where it applies."""
    from rich.text import Text

    from tlcli.predict import NO_LABEL, is_unknown, results_table

    multi = any("labels" in r for r in results)
    confidences: dict[str, list[float]] = {}
    unsure: list[float] = []
    for r in results:
        if r["error"]:
            continue
        if is_unknown(r):
            unsure.append(0.0 if multi else r["confidence"])
        # A multi-label image counts under each of its labels, a single-label one under its class.
        found = r["labels"] if multi else [] if is_unknown(r) else [r]
        for entry in found:
            confidences.setdefault(entry["label"], []).append(entry["confidence"])
    failed = [r for r in results if r["error"]]
    summary = Table(title=f"{len(results)} predictions", title_justify="left")
    for column in ("predicted label" if multi else "predicted class", "images", "mean confidence"):
        summary.add_column(column, justify="left" if column.startswith("predicted") else "right")
    for label, values in sorted(confidences.items(), key=lambda item: (-len(item[1]), item[0])):
        summary.add_row(Text(label, style="bold"), str(len(values)), f"{sum(values) / len(values):.3f}")
    if unsure and multi:
        summary.add_row(Text(f"({NO_LABEL})", style="yellow"), str(len(unsure)), "")
    elif unsure:
        summary.add_row(Text("(unknown: below --min-confidence)", style="yellow"), str(len(unsure)),
                        f"{sum(unsure) / len(unsure):.3f}")
    if failed:
        summary.add_row(Text("(could not be read)", style="red"), str(len(failed)), "")
    later_failures = [r for r in results[FIRST_ROWS:] if r["error"]]
    first = results_table(results[:FIRST_ROWS] + later_failures)
    first.title = f"First {FIRST_ROWS} of {len(results)}" + (", and the ones that failed" if later_failures else "")
    hint = "Every row: add --full, or save them with -o predictions.csv (or .json)."
    return [summary, first, hint]


def evaluation_tables(m: dict) -> list[Table]:
    """`tlcli evaluate`'s summary and per-class scores, from its metrics.json."""
    from rich.markup import escape

    if m.get("multi_label"):
        return multilabel_evaluation_tables(m)

    summary = _evaluation_summary(m, f"Evaluation ({m['split']} split)")
    tta = m.get("tta")
    if tta:
        summary.add_row(f"accuracy (TTA: {tta['mode']})", f"{m['accuracy']:.3f}")
        summary.add_row("accuracy without TTA", f"{tta['without']['accuracy']:.3f}")
    else:
        summary.add_row("accuracy", f"{m['accuracy']:.3f}")
    summary.add_row(f"top-{m['top_k']} accuracy", f"{m['top_k_accuracy']:.3f}")
    summary.add_row("loss (cross-entropy)", f"{m['loss']:.3f}")
    c = m["calibration"]
    without = f" (without TTA {tta['without']['ece']:.3f})" if tta else ""
    summary.add_row(f"ECE ({c['bins']} bins)", f"{c['ece']:.3f}{without}")
    summary.add_row("Brier score", f"{c['brier']:.3f}")
    summary.add_row("confidence", f"{c['verdict']} (mean {c['mean_confidence']:.3f})")
    summary.add_row("images (skipped)", f"{m['n_images']} ({m['n_skipped']})")
    classes = Table(title="Per class", title_justify="left")
    for column in ("class", "precision", "recall", "F1", "support"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    rows = list(m["per_class"].items())
    for i, (name, s) in enumerate(rows):
        classes.add_row(escape(name), f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                        str(s["support"]), end_section=i == len(rows) - 1)
    for name, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        s = m[key]
        classes.add_row(f"[italic]{name}[/]", f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}",
                        str(m["n_images"]))
    return [summary, classes]


def _evaluation_summary(m: dict, title: str) -> Table:
    """The summary table of an evaluation, with its first rows: which model, on which data."""
    from rich.markup import escape

    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("model", escape(f"{m['model']} ({m['kind']})"))
    summary.add_row("data", escape(m["data_dir"]))
    return summary


def multilabel_evaluation_tables(m: dict) -> list[Table]:
    """`tlcli evaluate` on a multi-label model: the summary, each label's scores at its threshold,
    and each label's confusion counts."""
    from rich.markup import escape

    summary = _evaluation_summary(m, f"Evaluation ({m['split']} split, multi-label)")
    tta = m.get("tta")
    for key, name in (("map", "mAP"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1"),
                      ("exact_match", "exact match"), ("loss", "loss (binary cross-entropy)")):
        without = f" (without TTA {tta['without'][key]:.3f})" if tta else ""
        summary.add_row(name + (f" (TTA: {tta['mode']})" if tta else ""), f"{m[key]:.3f}{without}")
    summary.add_row("images (skipped)", f"{m['n_images']} ({m['n_skipped']})")
    scores = Table(title="Per label, at its threshold", title_justify="left")
    for column in ("label", "threshold", "precision", "recall", "F1", "AP", "support"):
        scores.add_column(column, justify="left" if column == "label" else "right")
    counts = Table(title="Confusion per label", title_justify="left")
    for column in ("label", "TP", "FP", "FN", "TN"):
        counts.add_column(column, justify="left" if column == "label" else "right")
    for name, s in m["per_class"].items():
        scores.add_row(escape(name), f"{s['threshold']:.2f}", f"{s['precision']:.3f}", f"{s['recall']:.3f}",
                       f"{s['f1']:.3f}", "—" if s["ap"] is None else f"{s['ap']:.3f}", str(s["support"]))
        counts.add_row(escape(name), *(str(s[key]) for key in ("tp", "fp", "fn", "tn")))
    return [summary, scores, counts]


def explain_table(result) -> Table:
    """`tlcli explain`'s rows: each image's class, confidence and heatmap file."""
    from rich.text import Text

    title = f"Grad-CAM of {result.layer} ({result.grid[0]}x{result.grid[1]}), {len(result.rows)} image(s)"
    table = Table(title=title, title_justify="left")
    other = any(r["predicted"] != r["label"] for r in result.rows if not r["error"])  # --class was given
    multi = any("threshold" in r for r in result.rows)  # a multi-label model: is the label above its threshold?
    columns = (("path", "label" if multi else "class", "confidence") + (("threshold",) if multi else ())
               + (("predicted",) if other else ()) + ("heatmap",))
    for column in columns:
        table.add_column(column, justify="right" if column in ("confidence", "threshold") else "left",
                         overflow="fold")
    for r in result.rows:
        if r["error"]:
            table.add_row(Text(r["path"]), Text("error", style="bold red"), "", *([""] if multi else []),
                          *([""] if other else []), Text(r["error"], style="red"))
        else:
            predicted = "" if r["predicted"] == r["label"] else f"{r['predicted']} {r['predicted_confidence']:.3f}"
            threshold = [f"{r['threshold']:.2f} ({'above' if r['present'] else 'below'})"] if multi else []
            table.add_row(Text(r["path"]), Text(r["label"], style="bold"), f"{r['confidence']:.3f}", *threshold,
                          *([Text(predicted)] if other else []), Text(Path(r["heatmap"]).name))
    return table


def export_table(result) -> Table:
    """`tlcli export`'s checks: each file's size, agreement with the Keras model, accuracy, latency."""
    from rich import box
    from rich.markup import escape

    table = Table(title=escape(f"Exported to {result.output}"),
                  caption=escape(f"Checked on {result.n_check} images: {result.check_data}"
                                 + ("\nMulti-label: agreement is the share of images given the same label set, "
                                    "accuracy the exact-match accuracy." if result.multi_label else "")),
                  title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, show_edge=False)
    for column in ("file", "size", "×f32", "agreement", "accuracy", "ms/image", "check"):
        table.add_column(column, justify="left" if column in ("file", "check") else "right", no_wrap=True)
    float32 = next((c for c in result.artifacts if c.format == "float32"), None)
    ref = result.reference
    table.add_row(ref.file, _megabytes(ref.size_bytes), "", "", f"{ref.accuracy:.1%}", f"{ref.latency_ms:.2f}",
                  "reference")
    for c in result.artifacts:
        ratio = f"{c.size_bytes / float32.size_bytes:.2f}" if float32 else ""
        verdict = ("[green]ok[/]" if c.passed else f"[bold red]FAIL[/] <{c.min_agreement * 100:g}%") + ("*" if c.notes else "")
        name = c.file + ("/" if c.format == "saved_model" else "")
        table.add_row(name, _megabytes(c.size_bytes), ratio, f"{c.agreement:.1%}", f"{c.accuracy:.1%}",
                      f"{c.latency_ms:.2f}", verdict)
    return table


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def runs_summary(records: list, project: str, width: int | None = None) -> list:
    """`tlcli runs`: one row per run, then how to resume each interrupted run, why each failed
    one counts as failed, and any file that could not be read. When every run trained on the
    same data folder, the title says which, and the table has a column less. `width`: the
    terminal's, which the text columns then share so that the table fits."""
    from rich import box
    from rich.markup import escape
    from rich.text import Text

    from tlcli.runs import COLUMNS

    folders = {r.data_dir for r in records}
    shared = _short_path(folders.pop()) if len(folders) == 1 else None
    title = f"{len(records)} run(s) in {project}" + (f", all on {shared}" if shared else "")
    columns = [c for c in COLUMNS if not (shared and c == "data")]
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=0)
    styles = {"complete": "green", "interrupted": "yellow", "failed": "red"}
    rows = []
    for r in records:
        test = "—" if r.test_accuracy is None else \
            f"{r.test_accuracy:.3f}" + ("" if r.eval_split == "test" else f" ({r.eval_split or '?'})")
        cells = {"name": Text(r.name, style="bold"), "date": r.date[:16].replace("T", " ") if r.date else "—",
                 "data": Text(_short_path(r.data_dir)), "backbone": Text(r.backbone or "—"),
                 "size": "—" if r.image_size is None else str(r.image_size),
                 "val_acc": "—" if r.val_accuracy is None else f"{r.val_accuracy:.3f}", "test_acc": test,
                 "time": _duration(r.seconds), "status": Text(r.status, style=styles[r.status]),
                 "exports": Text(", ".join(map(_export_name, r.exports)) or "—")}
        rows.append([cells[c] for c in columns])
    wrapping = ("data", "backbone", "exports")
    widths = _shared_widths(columns, rows, width, wrapping)
    for column in columns:  # names, figures and status stay whole; the date wraps between day and time
        table.add_column(column, justify="right" if column in ("size", "val_acc", "test_acc", "time") else "left",
                         overflow="fold", no_wrap=column not in ("date", *wrapping),
                         width=widths.get(column))
    for row in rows:
        table.add_row(*row)
    notes = []
    for r in records:
        if r.resume:
            notes.append(Text.assemble((r.name, "bold"), ": interrupted; continue with ", (r.resume, "bold")))
        if r.note:
            notes.append(Text.assemble((r.name, "bold"), f": failed, {r.note}."))
        if r.problems:
            notes.append(Text.assemble((r.name, "bold"), f": {'; '.join(r.problems)}.", style="yellow"))
    return [table, *notes]


def _shared_widths(columns: list[str], rows: list[list], width: int | None, wrapping: tuple) -> dict[str, int]:
    """Widths that fit the table in `width` (one space between columns): the `wrapping` columns
    share what the others leave, in proportion to what each would need beyond its header, and
    the date wraps between day and time only when they cannot. Rich's own narrowing evens the
    columns out and can leave the table wider than the terminal. {} when the table fits as it is."""
    natural = {c: max([len(c)] + [len(str(row[i])) for row in rows]) for i, c in enumerate(columns)}
    if width is None or sum(natural.values()) + len(columns) - 1 <= width:
        return {}
    flexible = [c for c in columns if c in wrapping]
    least = {c: len(c) for c in flexible}
    for date in (natural.get("date", 0), min(natural.get("date", 0), 10)):
        fixed = sum(w for c, w in natural.items() if c not in flexible and c != "date") + date
        spare = width - (len(columns) - 1) - fixed - sum(least.values())
        if spare >= 0:
            break
    share = sum(natural[c] - least[c] for c in flexible)
    widths = {c: least[c] + min(natural[c] - least[c], max(0, spare) * (natural[c] - least[c]) // max(1, share))
              for c in flexible}
    return {**widths, **({"date": date} if "date" in natural else {})}


def compare_table(comparison) -> Table:
    """`tlcli runs --compare`: the two runs' settings and figures, the rows that differ highlighted."""
    from rich.markup import escape
    from rich.text import Text

    a, b = (r.path for r in comparison.runs)
    table = Table(title=escape(f"{a} vs {b}"), caption="≠ marks the rows that differ", title_justify="left",
                  caption_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("setting", no_wrap=True)
    table.add_column(escape(a), overflow="fold")
    table.add_column(escape(b), overflow="fold")
    for i, (section, key, first, second) in enumerate(comparison.rows):
        last = i + 1 == len(comparison.rows) or comparison.rows[i + 1][0] != section
        differs = first != second
        table.add_row("≠" if differs else "", Text(key, style="dim" if not differs else ""), Text(first), Text(second),
                      style="bold yellow" if differs else None, end_section=last)
    return table


def _export_name(file: str) -> str:
    """An export's format as `tlcli export` names it: model_int8.tflite -> int8, model.onnx -> onnx."""
    stem, _, suffix = file.rstrip("/").partition(".")
    if stem == "model" and suffix:
        return suffix
    return stem.removeprefix("model_") if suffix == "tflite" else file.rstrip("/")


def _short_path(path: str | None) -> str:
    """A data folder as the user would type it: relative below the working directory, ~ for home."""
    if not path:
        return "—"
    if "://" in path:
        return path
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(Path(path).relative_to(base))
        except ValueError:
            continue
    return path


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(round(seconds)) // 60
    return f"{minutes}m {int(round(seconds)) % 60:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"

"""The command line's plumbing: the Typer app, the consoles, one-line errors, help reflow, and
the options several commands share, each defined once. The commands themselves are in tlcli.cli.

No TensorFlow here either: `tlcli --help` imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

from tlcli import __version__
from tlcli.errors import TlcliError

app = typer.Typer(
    name="tlcli",
    help="Turn a folder of labelled images into a deployable image classifier (transfer learning).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)


def _default(cls, name: str):
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow without its C++ start-up log lines in the user's terminal.

    Native code writes them to file descriptor 2 before any Python logging setting applies.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    from tlcli.progress import quiet_native_output

    with quiet_native_output():
        import tensorflow  # noqa: F401


def friendly_errors(command):
    """Turn tlcli's own errors, interruptions and OS errors into one line and an exit code."""

    from rich.markup import escape  # messages hold paths and "[onnx]": text, not markup

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TlcliError as error:
            err.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]Interrupted.[/]")
            raise typer.Exit(130) from None
        except OSError as error:  # full disk, permissions, … : not a bug in tlcli
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            err.print(f"[bold red]Error:[/] {escape(str(error.strerror or error) + where)}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def command(name: Optional[str] = None):
    """Register a tlcli command: its docstring is its --help, and its errors are `friendly_errors`."""

    def register(function):
        function.__doc__ = reflow(function.__doc__)
        return app.command(name)(friendly_errors(function))

    return register


def reflow(doc: Optional[str]) -> str:
    """Join the lines of each docstring paragraph, so --help wraps them to the terminal's width.

    Typer's rich mode keeps single line breaks after the first paragraph, so without this --help
    breaks lines where the source does ("must be the / model's").
    """
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _version(value: bool):
    if value:
        out.print(f"tlcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
):
    """Turn a folder of labelled images into a deployable image classifier (transfer learning)."""


# Augmentation flags are shared by `train` and `augment-preview`.
Rotation = Annotated[float, typer.Option(help="Random rotation, degrees either way.", rich_help_panel="Augmentation")]
Shift = Annotated[float, typer.Option(help="Random width/height shift, fraction of the size.", rich_help_panel="Augmentation")]
Shear = Annotated[float, typer.Option(help="Random shear, degrees either way.", rich_help_panel="Augmentation")]
Zoom = Annotated[float, typer.Option(help="Random zoom in or out, fraction.", rich_help_panel="Augmentation")]
Flip = Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flip.", rich_help_panel="Augmentation")]
Augment = Annotated[bool, typer.Option("--augment/--no-augment", help="Turn the whole augmentation stage on or off.", rich_help_panel="Augmentation")]
# A string, not a Path: Path would turn gs://bucket/flowers (or ram://x) into gs:/bucket/flowers.
DataDir = Annotated[str, typer.Argument(help="One folder per class, or train/ and val/ (and test/) folders of class folders.", show_default=False)]

# Options several commands share, each defined once.
ModelOption = Annotated[Optional[str], typer.Option("--model", "-m", help="A run folder, .keras file, SavedModel folder, .tflite or .onnx file (default: the newest run in --project). A lone .tflite or .onnx, with no labels.txt beside it, takes its labels from its metadata.", show_default=False)]
KerasModelOption = Annotated[Optional[str], typer.Option("--model", "-m", help="A run folder or .keras file (default: the newest run in --project).", show_default=False)]
ProjectOption = Annotated[str, typer.Option(help="Folder holding the runs.", rich_help_panel="Output")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout, for machines.", rich_help_panel="Output")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel="Output")]
TopK = Annotated[int, typer.Option(help="How many of the best classes to report.")]
BatchSize = Annotated[int, typer.Option(help="Images per inference batch.")]
# A label file's columns, for `train`, `evaluate` and `check`, when their names are not ones tlcli knows.
PathColumn = Annotated[Optional[str], typer.Option(help="The column of a label file (CSV, JSON) holding the image paths (default: one named path, file, filename, image, …).", rich_help_panel="Data", show_default=False)]
LabelColumn = Annotated[Optional[str], typer.Option(help="The column of a label file holding the labels (default: one named label, class, category, …).", rich_help_panel="Data", show_default=False)]
Tta = Annotated[Optional[str], typer.Option("--tta", help="Test-time augmentation: average the probabilities over the image and its mirror (flip), or also over 5 crops at 90% (flip+crops).", show_default=False)]

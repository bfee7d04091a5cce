"""`tlcli runs`: the project's runs in one table, or two of them side by side (tlcli.runs reads
the run folders). Registered on the same app as tlcli.cli; no TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tlcli import tables
from tlcli.cli_app import AsJson, ProjectOption, _default, command, out
from tlcli.config import TrainConfig
from tlcli.runs import COLUMNS


@command()
def runs(
    project: ProjectOption = _default(TrainConfig, "project"),
    sort: Annotated[Optional[str], typer.Option(help=f"Order by this column: {', '.join(COLUMNS)} (accuracies best first; default: date, oldest first).", show_default=False)] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the order.")] = False,
    compare: Annotated[Optional[tuple[str, str]], typer.Option(help="Two runs (names in --project, or paths): their config.json and metrics side by side, differences highlighted, and both runs' curves in one PNG.", metavar="A B", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where --compare writes its PNG (default: compare_A_B.png beside run A).", rich_help_panel="Output", show_default=False)] = None,
    as_json: AsJson = False,
):
    """List the runs in --project: data, backbone, accuracy, time, status and exports of each.

    Status: complete; interrupted (a checkpoint to resume from: the `tlcli train --resume`
    command is printed); failed (neither finished nor resumable: it died before its first
    epoch ended, or lost its checkpoint). A run still training shows as interrupted, or failed
    in its first epoch. test_acc is `tlcli evaluate`'s accuracy, with its split when that was
    not test/.

    --compare A B shows two runs' settings and figures side by side and writes their curves
    into one PNG.

    Example: [bold]tlcli runs --sort val_acc[/], or [bold]tlcli runs --compare train train3[/]
    """
    from tlcli.runs import compare_runs, list_runs

    if compare is not None:
        comparison = compare_runs(*compare, project=project, output=output)
        if as_json:
            print(json.dumps(comparison.to_dict()))
            return
        out.print(tables.compare_table(comparison))
        out.print(f"Curves of both: {comparison.png}" if comparison.png else "Neither run has a history.csv: no curves.",
                  highlight=False, soft_wrap=True)
        return
    records = list_runs(project, sort, reverse)
    if as_json:
        print(json.dumps([r.to_dict() for r in records]))
    elif not records:
        out.print(f"No runs in {project}/ yet: train one with `tlcli train DATA_DIR --project {project}`.",
                  highlight=False)
    else:
        table, *notes = tables.runs_summary(records, project, out.width)
        out.print(table)
        for note in notes:  # one line each, so a resume command can be copied whole
            out.print(note, highlight=False, soft_wrap=True)

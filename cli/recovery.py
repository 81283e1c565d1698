"""``enrich flow recovery ...``: see a flow's bytewax recovery store; lay it out for a new process count."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

recovery_app = typer.Typer(
    help="The flows' bytewax recovery stores: where the partitions are, and rescaling (stop the flow first)."
)
console = Console(soft_wrap=True)
Dirs = Annotated[list[Path], typer.Argument(help="Recovery directories, process 0 first")]


@recovery_app.command("status")
def status(directories: Dirs) -> None:
    """List the recovery partitions in each directory: index, count, last committed epoch, rows held."""
    from flows.recovery import RecoveryLayoutError, partition_files

    table = Table("directory", "partition", "of", "committed epoch", "rows", "bytes")
    try:
        for d in directories:
            for f in partition_files(d):
                size = sum(p.stat().st_size for p in f.siblings)
                epoch = "never used" if f.commit_epoch is None else str(f.commit_epoch)
                table.add_row(str(d), str(f.index), str(f.count), epoch, str(f.rows), f"{size:,}")
    except RecoveryLayoutError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(table)


@recovery_app.command("rescale")
def rescale(
    directories: Dirs,
    processes: Annotated[int, typer.Option("--processes", "-n", help="Number of processes to lay out for")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the moves, change nothing")] = False,
) -> None:
    """Move partitions so that directory i holds those of process i (p % processes == i).

    For one-directory-per-process stores (a disk or volume per process). Pass every directory of the old
    and the new cluster, in process order; those beyond --processes are emptied. Copies that no run ever
    used are deleted. A directory shared by all processes needs no rescale.
    """
    from flows.recovery import RecoveryLayoutError, rescale_plan
    from flows.recovery import rescale as apply

    try:
        moves = rescale_plan(directories, processes) if dry_run else apply(directories, processes)
    except RecoveryLayoutError as exc:
        console.print(f"[red]rescale refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    verb = "would" if dry_run else ""
    for m in moves:
        action = f"delete unused copy {m.source}" if m.target == Path() else f"move {m.source} -> {m.target}/"
        console.print(f"partition {m.index}: {verb} {action}".replace("  ", " "))
    console.print(f"{len(moves)} change(s); laid out for {processes} process(es)" + (" (dry run)" * dry_run))

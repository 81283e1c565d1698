"""Run a dataflow as one worker process of a cluster, with bytewax recovery (`enrich flow NAME`)."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig

from flows.recovery import prepare


@dataclass(frozen=True, slots=True)
class RunOptions:
    recovery_dir: Path | None
    snapshot_interval_s: float = 5.0
    backup_interval_s: float = 0.0
    process_id: int | None = None
    addresses: list[str] | None = None
    recovery_partitions: int = 4


def run(flow: Dataflow, opts: RunOptions) -> None:
    """Block running ``flow``. With a recovery dir, state and input offsets are snapshotted every
    ``snapshot_interval_s`` and a restart resumes from the last snapshot (output is at-least-once).

    The recovery dir is either shared by every process or one per process (flows/recovery.py); on first
    start this process creates its partitions, later starts check that the layout fits the process count.
    """
    # The flows hold many small long-lived dicts (caches, vehicle states); CPython's default GC thresholds
    # would rescan them thousands of times a second. Collect young objects far less often instead.
    gc.set_threshold(200_000, 50, 1000)
    # Everything alive now (modules, bytewax, pyarrow, the dataflow) lives as long as the process: keep it
    # out of every collection (measured: ~15% of the flow's CPU went to rescanning it).
    gc.freeze()
    recovery = None
    if opts.recovery_dir is not None:
        processes = len(opts.addresses) if opts.addresses else 1
        prepare(opts.recovery_dir, opts.recovery_partitions, opts.process_id or 0, processes)
        recovery = RecoveryConfig(  # type: ignore[no-untyped-call]
            opts.recovery_dir, timedelta(seconds=opts.backup_interval_s)
        )
    cli_main(  # type: ignore[no-untyped-call]
        flow,
        workers_per_process=1,
        process_id=opts.process_id,
        addresses=opts.addresses,
        epoch_interval=timedelta(seconds=opts.snapshot_interval_s),
        recovery_config=recovery,
    )

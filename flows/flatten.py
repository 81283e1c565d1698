"""The flattening job as a bytewax dataflow over file partitions (wiring only).

Every worker (one per process, ``-i/-a`` across hosts as for the other flows) builds its own partition of
the plan's units — the files assigned to it, largest first onto the least loaded — and reads them chunk by
chunk (memory is bounded by the chunk size). ``flatten`` runs the engine on each chunk with that worker's
:class:`~enrich.flatten.arrow.chunk.Flattener`; the sink stages the chunk's tables and result. The run is
finished (findings, publish, registry, alert) by ``enrich flatten`` once every worker has stopped.
"""

from __future__ import annotations

import gc
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from enrich.flatten.arrow.chunk import Chunk, ChunkResult, Flattener
from flows.flatten_job import Plan, assign, flattener
from stores.flatten_output import Staging
from stores.flatten_sources import chunks

_ENGINES: dict[int, Flattener] = {}  # one per worker: the run schema evolves chunk by chunk


class _Units(StatelessSourcePartition[tuple[int, Chunk]]):
    def __init__(self, plan: Plan, worker: int, units: list[dict[str, object]]) -> None:
        self.worker = worker
        self.items: Iterator[Chunk] = (
            c
            for u in units
            for c in chunks(
                Path(str(u["path"])), int(str(u["unit"])), plan.batch_bytes, json_column=plan.json_column
            )
        )

    def next_batch(self) -> list[tuple[int, Chunk]]:
        chunk = next(self.items, None)
        if chunk is None:
            raise StopIteration
        return [(self.worker, chunk)]


class UnitsSource(DynamicSource[tuple[int, Chunk]]):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Units:
        return _Units(self.plan, worker_index, assign(self.plan.units, worker_count)[worker_index])


class _Stage(StatelessSinkPartition[ChunkResult]):
    """Writes chunks in background threads (pyarrow releases the GIL), so writing one chunk overlaps
    parsing the next; at most ``depth`` chunks wait, which keeps memory bounded."""

    def __init__(self, staging: Staging, depth: int = 2) -> None:
        self.staging = staging
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="stage")
        self.pending: deque[Future[None]] = deque()

    def write_batch(self, items: list[ChunkResult]) -> None:
        for result in items:
            self.pending.append(self.pool.submit(self.staging.write, result))
            while len(self.pending) > self.depth:
                self.pending.popleft().result()

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()


class StagingSink(DynamicSink[ChunkResult]):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Stage:
        return _Stage(Staging(Path(self.plan.out), self.plan.dataset, self.plan.run))


def build_flow(plan: Plan, *, threads: bool | None = None) -> Dataflow:
    """``threads``: let pyarrow parse with its thread pool (default: when this is the only process)."""
    use_threads = (plan.workers <= 1) if threads is None else threads
    if not use_threads:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    gc.disable()  # a batch worker makes few reference cycles; collections only cost time here

    def flatten(item: tuple[int, Chunk]) -> ChunkResult:
        worker, chunk = item
        engine = _ENGINES.get(worker)
        if engine is None:
            engine = _ENGINES[worker] = flattener(plan, use_threads)
        return engine.process(chunk)

    flow = Dataflow("flatten")
    items = op.input("units", flow, UnitsSource(plan))
    results = op.map("flatten", items, flatten)
    op.output("stage", results, StagingSink(plan))
    return flow

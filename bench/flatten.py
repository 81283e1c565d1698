"""Benchmark of ``enrich flatten`` against dlt's relational normaliser and pandas.json_normalize.

    python -m bench.flatten --mb 1000                 # ~1 GB JSON Lines of 5-level trip reports (~1.1 KB)
    python -m bench.flatten --mb 3000 --only ours     # memory: peak RSS stays bounded by the chunk size

One run, same file, end to end (read → tables on disk), on this machine:

* ours: the ``enrich flatten`` command (bytewax workers, Parquet zstd), wall time from start to exit;
* dlt: ``dlt.pipeline(destination="filesystem").run(..., loader_file_format="parquet")`` fed by a
  generator that decodes the same file with orjson — extract, normalise (child tables with
  ``_dlt_parent_id``/``_dlt_list_idx``) and load;
* pandas: ``json_normalize`` (structs only: arrays stay nested objects) over orjson-decoded batches of
  50,000 lines, root table written to Parquet.

Peak RSS is sampled from /proc over the whole process tree of each contender. Generated data and outputs
live under ``--dir`` (default /tmp/fleet-flatten-bench) and are removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from simulator.trips import trip_reports


def generate(path: Path, mb: int, *, distinct: int = 50_000) -> tuple[int, int]:
    """Write about ``mb`` MB of trip reports (``distinct`` different ones, repeated with new ids)."""
    lines = [orjson.dumps(r) for r in trip_reports(distinct, seed=5)]
    target = mb << 20
    written = records = 0
    with open(path, "wb", buffering=16 << 20) as f:
        while written < target:
            for base in lines:
                # a new report id per repetition keeps records distinct without generating more
                rep = records // distinct
                line = base.replace(b'"trip-', b'"t%d-' % rep, 1) if rep else base
                f.write(line + b"\n")
                written += len(line) + 1
                records += 1
                if written >= target:
                    break
    return records, written


class Peak:
    """Peak summed RSS of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return out

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += self._children(p)
            self.peak = max(self.peak, sum(self._rss(p) for p in pids))
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _timed(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` in a child process (fork), so its time and memory are its own."""
    read, write = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            result = fn()
        except BaseException as exc:  # report, never fall back into the parent's code
            result = {"error": repr(exc)}
        os.write(write, orjson.dumps(result))
        os._exit(0)
    os.close(write)
    peak = Peak(pid)
    chunks = []
    while data := os.read(read, 1 << 16):
        chunks.append(data)
    os.waitpid(pid, 0)
    out: dict[str, Any] = orjson.loads(b"".join(chunks) or b"{}")
    out.setdefault("seconds", time.perf_counter() - start)
    out["peak_rss_mb"] = peak.stop() / 2**20
    return out


def run_ours(src: Path, out: Path, workers: int, batch_mb: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "cli.main", "flatten", str(src), "--dataset", "trips", "--out", str(out),
           "--report", str(out / "report.json"), "--no-alert", "--workers", str(workers),
           "--batch-mb", str(batch_mb)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = Peak(proc.pid)
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    rss = peak.stop()
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"enrich flatten exited {proc.returncode}: {err.decode()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {
        "seconds": seconds,
        "records": report["records"],
        "tables": report["tables"],
        "peak_rss_mb": rss / 2**20,
    }


def _lines(src: Path) -> Iterator[bytes]:
    with open(src, "rb", buffering=8 << 20) as f:
        yield from f


def run_dlt(src: Path, out: Path, limit: int | None) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        os.environ["DLT_DATA_DIR"] = str(out / "dlt-data")
        os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
        import dlt

        def rows() -> Iterator[dict[str, Any]]:
            for i, line in enumerate(_lines(src)):
                if limit is not None and i >= limit:
                    return
                yield orjson.loads(line)

        start = time.perf_counter()
        pipeline = dlt.pipeline(pipeline_name="bench_flatten", pipelines_dir=str(out / "dlt-pipelines"),
                                destination=dlt.destinations.filesystem(bucket_url=(out / "dlt").as_uri()),
                                dataset_name="trips")  # fmt: skip
        info = pipeline.run(dlt.resource(rows(), name="trips"), loader_file_format="parquet")
        seconds = time.perf_counter() - start
        norm = pipeline.last_trace.last_normalize_info if pipeline.last_trace else None
        counts = norm.row_counts if norm is not None else {}
        del info
        return {"seconds": seconds, "tables": {k: v for k, v in counts.items() if not k.startswith("_dlt")}}

    return _timed(go)


def run_pandas(src: Path, out: Path, limit: int | None, batch: int = 50_000) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        import pandas as pd

        start = time.perf_counter()
        n = part = 0
        buf: list[dict[str, Any]] = []
        (out / "pandas").mkdir(parents=True, exist_ok=True)

        def flush() -> None:
            nonlocal part
            frame = pd.json_normalize(buf)
            nested = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]
            frame.drop(columns=nested).to_parquet(out / "pandas" / f"part-{part}.parquet", compression="zstd")
            part += 1
            buf.clear()

        for line in _lines(src):
            if limit is not None and n >= limit:
                break
            buf.append(orjson.loads(line))
            n += 1
            if len(buf) >= batch:
                flush()
        if buf:
            flush()
        return {"seconds": time.perf_counter() - start, "records": n}

    return _timed(go)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1000, help="size of the generated JSON Lines file")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/fleet-flatten-bench"))
    ap.add_argument("--only", choices=["ours", "dlt", "pandas"], action="append")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-mb", type=int, default=32)
    ap.add_argument("--dlt-records", type=int, default=None, help="cap dlt at N records (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file and outputs")
    args = ap.parse_args()
    only = set(args.only or ["ours", "dlt", "pandas"])
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / f"trips-{args.mb}mb.jsonl"
    if not src.exists():
        t = time.perf_counter()
        made, written = generate(src, args.mb)
        print(f"generated {made:,} records, {written / 2**20:,.0f} MB in {time.perf_counter() - t:.1f}s")
    size = src.stat().st_size
    records: int | None = sum(1 for _ in _lines(src)) if "dlt" in only or "pandas" in only else None
    results: dict[str, dict[str, Any]] = {}
    try:
        if "ours" in only:
            # one file is one unit: its worker uses the cores through pyarrow's parser threads and by
            # writing a chunk's Parquet while the next chunk is parsed
            out = args.dir / "ours"
            shutil.rmtree(out, ignore_errors=True)
            results["ours"] = run_ours(src, out, args.workers, args.batch_mb)
            records = records or results["ours"]["records"]
        if "dlt" in only:
            out = args.dir / "dlt-out"
            shutil.rmtree(out, ignore_errors=True)
            results["dlt"] = run_dlt(src, out, args.dlt_records)
        if "pandas" in only:
            out = args.dir / "pandas-out"
            shutil.rmtree(out, ignore_errors=True)
            results["pandas"] = run_pandas(src, out, None)
    finally:
        if not args.keep:
            for name in ("ours", "dlt-out", "pandas-out"):
                shutil.rmtree(args.dir / name, ignore_errors=True)
    total = records or 0
    print(f"\ninput: {src} ({size / 2**20:,.0f} MB, {total:,} records, {size / max(1, total):,.0f} B each)")
    print(f"{'contender':<10} {'seconds':>9} {'records/s':>11} {'MB/s':>7} {'peak RSS MB':>12}  notes")
    rates: dict[str, float] = {}
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<10} failed: {r['error']}")
            continue
        n = args.dlt_records if name == "dlt" and args.dlt_records else total
        rates[name] = n / r["seconds"]
        mbs = size * (n / max(1, total)) / 2**20 / r["seconds"]
        tables = len(r.get("tables", {})) or "-"
        row = f"{name:<10} {r['seconds']:>9.1f} {rates[name]:>11,.0f} {mbs:>7.1f} {r['peak_rss_mb']:>12,.0f}"
        print(f"{row}  tables: {tables}")
    for other in ("dlt", "pandas"):
        if "ours" in rates and other in rates:
            print(f"ours / {other} = {rates['ours'] / rates[other]:.1f}x (records/s, same run)")
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(largest single process of the run: {maxrss:,.0f} MB max RSS)")
    if not args.keep:
        src.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

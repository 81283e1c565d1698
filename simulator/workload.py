"""A CDC workload with a known outcome (tests, benchmarks): random inserts/updates/deletes,
redeliveries and stale reorders, plus the snapshot it must produce, computed straight from the source
rows (not through any store)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from enrich.tables import DEFAULT_MODEL, JoinModel
from simulator.cdc import CdcEncoder, CdcFormat


@dataclass
class Workload:
    messages: list[tuple[bytes, bytes | None, str]] = field(default_factory=list)  # (key, value, table)
    truth: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # table -> pk -> row
    stale: int = 0


def make_workload(
    fmt: CdcFormat,
    changes: int,
    *,
    keys: int = 2000,
    seed: int = 5,
    model: JoinModel = DEFAULT_MODEL,
    repoint: float = 1.0,
) -> Workload:
    """Random changes to the tables of ``model`` (the car table, the device table, each child table).
    ``repoint``: the share of updates of a device or child row that point it at another (random) car; the
    default 1.0 moves every one, a real fleet database far fewer (devices are swapped now and then,
    reservations stay with their car)."""
    rng = random.Random(seed)
    enc = CdcEncoder(fmt, tables=model.tables)
    tables = [model.car, model.device, *(c.table for c in model.children)]
    wl = Workload(truth={t: {} for t in tables})
    sent: list[tuple[bytes, bytes | None, str]] = []
    for n in range(changes):
        if sent and rng.random() < 0.05:  # redeliver an older message: a duplicate or a stale reorder
            wl.messages.append(rng.choice(sent))
            wl.stale += 1
            continue
        table = rng.choice(tables)
        k = rng.randrange(keys)
        pk_col = model.tables[table].primary_key
        pk: int | str = k
        if table == model.car:
            row: dict[str, Any] = {pk_col: k, "status": rng.choice(["ACTIVE", "MAINTENANCE"]), "rev": n}
        elif table == model.device:
            pk = f"dev-{k:06d}"
            row = {pk_col: pk, model.car_key: rng.randrange(keys), "rev": n}
        else:
            child = next(c for c in model.children if c.table == table)
            row = {pk_col: k, child.via: rng.randrange(keys), "rev": n}
            if child.choose.by == "status":
                row[child.choose.column] = rng.choice([*sorted(child.choose.values), "ENDED"])
        current = wl.truth[table].get(str(pk))
        if current is not None and repoint < 1.0 and table != model.car and rng.random() >= repoint:
            via = model.via_of(table)
            if via is not None:
                row[via] = current[via]  # the row stays with its car
        if current is not None and rng.random() < 0.2:
            msgs = enc.encode(table, "delete", current, 1_700_000_000_000 + n)
            del wl.truth[table][str(pk)]
        else:
            msgs = enc.encode(
                table, "update" if current is not None else "insert", row, 1_700_000_000_000 + n
            )
            wl.truth[table][str(pk)] = row
        for key, value in msgs:
            item = (key, value, table)
            wl.messages.append(item)
            if value is not None:
                sent.append(item)
    return wl

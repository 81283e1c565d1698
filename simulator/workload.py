"""A CDC workload with a known outcome (tests, benchmarks): random inserts/updates/deletes,
redeliveries and stale reorders, plus the snapshot it must produce, computed straight from the source
rows (not through any store)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from simulator.cdc import CdcEncoder, CdcFormat


@dataclass
class Workload:
    messages: list[tuple[bytes, bytes | None, str]] = field(default_factory=list)  # (key, value, table)
    truth: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # table -> pk -> row
    stale: int = 0


def make_workload(fmt: CdcFormat, changes: int, *, keys: int = 2000, seed: int = 5) -> Workload:
    rng = random.Random(seed)
    enc = CdcEncoder(fmt)
    wl = Workload(truth={"carinfo": {}, "deviceinfo": {}, "reservation": {}})
    sent: list[tuple[bytes, bytes | None, str]] = []
    for n in range(changes):
        if sent and rng.random() < 0.05:  # redeliver an older message: a duplicate or a stale reorder
            wl.messages.append(rng.choice(sent))
            wl.stale += 1
            continue
        table = rng.choice(("carinfo", "deviceinfo", "reservation"))
        k = rng.randrange(keys)
        if table == "carinfo":
            pk_col, pk = "car_id", k
            row: dict[str, Any] = {"car_id": k, "status": rng.choice(["ACTIVE", "MAINTENANCE"]), "rev": n}
        elif table == "deviceinfo":
            pk_col, pk = "device_id", f"dev-{k:06d}"  # type: ignore[assignment]
            row = {"device_id": pk, "car_id": rng.randrange(keys), "rev": n}
        else:
            pk_col, pk = "reservation_id", k
            row = {"reservation_id": k, "car_id": rng.randrange(keys), "rev": n,
                   "status": rng.choice(["ACTIVE", "ENDED"])}  # fmt: skip
        current = wl.truth[table].get(str(pk))
        if current is not None and rng.random() < 0.2:
            msgs = enc.encode(table, "delete", current, 1_700_000_000_000 + n)
            del wl.truth[table][str(pk)]
        else:
            msgs = enc.encode(
                table, "update" if current is not None else "insert", row, 1_700_000_000_000 + n
            )
            wl.truth[table][str(pk)] = row
        assert row[pk_col] == pk
        for key, value in msgs:
            item = (key, value, table)
            wl.messages.append(item)
            if value is not None:
                sent.append(item)
    return wl

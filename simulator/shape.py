"""The simulated fleet's rows in the shape of a join model (``enrich.tables``): its table and column names.

The simulator thinks in cars, devices and reservations; ``Shape`` writes them as the configured tables:
the car table's primary key, the device table's primary key and its reference to the car, and — for the
first child role chosen by status or by validity interval (the renting customer's) — the reservation
row with that role's status column or ``from``/``to`` columns (a reservation in an interval-chosen table
carries no status). Every other child role gets one row per car at the initial load (e.g. an insurance
policy), so every role of the model has data.
"""

from __future__ import annotations

from typing import Any

from enrich.tables import ChildRole, JoinModel

Row = dict[str, Any]
_PER_MS = {"ms": 1, "us": 1000, "s": 0.001}


class Shape:
    def __init__(self, model: JoinModel) -> None:
        self.model = model
        self.car_table = model.car
        self.device_table = model.device
        self.keys = {name: spec.primary_key for name, spec in model.tables.items()}
        self.booking: ChildRole | None = next(
            (c for c in model.children if c.choose.by in ("status", "interval")), None
        )
        self.extras = [c for c in model.children if c is not self.booking]

    def key_column(self, table: str) -> str:
        return self.keys[table]

    def car(self, row: Row) -> Row:
        out = {k: v for k, v in row.items() if k != "car_id"}
        return {self.keys[self.car_table]: row["car_id"], **out}

    def device(self, row: Row) -> Row:
        out = {k: v for k, v in row.items() if k not in ("device_id", "car_id")}
        return {self.keys[self.device_table]: row["device_id"], self.model.car_key: row["car_id"], **out}

    def reservation(self, row: Row) -> tuple[str, Row] | None:
        """A reservation as a row of the booking role's table (None when the model has no such role)."""
        child = self.booking
        if child is None:
            return None
        out = {k: v for k, v in row.items() if k not in ("reservation_id", "car_id", "status")}
        shaped: Row = {self.keys[child.table]: row["reservation_id"], child.via: row["car_id"]}
        choose = child.choose
        if choose.by == "status":
            active = sorted(choose.values)[0]
            shaped[choose.column] = active if row["status"] == "ACTIVE" else "ENDED"
        else:
            out.pop("starts_at", None)
            out.pop("ends_at", None)
            per = _PER_MS[choose.unit]
            shaped[choose.valid_from] = int(row["starts_at"] * per)
            shaped[choose.valid_to] = int(row["ends_at"] * per) if row["ends_at"] is not None else None
        return child.table, {**shaped, **out}

    def extra_rows(self, car_id: int, t_ms: int) -> list[tuple[str, Row]]:
        """One row per car for every other child role."""
        out = []
        for child in self.extras:
            row: Row = {self.keys[child.table]: f"{child.name}-{car_id}", child.via: car_id,
                        "coverage": "full", "issued_at": t_ms}  # fmt: skip
            choose = child.choose
            if choose.by == "status":
                row[choose.column] = sorted(choose.values)[0]
            elif choose.by == "interval":
                per = _PER_MS[choose.unit]
                row[choose.valid_from], row[choose.valid_to] = int((t_ms - 86_400_000) * per), None
            out.append((child.table, row))
        return out

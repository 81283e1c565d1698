"""A second, differently shaped tables configuration (other table and column names, bookings chosen by a
validity interval with no status column, an extra "latest" child), used by unit and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from enrich.tables import JoinModel, parse_model

ALT_TABLES_YAML = """\
tables:
  vehicles: {primary_key: vehicle_no}
  trackers: {primary_key: imei, foreign_keys: {vehicle_no: vehicles}}
  bookings: {primary_key: booking_ref, foreign_keys: {vehicle_no: vehicles}}
  insurance_policies: {primary_key: policy_no, foreign_keys: {vehicle_no: vehicles}}
join:
  device: trackers
  car: {table: vehicles, via: vehicle_no}
  children:
    booking:
      table: bookings
      via: vehicle_no
      choose: {by: interval, from: starts_at, to: ends_at}
    insurance:
      table: insurance_policies
      choose: {by: latest}
"""

#: Rules that read the alternative roles: ``booking.*`` and ``insurance.*`` instead of ``reservation.*``.
ALT_RULES_YAML = """\
rules:
  - id: headlights-left-on
    summary: Headlights on while the engine is off and every door is closed
    when: >-
      Vehicle.Body.Lights.Beam.Low.IsOn and not Vehicle.Powertrain.CombustionEngine.IsRunning
      and not any_door_open
    for: 60s
    severity: warning
    labels: {audience: customer}
  - id: booked-but-uninsured
    summary: A booked vehicle without a current insurance policy
    when: booking.active and insurance.coverage != "full"
    severity: critical
    labels: {audience: ops}
"""


def alt_model() -> JoinModel:
    return parse_model(yaml.safe_load(ALT_TABLES_YAML))


def write_alt(tmp: Path) -> tuple[Path, Path]:
    """The configuration and rules files, for a flow's settings (``tables_file``, ``rules_file``)."""
    tables, rules = tmp / "alt-tables.yaml", tmp / "alt-rules.yaml"
    tables.write_text(ALT_TABLES_YAML)
    rules.write_text(ALT_RULES_YAML)
    return tables, rules

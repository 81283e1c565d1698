"""Drift policies: what happens per drift class (YAML, with defaults), in the spirit of dlt's contracts.

    # flatten-policy.yaml — every key is optional; these are the defaults
    added: evolve
    removed: evolve
    widened: evolve
    nullability: evolve
    incompatible: variant
    shape: variant

Modes: ``evolve`` (a new schema version, keep going), ``variant`` (keep the row; the value goes to
``<column>__v_<type>``, the column keeps its type), ``quarantine`` (the whole row goes to ``_quarantine``
with path, reason, source file and line), ``discard_value`` (drop the value, keep the row), ``freeze``
(reject the change: the schema keeps its version and rows carrying the change are quarantined as
``frozen``). Not every mode fits every class; :data:`ALLOWED` lists the combinations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml

from enrich.errors import EnrichError
from enrich.flatten.schema import DriftClass, Policies, PolicyMode

DEFAULTS: dict[DriftClass, PolicyMode] = {
    "added": "evolve",
    "removed": "evolve",
    "widened": "evolve",
    "nullability": "evolve",
    "incompatible": "variant",
    "shape": "variant",
}
ALLOWED: dict[DriftClass, tuple[PolicyMode, ...]] = {
    "added": ("evolve", "quarantine", "discard_value", "freeze"),
    "removed": ("evolve", "freeze"),
    "widened": ("evolve", "variant", "quarantine", "discard_value", "freeze"),
    "nullability": ("evolve", "quarantine", "freeze"),
    "incompatible": ("evolve", "variant", "quarantine", "discard_value", "freeze"),
    "shape": ("evolve", "variant", "quarantine", "discard_value", "freeze"),
}


class PolicyError(EnrichError):
    reason = "bad_policy"


def parse_policies(doc: Any) -> Policies:
    """Policies from a mapping of drift class → mode (missing classes take the defaults)."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise PolicyError("a drift policy is a mapping of drift class to mode")
    modes = dict(DEFAULTS)
    for key, value in doc.items():
        if key not in ALLOWED:
            raise PolicyError(
                f"unknown drift class {key!r} (one of {', '.join(ALLOWED)})", field_path=str(key)
            )
        if value not in get_args(PolicyMode) or value not in ALLOWED[key]:
            raise PolicyError(
                f"{key}: mode {value!r} is not one of {', '.join(ALLOWED[key])}", field_path=str(key)
            )
        modes[key] = value
    return Policies(modes)


def load_policies(path: Path | None, overrides: dict[str, str] | None = None) -> Policies:
    """The defaults, overlaid by a YAML file, overlaid by ``overrides`` (e.g. from the command line)."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"{path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise PolicyError(f"{path}: a drift policy is a mapping of drift class to mode")
        doc.update(loaded or {})
    doc.update(overrides or {})
    return parse_policies(doc)

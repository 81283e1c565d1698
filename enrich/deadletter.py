"""Dead-letter records: what failed, why, where it came from, and the original bytes (schemas/dead-letter)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from enrich.errors import EnrichError


@dataclass(frozen=True, slots=True)
class SourceRef:
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def dead_letter(
    error: EnrichError | Exception, *, stage: str, source: SourceRef, value: bytes | None, now_ms: int
) -> tuple[bytes | None, bytes]:
    """The (key, value) of a dead-letter message for ``value`` read at ``source``."""
    reason = error.reason if isinstance(error, EnrichError) else "internal_error"
    field_path = error.field_path if isinstance(error, EnrichError) else None
    message = str(error.args[0]) if error.args else type(error).__name__
    record: dict[str, Any] = {
        "reason": reason,
        "message": message,
        "field_path": field_path,
        "stage": stage,
        "source": {
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "timestamp": source.timestamp,
            "key_b64": _b64(source.key),
        },
        "value_b64": _b64(value),
        "failed_at": now_ms,
    }
    return source.key, orjson.dumps(record)

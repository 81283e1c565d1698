"""Dead letters that always fit in a Kafka record (schemas/dead-letter.v1).

A letter carries the original bytes base64-encoded, so a record close to the size limit makes a letter
larger than the limit — and a letter that cannot be written would stop the worker for good. ``fit_letter``
keeps letters within a budget: when the full letter is too large, ``value_b64`` holds only the first bytes
of the original value and the letter says so with ``value_truncated: true``, the original ``value_size``
and its ``value_sha256`` (so the original can still be identified at its source offset). Letters within
the budget are returned unchanged (same bytes).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

MESSAGE_KEEP = 2000  # characters of the message kept when even the message is too long


def fit_letter(letter: bytes, budget: int) -> bytes:
    """``letter`` (the JSON of a dead letter), truncated to at most ``budget`` bytes if needed."""
    if len(letter) <= budget:
        return letter
    doc: dict[str, Any] = orjson.loads(letter)
    if not doc.get("value_truncated"):
        encoded = doc.get("value_b64")
        original = base64.b64decode(encoded) if encoded else b""
        doc["value_truncated"] = True
        doc["value_size"] = len(original)
        doc["value_sha256"] = hashlib.sha256(original).hexdigest()
    else:  # already truncated once: keep its evidence, only shorten further
        original = base64.b64decode(doc.get("value_b64") or "")
    doc["value_b64"] = ""
    if len(orjson.dumps(doc)) > budget and isinstance(doc.get("message"), str):
        doc["message"] = doc["message"][:MESSAGE_KEEP]
    source = doc.get("source")
    if len(orjson.dumps(doc)) > budget and isinstance(source, dict) and source.get("key_b64"):
        doc["message"] = (
            f"{doc.get('message', '')} (source key of {len(source['key_b64'])} base64 chars dropped)"
        )
        source["key_b64"] = None
    room = budget - len(orjson.dumps(doc))
    keep = max(0, room) // 4 * 3  # base64: 4 characters per 3 bytes
    doc["value_b64"] = base64.b64encode(original[:keep]).decode("ascii")
    return orjson.dumps(doc)

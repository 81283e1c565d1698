"""The exception root of the domain core. Errors carry evidence: where the input came from and which field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a message was read: enough to find the original bytes again."""

    topic: str
    partition: int
    offset: int


class EnrichError(Exception):
    """Root of every error raised by ``enrich``.

    ``reason`` is a short machine-readable code (used as the dead-letter reason), ``field_path`` the dotted
    path of the offending field when one is known, ``origin`` the topic/partition/offset of the input.
    """

    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field_path: str | None = None,
        origin: Origin | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field_path = field_path
        self.origin = origin

    def with_origin(self, origin: Origin) -> EnrichError:
        self.origin = origin
        return self

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.field_path:
            parts.append(f"field={self.field_path}")
        if self.origin is not None:
            parts.append(f"at {self.origin.topic}[{self.origin.partition}]@{self.origin.offset}")
        return " ".join(parts)


class DecodeError(EnrichError):
    """The bytes are not a valid message of the expected kind."""

    reason = "decode_error"

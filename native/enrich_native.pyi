from collections.abc import Callable, Collection, Mapping
from typing import Any

class Decoder:
    def __init__(
        self,
        kinds: Mapping[str, int],
        *,
        telemetry: type,
        error: type[Exception],
        short: Callable[[object], str],
        fallback: Callable[[Any, int], Any],
        true_words: Collection[str],
        false_words: Collection[str],
        max_nesting: int,
    ) -> None: ...
    def decode(self, value: bytes | None, max_bytes: int, /) -> Any: ...

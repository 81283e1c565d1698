"""Next deadlines of vehicles, in slots of ``resolution_ms`` of event time (a hashed timing wheel).

Filing, moving and cancelling a deadline is O(1); ``due(watermark)`` costs the slots it passes plus the
deadlines that are due — never the number of vehicles held. A vehicle has at most one filed deadline.

Filing is lazy: a later deadline never replaces an earlier one, because a deadline that comes too early is
harmless (the caller works out the true next deadline when it is due and files that). So the common case —
every event pushing a "device silent" deadline later — costs nothing.
"""

from __future__ import annotations

import heapq


class Timers:
    def __init__(self, resolution_ms: int = 1000) -> None:
        self.resolution_ms = resolution_ms
        self._slots: dict[int, set[int]] = {}
        self._heap: list[int] = []  # slot numbers that hold a set
        self._at: dict[int, int] = {}  # key -> filed deadline

    def __len__(self) -> int:
        return len(self._at)

    def filed(self, key: int) -> int | None:
        return self._at.get(key)

    def file(self, key: int, deadline: int) -> None:
        """Make sure ``key`` is due no later than ``deadline``."""
        current = self._at.get(key)
        if current is not None:
            if current <= deadline:
                return
            self._slots[current // self.resolution_ms].discard(key)
        self._at[key] = deadline
        slot = deadline // self.resolution_ms
        keys = self._slots.get(slot)
        if keys is None:
            keys = self._slots[slot] = set()
            heapq.heappush(self._heap, slot)
        keys.add(key)

    def cancel(self, key: int) -> None:
        current = self._at.pop(key, None)
        if current is not None:
            self._slots[current // self.resolution_ms].discard(key)

    def due(self, watermark: int) -> list[tuple[int, int]]:
        """Remove and return (deadline, key) of every deadline at or before ``watermark``, earliest first."""
        out: list[tuple[int, int]] = []
        last = watermark // self.resolution_ms
        heap, slots, at = self._heap, self._slots, self._at
        while heap and heap[0] <= last:
            slot = heap[0]
            keys = slots[slot]
            if slot < last:
                heapq.heappop(heap)
                del slots[slot]
                out.extend((at.pop(k), k) for k in keys)
                continue
            ripe = [k for k in keys if at[k] <= watermark]
            for k in ripe:
                keys.discard(k)
                out.append((at.pop(k), k))
            if not keys:
                heapq.heappop(heap)
                del slots[slot]
            break
        out.sort()
        return out

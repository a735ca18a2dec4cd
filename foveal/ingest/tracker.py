"""Which offsets of a partition are durably handled, and the offset it is safe to commit.

Records of one partition are handled concurrently and finish in any order; the committed offset
may only move past a record once it and every earlier record are handled. Offsets are tracked
in the order they were dispatched, not as integers, so gaps in a log (compaction, control
records) never stall the watermark.
"""

from __future__ import annotations

from collections import deque


class PartitionTracker:
    """Dispatched and finished offsets of one partition.

    >>> t = PartitionTracker()
    >>> for offset in (5, 6, 8):
    ...     t.dispatched(offset)
    >>> t.finished(6); t.commit_offset() is None
    True
    >>> t.finished(5); t.commit_offset()
    7
    >>> t.finished(8); t.commit_offset(), t.pending
    (9, 0)
    """

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None  # the offset to commit: one past the last contiguous done record
        self._last: int | None = None  # the last offset dispatched

    @property
    def pending(self) -> int:
        """Records dispatched and not yet finished."""
        return len(self._order) - len(self._done)

    def dispatched(self, offset: int) -> None:
        if self._last is not None and offset <= self._last:
            raise ValueError(f"offset {offset} dispatched after {self._last}")
        self._last = offset
        self._order.append(offset)

    def finished(self, offset: int) -> None:
        self._done.add(offset)
        while self._order and self._order[0] in self._done:
            head = self._order.popleft()
            self._done.discard(head)
            self._next = head + 1

    def commit_offset(self) -> int | None:
        """Kafka's committed offset (the next record to read), or None when nothing new is durable."""
        return self._next


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff before retry `attempt` (1-based), capped.

    >>> [backoff_s(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)]
    [0.5, 1.0, 2.0, 3.0, 3.0]
    """
    return float(min(max_s, initial_s * 2 ** min(attempt - 1, 30)))

"""When and how soon a failed task runs again. Knows nothing of Flask."""

from __future__ import annotations

import dataclasses
import random

#: The longest pause between two attempts, however many have failed.
MAX_BACKOFF = 600.0


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retry a task up to ``retries`` times after an exception of a type in
    ``retry_on``, waiting ``backoff`` seconds, doubled after each failure,
    with jitter."""

    retries: int
    backoff: float
    retry_on: tuple[type[BaseException], ...]

    def delay(self, exc: BaseException, failures: int) -> float | None:
        """Seconds to wait before the next attempt, after ``failures``
        failed attempts, the last with ``exc``; ``None`` if it's over."""
        if failures > self.retries or not isinstance(exc, self.retry_on):
            return None
        full: float = min(MAX_BACKOFF, self.backoff * 2.0 ** (failures - 1))
        # "Equal jitter": at least half the delay, so retries stay spread
        # out, and a random rest, so that tasks which failed together (a
        # service went down) don't all retry in the same instant.
        return full / 2 + random.uniform(0, full / 2)

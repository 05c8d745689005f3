"""Request rate limits and item quotas, counted in Valkey (the broker's server) by the ``limits``
package's sliding-window counter: each hit is one Lua script, so the count is atomic across every
gateway process, and a refused hit counts nothing (a refused 1,000-item job spends none of the quota).

Valkey unreachable: the request is served uncounted and a warning logged. Reads should not fail
because the counters cannot be reached, and a submit then fails or waits on the broker anyway.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerDay, parse
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "atelier-limits"


def parse_rate(text: str) -> RateLimitItem:
    """``"50/second"``, ``"600 per minute"``, ... as a limit; ``ValueError`` quoting the text if not one."""
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(
            f"rate limit {text!r}: expected N/second, N/minute, N/hour or N/day ({exc})"
        ) from exc


def per_day(items: int) -> RateLimitItem:
    return RateLimitItemPerDay(items)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0  # whole seconds until the window frees room (Retry-After), when refused


class Limiter:
    """Sliding-window counters in one Valkey; ``hit`` spends ``cost`` of ``limit`` for ``identity``."""

    def __init__(self, redis_url: str, timeout_s: float):
        storage = RedisStorage(
            redis_url,
            key_prefix=KEY_PREFIX,
            wrap_exceptions=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._counter = SlidingWindowCounterRateLimiter(storage)

    def hit(self, limit: RateLimitItem, *identity: str, cost: int = 1) -> Verdict:
        try:
            if self._counter.hit(limit, *identity, cost=cost):
                return Verdict(True)
            reset_at = self._counter.get_window_stats(limit, *identity).reset_time
        except StorageError as exc:
            log.warning("rate limit %s of %s not counted: %s", limit, "/".join(identity), exc.storage_error)
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(reset_at - time.time())))


@lru_cache(maxsize=4)
def limiter(redis_url: str, timeout_s: float) -> Limiter:
    """One limiter (and connection pool) per Valkey, per process."""
    return Limiter(redis_url, timeout_s)

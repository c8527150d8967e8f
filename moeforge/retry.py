"""Retrying what cannot be reached for a while (a chain, a store folder): exponential backoff up to a deadline.

`RetryPolicy` says how long and how often; `call_with_retries` runs an attempt again while it raises the
"unreachable" error it is given (`ChainUnavailable` for `chain.retry.RetryingChain`, `StoreUnavailable` for
the folder store), logging one warning per retry, and gives up with that error saying how long it tried.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from moeforge.errors import ChainUnavailable, ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry a chain that cannot be reached.

    Retry n (1, 2, …) waits `min(max_s, initial_s · factor^(n-1))`, less a random share of up to
    `jitter` of it; no retry starts after `deadline_s` seconds from the call's start (0: never retry).
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 15.0
    deadline_s: float = 120.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        checks = {
            "initial_s": (self.initial_s, self.initial_s > 0, "> 0"),
            "factor": (self.factor, self.factor >= 1, "≥ 1"),
            "max_s": (self.max_s, self.max_s >= self.initial_s, f"≥ initial_s ({self.initial_s:g})"),
            "deadline_s": (self.deadline_s, self.deadline_s >= 0, "≥ 0 (0 = never retry)"),
            "jitter": (self.jitter, 0 <= self.jitter < 1, "in [0, 1)"),
        }
        bad = [f"{name}={value!r} (expected {want})" for name, (value, ok, want) in checks.items()
               if not (isinstance(value, (int, float)) and math.isfinite(value) and ok)]
        if bad:
            raise ConfigError("retry policy: " + "; ".join(bad) + ".")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number RETRY (1-based)."""
        try:
            base = min(self.max_s, self.initial_s * self.factor ** (retry - 1))
        except OverflowError:
            base = self.max_s
        return base * (1.0 - self.jitter * rng.random())


def call_with_retries(
    attempt: Callable[[int], T],
    what: str,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    retry_on: type[Exception] = ChainUnavailable,
    thing: str = "chain",
    longer: str = "raise the deadline in the chain URL (e.g. ?retry_s=600)",
) -> T:
    """ATTEMPT(0), then ATTEMPT(1), … while it raises RETRY_ON (the THING is unreachable), until POLICY's deadline.

    WHAT names the call in the give-up message, LONGER how to wait longer. Any other exception propagates at once.
    """
    rng = rng or random.Random()
    start = clock()
    retry = 0
    while True:
        try:
            return attempt(retry)
        except retry_on as exc:
            elapsed = clock() - start
            remaining = policy.deadline_s - elapsed
            if remaining <= 0:
                tries = f"{retry + 1} tr{'y' if retry == 0 else 'ies'}"
                raise retry_on(
                    f"{what}: the {thing} stayed unreachable for {_seconds(elapsed)} s ({tries}), so moeforge gave up. "
                    f"Last error: {str(exc).rstrip('.')}. To wait longer, {longer}."
                ) from exc
            retry += 1
            pause = min(policy.delay(retry, rng), remaining)
            log.warning("%s unreachable (%s): retry %d in %.1f s", thing, exc, retry, pause)
            sleep(pause)


def _seconds(s: float) -> str:
    return f"{s:.0f}" if s >= 10 else f"{s:.1f}" if s >= 1 else f"{s:.2f}"

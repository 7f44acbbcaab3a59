"""A circuit breaker for calls to the router (pure Python; the clock is injectable for tests).

    CLOSED ──(failure_threshold consecutive failures)──► OPEN ──(reset_timeout_s)──► HALF_OPEN
       ▲                                                  ▲                              │
       └──────────────(the probe succeeds)────────────────┼──────────────────────────────┤
                                                          └──────(the probe fails)───────┘

`allow()` hands out a `Permit` (or None: answer with the fallback, do not call the router). The
caller reports the call's verdict WITH its permit, so a verdict only moves the state it was issued
in: while OPEN or HALF_OPEN only the probe's verdict counts (a slow call allowed before the circuit
opened cannot close it by finishing late), and a failure allowed in an earlier CLOSED spell does not
count towards the next one.

While OPEN the caller does not call the router at all. After `reset_timeout_s` exactly one request
is let through as the probe (HALF_OPEN); every other request keeps getting the fallback until the
probe's verdict is recorded. A probe whose verdict never arrives (the caller was cancelled) expires
after `reset_timeout_s`, so the breaker cannot stick.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, eq=False)
class Permit:
    """One allowed router call: `probe` when it is the half-open probe; `spell` the CLOSED spell
    (a counter bumped at every state change) it was issued in."""

    probe: bool
    spell: int


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_timeout_s: float = 5.0, clock=time.monotonic):
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an integer >= 1, got {failure_threshold!r}")
        if not reset_timeout_s > 0:
            raise ValueError(f"reset_timeout_s must be > 0, got {reset_timeout_s!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = float(reset_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._spell = 0  # bumped at every state change
        self._failures = 0  # consecutive failures while CLOSED
        self._opened_at = 0.0
        self._probe: Permit | None = None
        self._probe_started = 0.0
        self.times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def allow(self) -> Permit | None:
        """A permit to call the router now, or None: answer with the fallback."""
        with self._lock:
            now = self._clock()
            if self._state == CLOSED:
                return Permit(False, self._spell)
            if self._state == OPEN:
                if now - self._opened_at < self.reset_timeout_s:
                    return None
                self._set(HALF_OPEN)
            # HALF_OPEN: one probe at a time; a forgotten probe expires
            if self._probe is None or now - self._probe_started >= self.reset_timeout_s:
                self._probe, self._probe_started = Permit(True, self._spell), now
                return self._probe
            return None

    def record_success(self, permit: Permit) -> None:
        """The router answered. Closes a half-open circuit only when `permit` is its probe."""
        with self._lock:
            if permit is self._probe and self._state == HALF_OPEN:
                self._set(CLOSED)
            elif self._state == CLOSED and permit.spell == self._spell:
                self._failures = 0

    def record_failure(self, permit: Permit) -> None:
        """The router failed or timed out. Re-opens on the probe's failure; counts while CLOSED."""
        with self._lock:
            if permit is self._probe and self._state == HALF_OPEN:
                self._open()
            elif self._state == CLOSED and permit.spell == self._spell:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open()

    def release(self, permit: Permit) -> None:
        """The allowed call ended without a verdict on the router's health (bad input, no model
        loaded): nothing changes, except that a probe's slot is free again."""
        with self._lock:
            if permit is self._probe:
                self._probe = None

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "state": self._state,
                "consecutive_failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "reset_timeout_s": self.reset_timeout_s,
                "times_opened": self.times_opened,
            }

    def _set(self, state: str) -> None:
        self._state, self._spell, self._failures, self._probe = state, self._spell + 1, 0, None

    def _open(self) -> None:
        self._set(OPEN)
        self._opened_at = self._clock()
        self.times_opened += 1

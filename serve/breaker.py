"""A circuit breaker for calls to the router (pure Python; the clock is injectable for tests).

    CLOSED ──(failure_threshold consecutive failures)──► OPEN ──(reset_timeout_s)──► HALF_OPEN
       ▲                                                  ▲                              │
       └──────────────(the probe succeeds)────────────────┼──────────────────────────────┤
                                                          └──────(the probe fails)───────┘

While OPEN the caller does not call the router at all and answers with its fallback. After
`reset_timeout_s` exactly one request is let through as a probe (HALF_OPEN); every other request
keeps getting the fallback until the probe's verdict is recorded. A probe whose verdict never
arrives (the caller was cancelled) expires after `reset_timeout_s`, so the breaker cannot stick.
"""

from __future__ import annotations

import threading
import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


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
        self._failures = 0  # consecutive failures while CLOSED
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """May the caller call the router now? False means: answer with the fallback."""
        with self._lock:
            now = self._clock()
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if now - self._opened_at < self.reset_timeout_s:
                    return False
                self._state = HALF_OPEN
                self._probe_started = now
                return True
            # HALF_OPEN: one probe at a time; a forgotten probe expires
            if self._probe_started is None or now - self._probe_started >= self.reset_timeout_s:
                self._probe_started = now
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._probe_started = None

    def record_failure(self) -> None:
        with self._lock:
            if self._state == HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._state == CLOSED and self._failures >= self.failure_threshold:
                self._open()

    def release(self) -> None:
        """The allowed call ended without a verdict on the router's health: free the probe slot."""
        with self._lock:
            self._probe_started = None

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "state": self._state,
                "consecutive_failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "reset_timeout_s": self.reset_timeout_s,
                "times_opened": self.times_opened,
            }

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._probe_started = None
        self.times_opened += 1

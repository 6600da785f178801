"""The wait between polls: one pluggable ``wait(timeout) -> reason``.

:class:`Waiter` sleeps until the timeout, or until :meth:`Waiter.stop` (SIGTERM/SIGINT)
or :meth:`Waiter.wake` (e.g. an MQTT message saying a new set is out) ends it early.
Anything that can call ``wake`` from another thread can cut a poll interval short.
"""

from __future__ import annotations

import threading

from sync_pod.pipeline import WAIT_STOP, WAIT_TIMEOUT

WAIT_WAKE = "wake"


class Waiter:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = WAIT_TIMEOUT
        self._stopped = False

    def __call__(self, timeout: float) -> str:
        """Sleep up to ``timeout`` seconds; "timeout", "stop" or the reason given to
        :meth:`wake`. After :meth:`stop` every call returns "stop" at once."""
        self._event.wait(max(0.0, timeout))
        with self._lock:
            if self._stopped:
                return WAIT_STOP
            reason = self._reason if self._event.is_set() else WAIT_TIMEOUT
            self._event.clear()
            self._reason = WAIT_TIMEOUT
            return reason

    def wake(self, reason: str = WAIT_WAKE) -> None:
        """End the current (or next) wait early with ``reason``."""
        with self._lock:
            self._reason = reason
        self._event.set()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._stopped

"""Preemption: SIGTERM and SIGINT set a flag the train loop polls between steps; the loop then
saves the current step and stops, and `lwm train` exits with `EXIT_INTERRUPTED`.

Exit codes of `lwm train`: 0 done (or `--max-steps` reached, with a checkpoint); 2 bad input;
74 (`lwm.write_errors.EXIT_WRITE_FAILED`) a write failed (disk full, quota, permission): once
fixed, a rerun resumes from the last committed checkpoint; 75 (`EX_TEMPFAIL`) interrupted by
SIGTERM/SIGINT after saving the current step (resumable: rerun the same command); 130 a second
Ctrl-C, which stops at once without saving (resume from the last periodic checkpoint).
"""

from __future__ import annotations

import signal
import threading

EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry"
EXIT_ABORTED = 130

_last_signal: int | None = None  # the signal that stopped the latest loop, read by the CLI


class Interrupted(Exception):
    """A loop stopped on SIGTERM / SIGINT after saving its step; entry points print the message
    and exit `EXIT_INTERRUPTED` (the demo's training, the VQGAN trainer)."""


class StopRequest:
    """Installs handlers on enter and restores the previous ones on exit. A second SIGINT while
    a stop is pending raises KeyboardInterrupt (Ctrl-C twice quits without waiting)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        global _last_signal
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        _last_signal = signum
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def name(self) -> str:
        """The received signal's name ("SIGTERM"), or "" if none."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopRequest:
        global _last_signal
        _last_signal = None  # a new loop: a signal that stopped an earlier one is not this one's
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


def take_stop_signal() -> str | None:
    """The name of the signal that stopped the latest train loop (and forgets it), or None."""
    global _last_signal
    signum, _last_signal = _last_signal, None
    return signal.Signals(signum).name if signum is not None else None

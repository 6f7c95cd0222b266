"""Stop-on-signal: SIGUSR1 (SLURM's advance warning) or SIGTERM (pre-emption, scancel) set a
flag; the loop agrees on it across ranks at the next step boundary, saves and stops.

A signal can come at any time, also while a recipe is still importing torch, scanning shards
or loading a checkpoint (seconds to minutes on a busy cluster file system); SIGTERM's default
action would then end the process with no record. So every training recipe calls
:func:`catch_stop_signals` as its first statement, and the loop picks up what arrived since.
This module imports nothing heavy (``cvdist.engine`` loads its other modules lazily), so the
handlers are in place a few milliseconds after the interpreter starts.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_process_stop: Optional["StopSignal"] = None
"""The handlers :func:`catch_stop_signals` installed at start-up, until the loop uninstalls them."""


class StopSignal:
    """Records the first stop signal received; handlers are restored by ``uninstall``."""

    def __init__(self) -> None:
        self.received = False
        self.name: Optional[str] = None
        self._previous: dict[int, object] = {}
        self._in_start_up = False
        """Set by :func:`catch_stop_signals` until the loop takes over: a second signal then ends
        the process (a start-up that hangs, e.g. waiting for a node that never comes, can still
        be stopped)."""

    @classmethod
    def install(cls) -> "StopSignal":
        """The stop handlers for a training loop: those :func:`catch_stop_signals` installed at
        start-up (with any signal received since), else new ones."""
        if _process_stop is not None:
            _process_stop._in_start_up = False
            return _process_stop
        stop = cls()
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for number in STOP_SIGNALS:
                stop._previous[number] = signal.signal(number, stop._handle)
        return stop

    def _handle(self, number: int, frame: object) -> None:
        if self.received and self._in_start_up:
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        if not self.received:  # the first one names the stop
            self.name = signal.Signals(number).name
        self.received = True

    def uninstall(self) -> None:
        global _process_stop
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        if _process_stop is self:
            _process_stop = None


def catch_stop_signals() -> StopSignal:
    """Install the stop handlers now, for the training loop to act on later; call it first in a
    recipe, before the heavy imports. Idempotent. A signal received before the loop starts
    stops the run at its first step boundary: before its first step, with nothing new to save;
    a second one before then ends the process at once, as it would without a handler."""
    global _process_stop
    if _process_stop is None:
        _process_stop = StopSignal.install()
        _process_stop._in_start_up = True
    return _process_stop

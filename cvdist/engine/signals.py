"""Stop-on-signal: SIGUSR1 (SLURM's advance warning) or SIGTERM (pre-emption, scancel) set a
flag; the loop agrees on it across ranks at the next step boundary, saves and stops."""

from __future__ import annotations

import signal
import threading
from typing import Optional

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopSignal:
    """Records the first stop signal received; handlers are restored by ``uninstall``."""

    def __init__(self) -> None:
        self.received = False
        self.name: Optional[str] = None
        self._previous: dict[int, object] = {}

    @classmethod
    def install(cls) -> "StopSignal":
        stop = cls()
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for number in STOP_SIGNALS:
                stop._previous[number] = signal.signal(number, stop._handle)
        return stop

    def _handle(self, number: int, frame: object) -> None:
        self.received = True
        self.name = signal.Signals(number).name

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

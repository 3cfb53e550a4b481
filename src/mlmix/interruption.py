"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Inside :class:`StopRequests`, those signals do not raise in the middle of a force
call (where a traceback from inside LAMMPS or torch would leave half a step behind);
they only set a flag. The MD loop asks :attr:`StopRequests.requested` after each
step, where the state is consistent, writes a checkpoint and raises
:class:`~mlmix.errors.Interrupted`; ``mlmix`` prints one line with the exact command
that resumes and exits with status 130, as shells expect after SIGINT. A second
Ctrl-C while the checkpoint is written is ignored; a third restores the default
behaviour (for a run that hangs).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Context manager that turns SIGINT/SIGTERM into a flag (main thread only;
    elsewhere it does nothing, since Python delivers signals to the main thread)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._count = 0
        self._previous: dict[int, Any] = {}  # what signal.getsignal returned

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived."""
        return self.signal is not None

    @property
    def name(self) -> str:
        """The signal's name (``"SIGINT"``), or "" before one arrived."""
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum, frame) -> None:
        self._count += 1
        if self.signal is None:
            self.signal = signum
        if self._count >= 3:
            self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        self._restore()

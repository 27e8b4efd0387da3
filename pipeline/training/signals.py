"""The signals that stop a run (SIGTERM, and SIGUSR1 that schedulers send ahead of a preemption),
caught only while a run is on: the caller owns the handlers' lifetime, so a job that goes on in
the same process after a run still stops on SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """Inside, a stop signal sets the event yielded (the trainer then saves and stops); the handlers
    found on entry are put back on exit."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Stopping signals as exceptions, so the `finally` blocks that stop child servers run.

Python's default SIGTERM and SIGHUP actions end the process at once, without unwinding: a command that started servers
in their own sessions (`lema demo`, the bench scripts) left them running, re-parented to init, holding their ports
and memory. Inside `stop_on_signals()`, SIGTERM, SIGHUP (and SIGINT, as KeyboardInterrupt already does) raise
`SystemExit(128 + signal)` in the main thread, so cleanup runs and the exit status says which signal it was.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set from the main thread
        yield
        return

    def raise_exit(signum, frame) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, raise_exit) for sig in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

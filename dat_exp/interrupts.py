"""Interruptions (SIGINT, SIGTERM) held back while a checkpoint is written.

Ultralytics writes ``last.pt`` with ``Path.write_bytes``: a KeyboardInterrupt in the middle
(the entry point turns SIGTERM into one) leaves a truncated file that no resume can read, and a
preempted job would lose every epoch it trained. Held back, the interruption arrives right
after the write, with the file whole.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Record SIGINT/SIGTERM meanwhile; afterwards hand the first one to the handler that was
    in place. Outside the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            _deliver(received[0], previous[received[0]])


def _deliver(signum: int, handler: object) -> None:
    if callable(handler):
        handler(signum, None)  # Python's SIGINT handler or the entry point's: KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action, now that the handler is back

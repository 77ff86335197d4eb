"""SIGTERM handled like Ctrl-C (no torch): ``docker stop``, systemd and ``timeout`` send SIGTERM.

``with sigterm_as_interrupt(): ...`` makes SIGTERM raise :class:`Terminated` (a
``KeyboardInterrupt``) in the main thread, so the ``except KeyboardInterrupt`` that keeps finished
results (``mrcnet-run``) or saves a checkpoint (``mrcnet-train``) runs for both signals.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM inside :func:`sigterm_as_interrupt`."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op).
    The previous handler is restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_set(stop: threading.Event):
    """Within the block, the first SIGINT or SIGTERM sets ``stop`` (a graceful stop: the work in
    progress finishes) and its name ("SIGINT" / "SIGTERM") is appended to the yielded list; a
    second one raises KeyboardInterrupt / :class:`Terminated` as usual. Main thread only
    (elsewhere a no-op); the previous handlers are restored on exit."""
    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        if received:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        received.append(name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)

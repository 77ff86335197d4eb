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

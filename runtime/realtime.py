"""Real-time frame handling (no torch): never fall behind a camera.

:class:`LatestFrameReader` reads a source in its own thread and keeps only the newest frame: a
consumer slower than the source gets the newest frame each time it asks, and the frames it did
not take are dropped and counted. A file (not live) can be paced at its frame rate, so it behaves
like a camera delivering that many frames per second. :class:`RateMeter` gives the frame rate and
the mean latency of the last second (the overlay's figures).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from .video_io import Frame

#: seconds a consumer waits for the reader thread at shutdown (a stalled stream may block a read)
JOIN_TIMEOUT_S = 5.0


@dataclass
class TakenFrame:
    """A frame as the consumer took it: frame, t_read (``time.perf_counter()`` s when the reader
    got it from the source: the start of its latency), dropped (frames dropped since the frame
    taken before this one)."""

    frame: Frame
    t_read: float
    dropped: int = 0


class LatestFrameReader:
    """Reads ``frames`` in a daemon thread, keeping only the newest: :meth:`take` returns it (waiting
    for one when none is new) and drops every frame that arrived before it since the last take.

    frames: an iterator of :class:`~mrcnet.runtime.video_io.Frame` (a live source's, or a file's);
    pace_fps: deliver frame k at ``k / pace_fps`` s after the start (a file played like a camera at
    that rate; None: as fast as the source gives them, a camera's own rate). ``dropped``: frames
    dropped so far; ``delivered``: frames read from the source. An exception in the reader is
    raised by the next :meth:`take` after the frames before it. :meth:`close` stops reading (the
    iterator is closed in the reader thread, releasing a capture).
    """

    def __init__(self, frames: Iterator[Frame], pace_fps: Optional[float] = None):
        self._frames = frames
        self._pace = float(pace_fps) if pace_fps else None
        self._cond = threading.Condition()
        self._latest: Optional[TakenFrame] = None
        self._since_take = 0
        self._ended = False
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self.dropped = 0
        self.delivered = 0
        self._thread = threading.Thread(target=self._read, name="mrcnet-frame-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        """The reader thread: frames in, only the newest kept."""
        t0 = time.perf_counter()
        try:
            for k, frame in enumerate(self._frames):
                if self._pace:  # a file played in real time: frame k is due at k / fps
                    wait = t0 + k / self._pace - time.perf_counter()
                    if wait > 0 and self._stop.wait(wait):
                        break
                if self._stop.is_set():
                    break
                with self._cond:
                    if self._latest is not None:  # the consumer did not take the previous one: dropped
                        self.dropped += 1
                        self._since_take += 1
                    self._latest = TakenFrame(frame, time.perf_counter())
                    self.delivered += 1
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer: an error in the source ends the run there
            self._error = e
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def take(self, stop: Optional[threading.Event] = None) -> Optional[TakenFrame]:
        """The newest frame not taken yet (waits for one); None when the source has ended and
        every frame was taken or dropped, or when ``stop`` is set while waiting (a stalled
        stream does not hold up the end of a run). Raises the reader's exception, if any, at
        the end."""
        with self._cond:
            while self._latest is None and not self._ended:
                if stop is not None and stop.is_set():
                    return None
                self._cond.wait(0.1)
            if self._latest is None:
                if self._error is not None:
                    raise self._error
                return None
            taken, self._latest = self._latest, None
            taken.dropped, self._since_take = self._since_take, 0
            return taken

    def close(self) -> None:
        """Stop reading and wait (at most ``JOIN_TIMEOUT_S``) for the reader thread."""
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT_S)


class RateMeter:
    """Frame rate and mean latency over the last ``window_s`` seconds of finished frames.

    ``tick(latency_s, now)`` records a finished frame; ``fps`` is the number of frames finished in
    the window divided by the window (or by the time since the first frame, when shorter);
    ``latency_ms`` the mean latency (read -> result) of those frames in ms.
    """

    def __init__(self, window_s: float = 1.0):
        self.window_s = float(window_s)
        self._done: collections.deque = collections.deque()  # (t_done s, latency s)
        self._t_first: Optional[float] = None

    def tick(self, latency_s: float, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        if self._t_first is None:
            self._t_first = now - max(latency_s, 0.0)
        self._done.append((now, latency_s))
        while self._done and self._done[0][0] < now - self.window_s:
            self._done.popleft()

    @property
    def fps(self) -> float:
        if not self._done:
            return 0.0
        span = min(self.window_s, self._done[-1][0] - self._t_first)
        return len(self._done) / span if span > 0 else 0.0

    @property
    def latency_ms(self) -> float:
        return 1000.0 * sum(lat for _, lat in self._done) / len(self._done) if self._done else 0.0

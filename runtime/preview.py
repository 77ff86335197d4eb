"""``mrcnet-run --show``: a preview window of the overlay (no torch; OpenCV's HighGUI).

A window needs an OpenCV built with a GUI (``opencv-python``, not ``opencv-python-headless``) and a
display (``$DISPLAY`` or ``$WAYLAND_DISPLAY`` on Linux). :func:`preview_problem` says in one line
why there can be none; the run then goes on without a window (its outputs do not need one).
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Optional

import cv2
import numpy as np

#: keys that close the preview and end the run (q, Esc)
QUIT_KEYS = (ord("q"), 27)


def opencv_has_gui() -> bool:
    """Whether this OpenCV build has a HighGUI back end (its build information's ``GUI:`` line)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() not in ("", "NONE", "NO")
    return False


def preview_problem() -> Optional[str]:
    """None when a preview window can be opened, else one line saying why not and what to do."""
    if not opencv_has_gui():
        return (f"--show: no preview window: this OpenCV ({cv2.__version__}) has no GUI (opencv-python-headless); "
                "install opencv-python instead for a window; the run goes on")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "--show: no preview window: no display ($DISPLAY / $WAYLAND_DISPLAY unset); the run goes on"
    return None


class Preview:
    """A window showing the newest overlay: :meth:`offer` (any thread) hands an image (H, W, 3)
    uint8 BGR over, :meth:`poll` (the thread that created the window) shows the newest one and
    handles the window's events; it returns False once q or Esc was pressed."""

    def __init__(self, title: str = "mrcnet-run"):
        self.title = title
        self._lock = threading.Lock()
        self._image: Optional[np.ndarray] = None
        self.closed = False
        self.shown = 0
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)

    def offer(self, image: np.ndarray) -> None:
        with self._lock:
            self._image = image

    def poll(self) -> bool:
        """Show the newest offered image (if any new) and process events; False when closed."""
        with self._lock:
            image, self._image = self._image, None
        if image is not None:
            cv2.imshow(self.title, image)
            self.shown += 1
        if (cv2.waitKey(1) & 0xFF) in QUIT_KEYS:
            self.closed = True
        return not self.closed

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

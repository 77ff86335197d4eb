"""Backgrounds for synthetic images: procedural (noise, gradients, clutter) or from a folder.

Every function takes a ``numpy.random.Generator`` and returns an (H, W, 3) uint8 BGR image, so a
background is a pure function of the generator state (deterministic for a given seed).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .bop import IMAGE_EXTS, BopFormatError, load_image


def _noise(rng, width: int, height: int, cells: int) -> np.ndarray:
    """(H, W) float32 smooth value noise in [0, 1] from a ``cells``-wide random grid."""
    gw = max(2, cells)
    gh = max(2, int(round(cells * height / width)))
    grid = rng.random((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def pixel_noise(rng, std: float, shape) -> np.ndarray:
    """Zero-mean integer noise of standard deviation ~``std`` (uniform on [-a, a], a = std*sqrt 3;
    20x cheaper than Gaussian samples), float32 of ``shape``."""
    a = int(round(float(std) * np.sqrt(3.0)))
    if a <= 0:
        return np.zeros(shape, np.float32)
    return rng.integers(-a, a + 1, shape, dtype=np.int16).astype(np.float32)


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def noise_background(rng, width: int, height: int) -> np.ndarray:
    """Multi-octave coloured value noise (stone, fabric, wood-like blotches)."""
    full = (width, height)
    width, height = max(2, width // 2), max(2, height // 2)  # smooth: made at half size
    a, b = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    amp, total = 1.0, 0.0
    n = np.zeros((height, width), np.float32)
    for octave in range(int(rng.integers(2, 5))):
        n += amp * _noise(rng, width, height, int(rng.integers(3, 6)) * 2 ** octave)
        total += amp
        amp *= 0.5
    n /= total
    img = (a + (b - a) * n[..., None]).clip(0, 255).astype(np.uint8)
    return cv2.resize(img, full, interpolation=cv2.INTER_LINEAR)


def gradient_background(rng, width: int, height: int) -> np.ndarray:
    """Linear colour gradient at a random angle, with a little noise."""
    ang = rng.uniform(0, 2 * np.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(ang))
    ys = np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(ang))
    s = xs + ys
    s = (s - s.min()) / max(1e-6, float(s.max() - s.min()))
    a, b = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    img = a + (b - a) * s[..., None]
    img += pixel_noise(rng, rng.uniform(0, 8), img.shape)
    return img.clip(0, 255).astype(np.uint8)


def clutter_background(rng, width: int, height: int) -> np.ndarray:
    """Random filled rectangles, circles and lines over a noise base (a busy workbench)."""
    img = noise_background(rng, width, height)
    size = max(width, height)
    for _ in range(int(rng.integers(10, 40))):
        colour = tuple(float(c) for c in _random_colour(rng))
        kind = rng.integers(3)
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if kind == 0:
            w, h = (int(v) for v in rng.integers(size // 40 + 1, size // 4 + 2, 2))
            cv2.rectangle(img, (x, y), (x + w, y + h), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(size // 80 + 1, size // 8 + 2)), colour, -1)
        else:
            x2, y2 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(img, (x, y), (x2, y2), colour, int(rng.integers(1, max(2, size // 60))))
    k = int(rng.integers(0, 3)) * 2 + 1
    return cv2.GaussianBlur(img, (k, k), 0) if k > 1 else img


PROCEDURAL = (noise_background, gradient_background, clutter_background)


def procedural_background(rng, width: int, height: int) -> np.ndarray:
    """One of the procedural kinds, chosen by ``rng``: (H, W, 3) uint8 BGR."""
    return PROCEDURAL[int(rng.integers(len(PROCEDURAL)))](rng, width, height)


class FolderBackgrounds:
    """Random crops of the images of a folder (png/jpg/tif, searched recursively, sorted; any image
    folder, e.g. VOC2012 ``JPEGImages``), or of an explicit list of image files (``files``).

    Each call picks an image, a random crop with the target aspect ratio (at least half the
    shorter side) and a random horizontal flip, resized to (W, H).
    """

    def __init__(self, folder, files=None):
        self.folder = Path(folder)
        if files is not None:  # an explicit image list (e.g. other images of a split); folder names it
            self.files = sorted(Path(f) for f in files)
            if not self.files:
                raise BopFormatError(f"{self.folder}: no background images")
            return
        if not self.folder.is_dir():
            raise BopFormatError(f"{self.folder}: backgrounds folder not found")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise BopFormatError(f"{self.folder}: no png/jpg/jpeg/tif images in the backgrounds folder "
                                 "(any image folder works, e.g. VOC2012 JPEGImages)")

    def __call__(self, rng, width: int, height: int) -> np.ndarray:
        im = load_image(self.files[int(rng.integers(len(self.files)))])
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        if im.dtype != np.uint8:
            im = (im.astype(np.float32) / max(1.0, float(im.max())) * 255).astype(np.uint8)
        h, w = im.shape[:2]
        aspect = width / height
        ch = int(rng.uniform(0.5, 1.0) * min(h, w / aspect))
        cw = max(1, int(ch * aspect))
        ch = max(1, ch)
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        crop = im[y0:y0 + ch, x0:x0 + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)


def background_source(folder=None):
    """A callable ``(rng, width, height) -> (H, W, 3) uint8 BGR``: from ``folder`` or procedural."""
    return procedural_background if folder is None else FolderBackgrounds(folder)

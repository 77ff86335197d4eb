"""Shared test fixtures and paths."""
import os
import pathlib
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")
DATA = pathlib.Path(__file__).parent / "data"
sys.path.insert(0, str(pathlib.Path(__file__).parent))

"""Where BOP datasets and their models folders are on disk (torch-free).

Datasets are found as bop_toolkit finds them: ``$BOP_PATH/<dataset name>`` (``--data tless`` ->
``$BOP_PATH/tless``), or by an explicit folder (``--data /data/bop/tless``, ``--data ./tless``).
The models folder a split renders with comes from the dataset preset
(:meth:`mrcnet.runtime.presets.DatasetPreset.models_for`: T-LESS ``models_cad``), the one BOP's
metrics use is ``models_eval`` where the dataset has it; ``--models`` overrides either (a folder
name inside the dataset folder, or a path). Every failure is one line naming where it looked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from .presets import DATASETS, DEFAULT_MODELS, EVAL_MODELS

#: the environment variable naming the folder that holds the BOP datasets (as bop_toolkit)
BOP_PATH_ENV = "BOP_PATH"
#: the file every BOP models folder holds
MODELS_INFO = "models_info.json"


class DatasetPathError(ValueError):
    """A dataset or models folder that is not where it was looked for; one line naming the places
    (also in ``looked``: the places, in words)."""

    def __init__(self, message: str, looked=()):
        super().__init__(message)
        self.looked = list(looked)


def bop_root(env: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """``$BOP_PATH`` as a path, or None when it is unset or empty."""
    value = (os.environ if env is None else env).get(BOP_PATH_ENV, "")
    return Path(value) if value else None


def find_dataset(data, env: Optional[Mapping[str, str]] = None, what: str = "--data") -> Path:
    """The dataset folder of ``data``: an existing folder as given, else ``$BOP_PATH/<data>`` for a
    bare name (``tless``). Raises :class:`DatasetPathError` naming every place looked at."""
    p = Path(data)
    if p.is_dir():
        return p
    looked = [str(p)]
    root = bop_root(env)
    if len(p.parts) == 1:
        if root is not None:
            cand = root / p
            if cand.is_dir():
                return cand
            looked.append(f"${BOP_PATH_ENV}/{p} = {cand}")
        else:
            looked.append(f"${BOP_PATH_ENV}/{p} (${BOP_PATH_ENV} is not set)")
    raise DatasetPathError(f"{what} {data}: no dataset folder (looked in {', '.join(looked)}); pass the "
                           f"dataset folder, or set {BOP_PATH_ENV} to the folder holding the BOP datasets", looked)


def dataset_name(root, dataset: Optional[str] = None) -> Optional[str]:
    """The dataset preset name of a dataset folder: ``dataset`` when given, else the folder's name
    when it names a preset (``.../tless`` -> ``tless``), else None."""
    if dataset:
        return str(dataset).lower()
    name = Path(root).resolve().name.lower()
    return name if name in DATASETS else None


def _models_candidate(root: Path, name_or_path) -> Path:
    p = Path(name_or_path)
    return p if p.is_absolute() or not (root / p).is_dir() and p.is_dir() else root / p


def render_models_dir(root, dataset: Optional[str] = None, split_folder: Optional[str] = None,
                      override=None, what: str = "--models") -> Path:
    """The models folder the network renders ``split_folder`` with.

    override: a folder name inside ``root`` or a path (it must hold ``models_info.json``); else the
    preset's folder for the split (:meth:`DatasetPreset.models_for`) when it exists, else
    ``root/models``. Raises :class:`DatasetPathError` (one line) when none holds ``models_info.json``."""
    root = Path(root)
    if override is not None:
        cand = _models_candidate(root, override)
        if not (cand / MODELS_INFO).is_file():
            raise DatasetPathError(f"{what} {override}: no {MODELS_INFO} in {cand}")
        return cand
    name = dataset_name(root, dataset)
    names = []
    if name in DATASETS:
        names.append(DATASETS[name].models_for(split_folder))
    names.append(DEFAULT_MODELS)
    looked = [str(root / n) for n in dict.fromkeys(names)]
    for p in looked:
        if (Path(p) / MODELS_INFO).is_file():
            return Path(p)
    raise DatasetPathError(f"{root}: no models folder (looked for {MODELS_INFO} in {', '.join(looked)}); "
                           f"pass {what}", looked)


def eval_models_dir(root, override=None, what: str = "--models") -> Path:
    """The models folder of BOP's metrics: ``override`` (name or path), else ``root/models_eval``
    when it holds ``models_info.json``, else ``root/models``."""
    root = Path(root)
    if override is not None:
        return render_models_dir(root, override=override, what=what)
    for n in (EVAL_MODELS, DEFAULT_MODELS):
        if (root / n / MODELS_INFO).is_file():
            return root / n
    raise DatasetPathError(f"{root}: no models folder (looked for {MODELS_INFO} in {root / EVAL_MODELS}, "
                           f"{root / DEFAULT_MODELS}); pass {what}")

"""Evaluation: the BOP'19 metrics (AR_VSD, AR_MSSD, AR_MSPD, AR) of a results CSV.

- :mod:`mrcnet.eval.pose_errors`: the pose error functions in numpy (VSD from rendered depth,
  MSSD, MSPD, ADD/ADI, rotation/translation errors) and ``pose_accuracy`` for training validation.
- :mod:`mrcnet.eval.bop_eval`: ``evaluate_bop19`` (recalls and AR as the BOP toolkit computes
  them) chaining :mod:`mrcnet.eval.bop19` (``load``, ``errors`` (one function per metric),
  ``matching``, ``scores``); JSON and markdown reports (``write_report``).
- :mod:`mrcnet.eval.cli`: the ``mrcnet-eval`` console script.

Torch-free: importing this package pulls numpy only (the renderer and the BOP reader are imported
when an evaluation runs).
"""

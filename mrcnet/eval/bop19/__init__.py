"""The BOP'19 evaluation in rooms, one job each (``mrcnet.eval.bop_eval.evaluate_bop19`` chains them):

- :mod:`.params`: the protocol's settings and thresholds (``Bop19Params``), ``EvalError``.
- :mod:`.load`: the inputs: dataset, targets, results CSV, object models, one image's ground truth.
- :mod:`.errors`: one function per metric: VSD, MSSD, MSPD errors of the selected estimates.
- :mod:`.matching`: valid ground truth, estimate selection, greedy matching.
- :mod:`.scores`: matched counts -> recalls, AR per metric and per object.

The layout follows bop_toolkit (``eval_calc_errors.py``, ``pose_matching.py``,
``eval_calc_scores.py``, ``score.py``); units: mm, px.
"""

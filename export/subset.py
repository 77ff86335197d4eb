"""Object subsets, re-exported for users of ``mrcnet.export.subset``: the rewrite lives next to the
model, in :mod:`mrcnet.model.subset` (the reference uses it too, and never imports the exporter)."""
from mrcnet.model.subset import (  # noqa: F401
    SingleObjectConv2d,
    SubsetError,
    parse_object_ids,
    per_object_params,
    resolve_object_ids,
    subset_model,
)

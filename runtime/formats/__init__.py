"""File formats, each with one owner (no torch: the runtime and the PyTorch side share them).

- :mod:`.files`: atomic writes (``atomic_open``), file hashing (``sha256_file``), output folders
  (``prepare_out_dir``, ``OutputError``);
- :mod:`.bop`: BOP JSON layout, scene files, ``models_info.json``, targets, detections, the BOP'19
  results CSV (``score`` = confidence of the estimate: the detection score);
- :mod:`.poses_jsonl`: ``poses.jsonl`` of ``mrcnet-run`` (strict JSON writer and reader);
- :mod:`.camera`: camera files of ``mrcnet-run`` (one K, or one per frame).
"""

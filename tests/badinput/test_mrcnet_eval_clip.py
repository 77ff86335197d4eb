"""Bad inputs of ``mrcnet-eval-clip``: a poses.jsonl with bare NaN tokens (what damaged graphs used
to write) or malformed records, a --json that cannot be written; the inputs are never modified."""
import json

import pytest
from badinput_checks import assert_one_line_error, invoke, tree_digest

from mrcnet.eval.clip_eval import main

POSE = {"obj_id": 1, "R": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "t": [0, 0, 500], "score": 1.0}

CASES = {
    "bare NaN token": ('{"frame": 0, "objects": [{"obj_id": 1, "R": [[1,0,0],[0,1,0],[0,0,1]], "t": [NaN, 0, 500]}]}\n'
                       '{"frame": 1, "objects": []}\n', ["p.jsonl:1", "not a JSON record"]),
    "R of 8 numbers": (json.dumps({"frame": 0, "objects": [{**POSE, "R": [1, 0, 0, 0, 1, 0, 0, 0]}]}) + "\n",
                       ["p.jsonl:1", "malformed pose record"]),
    "no frame key": (json.dumps({"objects": [POSE]}) + "\n", ["p.jsonl:1", "malformed"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_poses_file_is_one_line(case, tmp_path):
    text, needles = CASES[case]
    p = tmp_path / "p.jsonl"
    p.write_text(text)
    before = tree_digest(tmp_path)
    r = invoke(main, [p])
    assert_one_line_error(r, 1, *needles)
    assert tree_digest(tmp_path) == before


def test_missing_poses_and_unwritable_json(tmp_path):
    r = invoke(main, [tmp_path / "none.jsonl"])
    assert_one_line_error(r, 1, "none.jsonl", "not found")
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"frame": 0, "objects": [POSE]}) + "\n")
    (tmp_path / "f").write_text("x")
    r = invoke(main, [p, "--json", tmp_path / "f" / "r.json"])
    assert_one_line_error(r, 1, "--json", "f/r.json", "not a folder")
    r = invoke(main, [p, "--json", tmp_path])
    assert_one_line_error(r, 2, "--json")

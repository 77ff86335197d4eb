"""Bad inputs of ``mrcnet-eval``: results CSVs with binary bytes, R = 0 or 2I, NaN numbers; an
unwritable --out; the CSV under evaluation is never modified."""
import numpy as np
import pytest
from badinput_checks import assert_one_line_error, invoke, tree_digest

from mrcnet.eval.cli import main
from mrcnet.runtime.formats.bop import RESULTS_HEADER, format_result_row

from infer_fixtures import tiny_assets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_assets(tmp_path_factory).data


def row(**kw):
    r = {"scene_id": 0, "im_id": 0, "obj_id": 1, "score": 0.9, "R": np.eye(3), "t": [0.0, 0.0, 300.0], "time": 0.1}
    r.update(kw)
    return format_result_row(r)


def csv_with(text_row):
    return (RESULTS_HEADER + "\n" + row() + "\n" + text_row + "\n").encode()


CASES = {
    "binary bytes": (RESULTS_HEADER.encode() + b"\n\x00\xff\xfe\x89PNG\r\n", ["r.csv", "not a text CSV"]),
    "R = 0": (csv_with(row(R=np.zeros((3, 3)))), ["r.csv:3", "R is not a rotation"]),
    "R = 2I": (csv_with(row(R=2 * np.eye(3))), ["r.csv:3", "R is not a rotation"]),
    "NaN t": (csv_with(row().replace(" 300.0,", " nan,")), ["r.csv", "t is NaN or inf"]),
    "6 fields": (csv_with("0,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 300"), ["r.csv:3", "expected 7"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_results_csv_is_one_line(case, data, tmp_path):
    content, needles = CASES[case]
    res = tmp_path / "r.csv"
    res.write_bytes(content)
    before = tree_digest(tmp_path)
    r = invoke(main, ["--data", data, "--results", res, "--metrics", "mssd,mspd", "-q",
                      "--out", tmp_path / "out"])
    assert_one_line_error(r, 1, *needles)
    assert tree_digest(tmp_path) == before


def test_missing_results_and_unwritable_out(data, tmp_path):
    r = invoke(main, ["--data", data, "--results", tmp_path / "none.csv", "--metrics", "mssd"])
    assert_one_line_error(r, 1, "none.csv", "file not found")
    res = tmp_path / "r.csv"
    res.write_bytes(csv_with(row(im_id=1)))
    (tmp_path / "f").write_text("x")
    r = invoke(main, ["--data", data, "--results", res, "--metrics", "mssd", "--out", tmp_path / "f" / "o"])
    assert_one_line_error(r, 1, "f/o", "cannot create")

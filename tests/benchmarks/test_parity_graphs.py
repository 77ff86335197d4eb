"""benchmarks/parity.py rows of the TensorRT precision graphs under ONNX Runtime CPU (``ort-fp16``:
the fp16 graph's float32 stand-in, ``ort-trt-int8``) on the tiny split: skipped with a reason when the
export lacks the graphs, measured against torch when it has them."""
import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from infer_fixtures import tiny_assets  # noqa: E402
from mrcnet.export import convert_graphs  # noqa: E402

import parity  # noqa: E402

pytestmark = pytest.mark.slow


def test_parity_rows_of_the_precision_graphs(tmp_path, tmp_path_factory):
    a = tiny_assets(tmp_path_factory)
    export = tmp_path / "export"
    shutil.copytree(a.export, export)
    args = ["--data", str(a.data), "--checkpoint", str(a.checkpoint), "--export", str(export), "--backends",
            "ort-fp16,ort-trt-int8", "--metrics", "mssd,mspd"]
    res = CliRunner().invoke(parity.main, args + ["--out", str(tmp_path / "p1")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "p1" / "parity.json").read_text())
    assert set(rep["backends"]) == {"torch"}
    assert "no fp16 graphs" in rep["skipped"]["ort-fp16"] and "no int8 graphs" in rep["skipped"]["ort-trt-int8"]

    paths = convert_graphs({g: export / f"{g}.onnx" for g in ("classifier", "regressor")})
    raw = json.loads((export / "manifest.json").read_text())
    raw["precision_graphs"] = {"fp16": {g: p.name for g, p in paths.items()}}
    (export / "manifest.json").write_text(json.dumps(raw))
    res = CliRunner().invoke(parity.main, args + ["--out", str(tmp_path / "p2")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "p2" / "parity.json").read_text())
    row = rep["backends"]["ort-fp16"]
    assert row["vs_torch"]["pairs"] == rep["n_estimates"] == 4
    assert row["abs_delta_AR"] <= 0.05 and row["vs_torch"]["rot_deg"]["median"] < 1.0
    assert "| ort-fp16 |" in (tmp_path / "p2" / "parity.md").read_text()

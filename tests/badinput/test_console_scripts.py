"""Every console script, run as a user runs it (a subprocess), answers a bad input with one line and
no traceback (the in-process suites cover the cases; this checks the real entry points)."""
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, args, code, needle", [
    ("mrcnet-run", ["{f}", "--camera", "{f}", "--detections", "{f}"], 2, "not a readable video"),
    ("mrcnet-export", ["--checkpoint", "{f}", "--out", "{tmp}/o"], 2, "not a readable PyTorch checkpoint"),
    ("mrcnet-synth", ["video", "--models", "{tmp}", "--out", "{tmp}/v", "--width", "0"], 2, "--width"),
    ("mrcnet-train", ["--data", "{tmp}", "--out", "{f}"], 2, "is a file"),
    ("mrcnet-infer", ["--data", "{tmp}", "--model", "{f}", "--threads", "-1"], 2, "--threads"),
    ("mrcnet-eval", ["--data", "{tmp}", "--results", "{f}", "--metrics", "mssd"], 1, ""),
    ("mrcnet-eval-clip", ["{f}"], 1, "not a JSON record"),
])
def test_console_script_bad_input_has_no_traceback(script, args, code, needle, tmp_path):
    f = tmp_path / "garbage.bin"
    f.write_bytes(b"\x00\xffnot what anyone expects\n")
    exe = BIN / script
    if not exe.is_file():
        pytest.fail(f"{exe} is not installed (pip install -e .)")
    r = subprocess.run([str(exe), *[a.format(f=f, tmp=tmp_path) for a in args]], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:") or ": error:" in ln]
    assert len(err) == 1 and needle in err[0], r.stderr

"""One option vocabulary across the console scripts: progress is silenced by -q / --quiet everywhere."""
import pytest

pytest.importorskip("torch")

from mrcnet.eval.cli import main as eval_main  # noqa: E402
from mrcnet.eval.infer_cli import main as infer_main  # noqa: E402
from mrcnet.export.cli import main as export_main  # noqa: E402
from mrcnet.runtime.cli import main as run_main  # noqa: E402
from mrcnet.train.cli import main as train_main  # noqa: E402

COMMANDS = {"mrcnet-run": run_main, "mrcnet-export": export_main, "mrcnet-train": train_main,
            "mrcnet-infer": infer_main, "mrcnet-eval": eval_main}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_is_dash_q_everywhere(name):
    opts = [set(p.opts) for p in COMMANDS[name].params]
    assert any({"-q", "--quiet"} <= o for o in opts), f"{name}: no -q/--quiet option ({opts})"

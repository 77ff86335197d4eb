"""Bad inputs of ``mrcnet-synth`` (objects, scenes, video): image size 0, nonsense intrinsics, fps 0,
an --out that is a file or cannot be created; nothing is written."""
import pytest
from badinput_checks import assert_one_line_error, invoke, tree_digest

from mrcnet.data.cli import main
from mrcnet.testing import write_box_ply


@pytest.fixture()
def models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    write_box_ply(d / "obj_000001.ply")
    (d / "models_info.json").write_text('{"1": {"diameter": 80.0, "min_x": -30, "min_y": -20, "min_z": -10, '
                                        '"size_x": 60, "size_y": 40, "size_z": 20}}')
    return d


CASES = {
    "--width 0": (["--width", "0"], 2, ["--width"]),
    "--height -3": (["--height", "-3"], 2, ["--height"]),
    "--fx -5": (["--fx", "-5"], 2, ["--fx/--fy/--cx/--cy", "focal lengths"]),
    "--fx nan": (["--fx", "nan"], 2, ["--fx/--fy/--cx/--cy", "finite"]),
    "--cx far outside": (["--cx", "1e7"], 2, ["principal point"]),
    "--out is a file": (["--out", "{tmp}/f"], 2, ["f", "is a file"]),
    "--out under a file": (["--out", "{tmp}/f/sub"], 2, ["f/sub", "cannot create"]),
}


@pytest.mark.parametrize("command", ["scenes", "video"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(command, case, models, tmp_path):
    extra, code, needles = CASES[case]
    (tmp_path / "f").write_text("x")
    base = {"--models": str(models), "--out": str(tmp_path / "ds")}
    extra = [a.format(tmp=tmp_path) for a in extra]
    if "--out" in extra:
        base.pop("--out")
    size = ["-n", "1"] if command == "scenes" else ["-n", "2"]
    before = tree_digest(tmp_path)
    r = invoke(main, [command, *[x for kv in base.items() for x in kv], *size, *extra])
    assert_one_line_error(r, code, *needles)
    assert tree_digest(tmp_path) == before and not (tmp_path / "ds").exists()


def test_video_fps_zero_and_objects_out(models, tmp_path):
    r = invoke(main, ["video", "--models", models, "--out", tmp_path / "v", "--fps", "0"])
    assert_one_line_error(r, 2, "--fps")
    (tmp_path / "f").write_text("x")
    r = invoke(main, ["objects", "--out", tmp_path / "f" / "o", "--no-check"])
    assert_one_line_error(r, 2, "f/o", "cannot create")


SCENE_CASES = {
    "--object-ids 9 (unknown)": (["--object-ids", "9"], 1, ["models_info.json", "unknown object id", "9"]),
    "--object-ids a": (["--object-ids", "a"], 2, ["--object-ids", "expected comma-separated object ids"]),
    "--object-ids 1,1": (["--object-ids", "1,1"], 2, ["--object-ids", "distinct"]),
    "--lighting room without --layout table": (["--lighting", "room"], 1, ["lighting 'room'", "layout 'table'"]),
}


@pytest.mark.parametrize("case", list(SCENE_CASES))
def test_scenes_bad_objects_and_lighting(case, models, tmp_path):
    extra, code, needles = SCENE_CASES[case]
    before = tree_digest(tmp_path)
    r = invoke(main, ["scenes", "--models", str(models), "--out", str(tmp_path / "ds"), "-n", "1", *extra])
    assert_one_line_error(r, code, *needles)
    assert tree_digest(tmp_path) == before and not (tmp_path / "ds").exists()

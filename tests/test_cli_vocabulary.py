"""One option vocabulary across every console script (setup.cfg's console_scripts, their
subcommands included; :data:`mrcnet.runtime.cliopts.VOCABULARY`): ``--object-ids`` for BOP ids,
``--count`` / ``-n`` for counts, ``-q`` / ``--quiet`` for progress, ``--device`` = the torch device,
``--render-device`` = the renderer's, ``--out`` = an output folder; the old spellings are hidden
deprecated aliases that still work."""
import configparser
import importlib

import click
import pytest

pytest.importorskip("torch")

from mrcnet.runtime.cliopts import RETIRED, cli_message, flag  # noqa: E402
from mrcnet.runtime.errors import ParameterError, error_line  # noqa: E402

from conftest import ROOT  # noqa: E402


def _console_scripts() -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (x.strip() for x in line.split("="))
        module, attr = target.split(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


SCRIPTS = _console_scripts()


def _commands():
    """(path, click.Command) of every command and subcommand."""
    out = []

    def walk(path, cmd):
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for sub_name, sub in sorted(cmd.commands.items()):
                walk(f"{path} {sub_name}", sub)

    for name, cmd in sorted(SCRIPTS.items()):
        walk(name, cmd)
    return out


COMMANDS = _commands()
OPTIONS = [(path, p) for path, cmd in COMMANDS for p in cmd.params if isinstance(p, click.Option)]
VISIBLE = [(path, p) for path, p in OPTIONS if not p.hidden]


def test_every_console_script_is_checked():
    assert {"mrcnet-run", "mrcnet-export", "mrcnet-train", "mrcnet-infer", "mrcnet-eval", "mrcnet-synth",
            "mrcnet-eval-clip"} <= set(SCRIPTS)
    assert {"mrcnet-synth objects", "mrcnet-synth scenes", "mrcnet-synth video"} <= {p for p, _ in COMMANDS}
    assert len(VISIBLE) > 80


def test_retired_spellings_are_not_visible():
    bad = [f"{path}: {o} (use {RETIRED[o]})" for path, p in VISIBLE for o in p.opts if o in RETIRED]
    assert not bad, "\n".join(bad)


def test_dash_n_is_always_count():
    bad = [f"{path}: {p.opts}" for path, p in OPTIONS
           if ("-n" in p.opts + p.secondary_opts) != ("--count" in p.opts)]
    assert not bad, "-n must be the short form of --count (and --count has -n):\n" + "\n".join(bad)
    for path, p in OPTIONS:
        if "--count" in p.opts:
            assert isinstance(p.type, (click.IntRange, type(click.INT))), f"{path}: --count is {p.type}"


def test_object_ids_name_every_id_list():
    """An option about object ids is --object-ids (a count of objects is not)."""
    bad = [f"{path}: {p.opts} ({p.help})" for path, p in VISIBLE
           if "object ids" in (p.help or "").lower() and "--object-ids" not in p.opts]
    assert not bad, "\n".join(bad)
    have = [path for path, p in VISIBLE if "--object-ids" in p.opts]
    assert {"mrcnet-export", "mrcnet-train"} <= set(have)


def test_device_is_the_torch_device_and_render_device_the_renderer():
    for path, p in VISIBLE:
        if "--device" in p.opts:
            assert "torch device" in (p.help or ""), f"{path}: --device help {p.help!r} is not the torch device"
        if "--render-device" in p.opts:
            assert "renderer device" in (p.help or "").lower(), f"{path}: --render-device help {p.help!r}"
        if "renderer device" in (p.help or "").lower():
            assert "--render-device" in p.opts, f"{path}: {p.opts} is a renderer device: call it --render-device"


def test_out_is_an_output_folder():
    for path, p in VISIBLE:
        if "--out" in p.opts:
            assert isinstance(p.type, click.Path) and p.type.dir_okay, f"{path}: --out is not a folder ({p.type})"


@pytest.mark.parametrize("name", ["mrcnet-run", "mrcnet-export", "mrcnet-train", "mrcnet-infer", "mrcnet-eval"])
def test_quiet_is_dash_q_everywhere(name):
    opts = [set(p.opts) for p in SCRIPTS[name].params]
    assert any({"-q", "--quiet"} <= o for o in opts), f"{name}: no -q/--quiet option ({opts})"


def _parse(cmd, args):
    """The parameter values click gives the command for ``args`` (the command does not run)."""
    with cmd.make_context(cmd.name, list(args)) as ctx:
        return ctx.params


@pytest.mark.parametrize("script, sub, old, new, dest, value, expected", [
    ("mrcnet-train", None, "--objects", "--object-ids", "objects", "1,2", [1, 2]),
    ("mrcnet-synth", "video", "--objects", "--instances", "n_objects", "3", 3),
    ("mrcnet-synth", "video", "--frames", "--count", "frames", "7", 7),
    ("mrcnet-synth", "scenes", "--images", "--count", "images", "5", 5),
    ("mrcnet-synth", "objects", "--device", "--render-device", "device", "cpu", "cpu"),
])
def test_old_spellings_still_work_hidden(tmp_path, capsys, script, sub, old, new, dest, value, expected):
    cmd = SCRIPTS[script] if sub is None else SCRIPTS[script].commands[sub]
    required = {"mrcnet-train": ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
                "mrcnet-infer": ["--data", str(tmp_path), "--model", str(tmp_path)],
                "video": ["--models", str(tmp_path), "--out", str(tmp_path / "o")],
                "scenes": ["--models", str(tmp_path), "--out", str(tmp_path / "o")],
                "objects": ["--out", str(tmp_path / "o")]}[sub or script]
    assert _parse(cmd, required + [old, value])[dest] == expected
    assert f"{old} is deprecated; use {new}" in capsys.readouterr().err
    other = "9" if expected != 9 else "8"
    params = _parse(cmd, required + [old, value, new, other if dest != "device" else "cuda:1"])
    assert params[dest] != expected  # the new spelling wins
    help_text = cmd.get_help(click.Context(cmd))
    assert old not in help_text.replace(old + "-", "")


def test_parameter_errors_become_flags():
    e = ParameterError("object_ids", "duplicate id(s) [5]")
    assert str(e) == "object_ids: duplicate id(s) [5]" and e.param == "object_ids"
    assert cli_message(e) == "--object-ids: duplicate id(s) [5]"
    assert cli_message(e, {"object_ids": "--objects"}) == "--objects: duplicate id(s) [5]"
    assert cli_message(ValueError("plain")) == "plain" and flag("calib_data") == "--calib-data"


@pytest.mark.parametrize("script", ["mrcnet-eval", "mrcnet-infer"])
def test_no_progress_is_a_hidden_alias_of_quiet(tmp_path, capsys, script):
    cmd = SCRIPTS[script]
    req = ["--data", str(tmp_path), "--results" if script == "mrcnet-eval" else "--model", str(tmp_path / "r")]
    assert _parse(cmd, req)["no_progress"] is False
    assert _parse(cmd, req + ["--no-progress"])["no_progress"] is True
    assert "--no-progress is deprecated; use --quiet" in capsys.readouterr().err
    assert _parse(cmd, req + ["-q"])["no_progress"] is True
    assert "--no-progress" not in cmd.get_help(click.Context(cmd))


#: library modules whose errors are still written in their CLI's flags (none left)
NOT_YET: set = set()


def _library_files():
    """The library modules: everything under mrcnet/, export/, runtime/ but the console scripts."""
    for folder in ("mrcnet", "export", "runtime"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            if p.name in ("cli.py", "infer_cli.py", "cliopts.py") or p.name == "clip_eval.py":
                continue  # click commands (clip_eval.py holds mrcnet-eval-clip's command)
            if str(p.relative_to(ROOT)) in NOT_YET:
                continue
            yield p


def test_library_errors_name_parameters_not_flags():
    """No ``raise X("--flag ...")`` in library code: errors name the parameter
    (:class:`ParameterError`), the CLIs write it as their flag (:func:`cli_message`)."""
    import ast

    bad = []
    for p in _library_files():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args):
                continue
            first = node.exc.args[0]
            if isinstance(first, ast.JoinedStr):
                first = first.values[0] if first.values else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("--"):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {first.value[:50]!r}")
    assert not bad, "library errors that name CLI flags:\n" + "\n".join(bad)


def test_export_errors_reach_the_user_as_flags(tmp_path):
    """mrcnet-export writes export_checkpoint's parameter errors with its flags."""
    from click.testing import CliRunner

    def run(*args):
        r = CliRunner().invoke(SCRIPTS["mrcnet-export"], ["--out", str(tmp_path / "o"), "-q", *args])
        assert r.exit_code == 2, r.output
        return r.output.strip().splitlines()[-1]

    assert run("--checkpoint", str(tmp_path / "none.pth"), "--object-ids", "5,x") == \
        "mrcnet-export: error: --object-ids: 'x' is not an integer object id"
    assert run("--checkpoint", str(tmp_path / "none.pth")).startswith("mrcnet-export: error: --checkpoint: file not found")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert run("--checkpoint", str(tmp_path / "empty.pth")) == \
        f"mrcnet-export: error: --checkpoint {tmp_path / 'empty.pth'}: empty file (0 bytes)"


@pytest.mark.parametrize("error, kw, expected", [
    (RuntimeError("first line\nsecond line"), {}, "first line"),
    (RuntimeError("\n  \n  after blank lines  \nmore"), {}, "after blank lines"),
    (EOFError(), {}, "EOFError"),                        # empty message: the type, never IndexError
    (ValueError("x" * 50), {"limit": 10}, "x" * 10),
    (KeyError("k"), {"with_type": True}, "KeyError: 'k'"),
])
def test_error_line_is_one_line_for_any_message(error, kw, expected):
    assert error_line(error, **kw) == expected

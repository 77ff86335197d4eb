"""Bad inputs of ``mrcnet-train``: checkpoints that are not checkpoints (--resume / --init), an
unwritable --out; SIGINT / SIGTERM save the state so far (resumable)."""
import os
import pickle
import signal

import pytest
from badinput_checks import assert_ok, assert_one_line_error, invoke

torch = pytest.importorskip("torch")

from mrcnet.train import cli  # noqa: E402
from mrcnet.train import trainer as T  # noqa: E402

from train_fixtures import write_tiny_split  # noqa: E402

BASE = ["--preset", "small", "--epochs", "1", "--batch-size", "2", "--warmup", "1", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_split(tmp_path_factory.mktemp("tiny"), n_images=2, n_objects=3, seed=0)


def bad_checkpoint(kind, path):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"network": os.getcwd}))
    elif kind == "truncated":
        path.write_bytes(pickle.dumps({"a": 1})[:5] + b"PK\x03\x04" + b"\0" * 40)
    return path


@pytest.mark.parametrize("option", ["--resume", "--init"])
@pytest.mark.parametrize("kind", ["empty", "text", "pickle", "truncated"])
def test_bad_checkpoint_is_one_line(kind, option, tiny, tmp_path):
    """Class 5: a truncated, text, pickle or 0-byte checkpoint in --resume / --init."""
    out = tmp_path / "run"
    out.mkdir()
    if option == "--resume":
        ck = bad_checkpoint(kind, out / "last.pth")
        args = ["--resume"]
    else:
        ck = bad_checkpoint(kind, tmp_path / "init.pth")
        args = ["--init", ck]
    r = invoke(cli.main, ["--data", tiny, "--out", out, *BASE, *args])
    assert_one_line_error(r, 1, ck.name, "empty file" if kind == "empty" else "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_unwritable_out_is_one_line(where, tiny, tmp_path):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    r = invoke(cli.main, ["--data", tiny, "--out", out, *BASE])
    assert_one_line_error(r, 2 if where == "file" else 1, str(out))
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_that_resumes(sig, code, tiny, tmp_path, monkeypatch):
    """Class 4: SIGINT / SIGTERM in training saved nothing (up to --ckpt-every steps lost)."""
    losses, calls = T.mrcnet_losses, []

    def signalling_losses(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), sig)
        return losses(*a, **kw)

    monkeypatch.setattr(T, "mrcnet_losses", signalling_losses)
    out = tmp_path / "run"
    args = ["--data", tiny, "--out", out, *BASE, "--epochs", "2", "--ckpt-every", "1000"]
    r = invoke(cli.main, args)
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "state saved in" in r.output
    ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ck["step"] >= 2 and len(ck["history"]) == ck["step"]
    monkeypatch.setattr(T, "mrcnet_losses", losses)
    r = invoke(cli.main, [*args, "--resume"])
    assert_ok(r)
    again = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert again["step"] > ck["step"] and (out / "model.pth").is_file()

"""The official training recipe's data options: several splits in one run (``--split a,b``) and a
backgrounds folder (``--backgrounds DIR``: VOC layouts, nested folders, unreadable images)."""
import logging
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mrcnet.data import bop
from mrcnet.data.backgrounds import FolderBackgrounds
from mrcnet.model import get_config
from mrcnet.train.cli import main as train_cli
from mrcnet.train.dataset import MultiSplitSamples, TrainingSamples, split_names, training_samples

from train_fixtures import write_tiny_split

CFG = get_config("small")
DEPTH = (0.05, 1.7)
KW = dict(size=CFG.crop_size, label_cache=0, color_prob=0.0)


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """One dataset root with a PBR split and a real-image split (other images), objects 1-3."""
    root = tmp_path_factory.mktemp("two_splits")
    write_tiny_split(root, n_images=2, n_objects=3, seed=0, split="train_pbr")
    write_tiny_split(root, n_images=3, n_objects=3, seed=5, split="train_primesense")
    return root


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_several_splits_join_in_one_dataset(two_splits):
    pbr = TrainingSamples(two_splits, CFG.bins, DEPTH, split="train_pbr", stream=0, **KW)
    real = TrainingSamples(two_splits, CFG.bins, DEPTH, split="train_primesense", stream=1, **KW)
    both = training_samples(two_splits, CFG.bins, DEPTH, split="train_pbr, train_primesense", **KW)
    assert isinstance(both, MultiSplitSamples)
    assert both.counts == {"train_pbr": len(pbr), "train_primesense": len(real)} and len(both) == len(pbr) + len(real)
    assert len(pbr) > 0 and len(real) > 0 and both.obj_ids == [1, 2, 3]
    # index i < len(pbr) is the PBR split's item, the rest the real split's, with each split's own rules
    _same(both[1], pbr[1])
    _same(both[len(pbr) + 2], real[2])
    assert both.parts[0].is_pbr and not both.parts[1].is_pbr
    # epochs: the encoded index and set_epoch give the same sample, another epoch another crop
    e1 = both[len(both) + len(pbr)]
    both.set_epoch(1)
    _same(both[len(pbr)], e1)
    assert not torch.equal(e1["crops"], real[0]["crops"])
    # one split alone is the plain dataset, with its default random stream
    one = training_samples(two_splits, CFG.bins, DEPTH, split="train_primesense", **KW)
    assert isinstance(one, TrainingSamples) and one.stream is None and one.counts == {"train_primesense": len(real)}


def test_split_names_and_per_split_models(two_splits, tmp_path):
    assert split_names("train_pbr,train_primesense") == ["train_pbr", "train_primesense"]
    assert split_names(["a"]) == ["a"] and split_names(None) is None
    for bad, msg in (("a,,b", "comma-separated"), ("a,b,a", "a given more than once")):
        with pytest.raises(ValueError, match=msg):
            split_names(bad)
    root = tmp_path / "ds"
    shutil.copytree(two_splits, root)
    shutil.copytree(root / "models", root / "models_cad")
    # each split's folder from the dataset preset (T-LESS renders both with models_cad), or the override
    both = training_samples(root, CFG.bins, DEPTH, split="train_pbr,train_primesense", dataset="tless", **KW)
    assert [p.models_dir for p in both.parts] == [root.resolve() / "models_cad"] * 2
    plain = training_samples(root, CFG.bins, DEPTH, split="train_pbr,train_primesense", **KW)
    assert [p.models_dir for p in plain.parts] == [root.resolve() / "models"] * 2
    over = training_samples(root, CFG.bins, DEPTH, split="train_pbr,train_primesense", dataset="tless",
                            models="models", **KW)
    assert [p.models_dir for p in over.parts] == [root.resolve() / "models"] * 2
    with pytest.raises(bop.BopFormatError, match="train_test: split folder not found"):
        training_samples(root, CFG.bins, DEPTH, split="train_pbr,train_test", **KW)


def _write_jpg(path, colour, size=(60, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*size, 3), colour, np.uint8))


def test_backgrounds_folder_layouts(tmp_path):
    voc = tmp_path / "VOCdevkit"
    _write_jpg(voc / "VOC2012" / "JPEGImages" / "2008_000001.jpg", (0, 0, 255))
    _write_jpg(voc / "VOC2012" / "JPEGImages" / "2008_000002.jpg", (0, 255, 0))
    seg = voc / "VOC2012" / "SegmentationClass" / "2008_000001.png"
    _write_jpg(seg.with_suffix(".jpg"), (1, 1, 1))  # VOC's label images are not backgrounds
    seg.with_suffix(".jpg").rename(seg)
    names = lambda fb: sorted(p.name for p in fb.files)
    assert names(FolderBackgrounds(voc)) == ["2008_000001.jpg", "2008_000002.jpg"]
    assert names(FolderBackgrounds(voc / "VOC2012")) == ["2008_000001.jpg", "2008_000002.jpg"]
    assert names(FolderBackgrounds(voc / "VOC2012" / "JPEGImages")) == ["2008_000001.jpg", "2008_000002.jpg"]
    mixed = tmp_path / "mine"
    _write_jpg(mixed / "a.JPG", (10, 10, 10))
    _write_jpg(mixed / "deep" / "er" / "b.png", (20, 20, 20))
    (mixed / "notes.txt").write_text("not an image")
    fb = FolderBackgrounds(mixed)
    assert names(fb) == ["a.JPG", "b.png"]
    out = fb(np.random.default_rng(0), 64, 48)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_unreadable_backgrounds_are_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "bg"
    _write_jpg(folder / "good.jpg", (0, 0, 255))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    fb = FolderBackgrounds(folder)
    with caplog.at_level(logging.WARNING, logger="mrcnet.data.backgrounds"):
        outs = [fb(np.random.default_rng(s), 32, 24) for s in range(12)]
    assert all(np.abs(o.astype(int) - (0, 0, 255)).max() <= 3 for o in outs)  # only the good image (JPEG), no crash
    assert fb.n_unreadable == 1
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1  # one warning per file
    # the draws depend only on the generator and the files: a fresh instance gives the same pictures
    fresh = FolderBackgrounds(folder)
    assert all(np.array_equal(fresh(np.random.default_rng(s), 32, 24), outs[s]) for s in (5, 3))
    (folder / "good.jpg").unlink()
    with pytest.raises(bop.BopFormatError, match="bg: none of the 1 background images can be read"):
        FolderBackgrounds(folder)(np.random.default_rng(0), 32, 24)


def test_moved_names_still_import_from_the_data_package():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        from mrcnet.data.samples import TrainingSamples as Old, collate_samples as old_collate
    from mrcnet.train.dataset import collate_samples
    assert Old is TrainingSamples and old_collate is collate_samples
    assert any("moved to mrcnet.train.dataset" in str(x.message) for x in w)


def test_train_cli_runs_several_splits_with_a_backgrounds_folder(two_splits, tmp_path):
    """One short run over two splits with a backgrounds folder holding a broken image: the run ends,
    the summary gives the instances per split; an empty backgrounds folder is a one-line error."""
    bg = tmp_path / "JPEGImages"
    _write_jpg(bg / "x.jpg", (255, 0, 255))
    (bg / "y.jpg").write_bytes(b"broken")
    pbr = len(TrainingSamples(two_splits, CFG.bins, DEPTH, split="train_pbr", **KW))
    real = len(TrainingSamples(two_splits, CFG.bins, DEPTH, split="train_primesense", **KW))
    args = ["--data", str(two_splits), "--preset", "small", "--split", "train_pbr,train_primesense",
            "--batch-size", "2", "--max-steps", "1", "--warmup", "1", "--workers", "0", "--device", "cpu", "-q",
            "--bg-rule", "every", "--bg-prob", "1"]
    res = CliRunner().invoke(train_cli, [*args, "--backgrounds", str(bg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert f"training instances: train_pbr {pbr}, train_primesense {real}" in res.output
    assert (tmp_path / "run" / "last.pth").is_file()
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(train_cli, [*args, "--backgrounds", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 1 and "empty: no png/jpg/jpeg/tif images in the backgrounds folder" in res.output
    assert len(res.output.strip().splitlines()) == 1

"""Every official checkpoint (T-LESS 30, LM-O 8 or 15, YCB-V 21, ITODD 28 decoders) loads with every
key accounted for: official-format state dicts built from the key manifest on the meta device
(shapes only: the paper preset without its gigabyte)."""
import logging

import pytest
import torch

from mrcnet.checkpoint import (
    DECODER_PREFIX,
    CheckpointError,
    keep_decoders,
    load_checkpoint,
    model_from_checkpoint,
    official_decoder_dataset,
    official_key_map,
)
from mrcnet.runtime.presets import get_dataset
from mrcnet.testing import official_manifest

#: dataset -> decoders of its official checkpoint(s)
OFFICIAL = [("tless", 30), ("lmo", 8), ("lmo", 15), ("ycbv", 21), ("itodd", 28)]


def _official_meta_checkpoint(n_obj):
    """``{'network', 'optimizer', 'scheduler', 'last_epoch'}`` as the official trainer saves it,
    tensors on the meta device with the manifest's shapes (decoders: ``n_obj`` objects)."""
    sd = {k: torch.empty(s, device="meta") for k, s in official_manifest(n_obj).items()}
    return {"network": sd, "optimizer": {}, "scheduler": {}, "last_epoch": 74}


@pytest.mark.parametrize("dataset,n_obj", OFFICIAL)
def test_official_checkpoint_loads_with_every_key_accounted_for(dataset, n_obj, tmp_path):
    ckpt = _official_meta_checkpoint(n_obj)
    path = tmp_path / f"chkpt_{dataset}" / f"{dataset}.pth"  # a file as the official trainer writes it
    path.parent.mkdir()
    torch.save(ckpt, path)  # meta tensors: shapes only, a few kB
    preset = get_dataset(dataset)
    why = {k: official_key_map(k)[1] for k in ckpt["network"]}
    assert set(why.values()) == {"load", "alias", "unused"}  # nothing unknown
    decoders = [k for k in ckpt["network"] if k.startswith(DECODER_PREFIX)]
    assert len(decoders) == 12 and all(ckpt["network"][k].shape[0] == n_obj for k in decoders)
    for name in (dataset, None):  # named, or told by the decoder count
        model = load_checkpoint(path, dataset=name, device="meta")
        assert model.meta["source"] == "official" and model.meta["dataset"] == dataset
        assert model.n_obj == preset.n_objects and model.meta["obj_ids"] == list(preset.obj_ids)
        assert tuple(model.meta["depth_range"]) == preset.depth_range
        # every model key came from the checkpoint: the loaded keys are exactly the 'load' ones
        loaded = {k for k, w in why.items() if w == "load"}
        assert set(model.state_dict()) == loaded
        for k in decoders:
            assert model.state_dict()[k].shape[0] == preset.n_objects
        assert ("note" in model.meta) == (n_obj != preset.n_objects)


def test_lmo_with_15_decoders_keeps_0_to_7_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mrcnet.checkpoint"):
        model = model_from_checkpoint(_official_meta_checkpoint(15), dataset="lmo", device="meta", name="lmo.pth")
    note = model.meta["note"]
    assert "\n" not in note and note in caplog.text
    assert "lmo.pth: 15 decoders" in note and "decoders 0-7 are objects [1, 5, 6, 8, 9, 10, 11, 12]" in note
    assert "decoders 8-14 (never trained) dropped" in note


def test_keep_decoders_keeps_the_first_rows_by_value():
    sd = {"backbone.decoder.conv_last.weights": torch.arange(15.0).view(15, 1, 1, 1, 1),
          "backbone.decoder.conv_last.bias": torch.arange(15.0).view(15, 1, 1, 1) * 10,
          "classifier.pose_clf.linear2.bias": torch.arange(15.0)}
    out = keep_decoders(sd, 8)
    assert out["backbone.decoder.conv_last.weights"].flatten().tolist() == list(range(8))
    assert out["backbone.decoder.conv_last.bias"].flatten().tolist() == [10.0 * i for i in range(8)]
    assert out["classifier.pose_clf.linear2.bias"].shape == (15,)  # not a per-object tensor


def test_official_decoder_count_only_where_the_preset_says():
    assert official_decoder_dataset(None, 15).name == "lmo"
    assert official_decoder_dataset("lmo", 15).name == "lmo"
    assert official_decoder_dataset("lmo", 8) is None and official_decoder_dataset("tless", 15) is None
    with pytest.raises(CheckpointError, match="'tless' has 30 objects but checkpoint key .* has 15"):
        model_from_checkpoint(_official_meta_checkpoint(15), dataset="tless", device="meta")
    with pytest.raises(CheckpointError, match="cannot tell the dataset of a checkpoint with 12 objects"):
        model_from_checkpoint(_official_meta_checkpoint(12), device="meta")

"""Checkpoints: the official T-LESS state dict (all 30 object decoders) and the project format."""
import time

import numpy as np
import pytest
import torch

import mrcnet
from mrcnet.checkpoint import (
    CheckpointError,
    check_state_dict,
    convert_official_state_dict,
    load_checkpoint,
    official_key_map,
    save_checkpoint,
)
from mrcnet.model import build_model
from mrcnet.testing import official_manifest

MANIFEST = official_manifest()  # the T-LESS manifest, 30 objects


def _meta_official(manifest=MANIFEST):
    """An official-format state dict of meta tensors (shapes only), aliases sharing storage."""
    sd = {k: torch.empty(s, device="meta") for k, s in manifest.items()}
    return sd


def _meta_model(n_obj=30, preset="paper"):
    with torch.device("meta"):
        return build_model(n_obj, (0.05, 1.7), preset)


def test_every_official_key_is_loaded_or_knowingly_dropped():
    model_keys = set(_meta_model().state_dict())
    reasons = {}
    for k, shape in MANIFEST.items():
        target, why = official_key_map(k)
        reasons[k] = why
        assert why in ("load", "alias", "unused"), k
        if why == "unused":
            assert k.startswith(("backbone.base_model.0.", "backbone.base_model.1."))
        else:
            assert target in model_keys, k
            assert MANIFEST[target] == shape, k
    assert sum(w == "unused" for w in reasons.values()) == 3
    assert sum(w == "alias" for w in reasons.values()) == 105
    assert sum(w == "load" for w in reasons.values()) == 241
    # the loaded keys are exactly the model's keys with the manifest shapes
    loaded = {k for k, w in reasons.items() if w == "load"}
    assert loaded == model_keys
    check_state_dict(_meta_model(), convert_official_state_dict(_meta_official()))


def test_mismatch_errors_are_one_line_with_key_and_shapes():
    model = _meta_model()
    sd = convert_official_state_dict(_meta_official())
    bad = dict(sd)
    bad["decoder.reg_conv_x8.conv.weight"] = torch.empty(128, 185, 3, 3, device="meta")
    with pytest.raises(CheckpointError) as e:
        check_state_dict(model, bad)
    msg = str(e.value)
    assert "\n" not in msg and "decoder.reg_conv_x8.conv.weight" in msg
    assert "(128, 185, 3, 3)" in msg and "(128, 186, 3, 3)" in msg
    # wrong number of objects
    with pytest.raises(CheckpointError, match=r"key .backbone\.decoder\.\w+\.weights. has shape \(8, .*expects \(30, "):
        check_state_dict(model, convert_official_state_dict(_meta_official(official_manifest(8))))
    # missing key
    missing = {k: v for k, v in sd.items() if k != "classifier.pose_clf.linear2.bias"}
    with pytest.raises(CheckpointError, match=r"lacks key 'classifier\.pose_clf\.linear2\.bias' \(model shape \(4608,\)\)"):
        check_state_dict(model, missing)
    # unexpected key
    extra = dict(sd, **{"decoder.extra.weight": torch.empty(3, device="meta")})
    with pytest.raises(CheckpointError, match=r"'decoder\.extra\.weight' \(shape \(3,\)\)"):
        check_state_dict(model, extra)
    # unknown base_model entry
    with pytest.raises(CheckpointError, match="backbone.base_model.9.weight"):
        convert_official_state_dict({"backbone.base_model.9.weight": torch.empty(2, device="meta")})


def test_alias_must_equal_its_twin():
    a = torch.zeros(4)
    sd = {"backbone.layer1.0.0.bn1.weight": a, "backbone.base_model.4.0.bn1.weight": a.clone()}
    assert set(convert_official_state_dict(sd)) == {"backbone.layer1.0.0.bn1.weight"}
    sd["backbone.base_model.4.0.bn1.weight"] = torch.ones(4)
    with pytest.raises(CheckpointError, match="differs"):
        convert_official_state_dict(sd)


@pytest.mark.slow
def test_official_full_size_round_trip(tmp_path):
    """A full-size 30-object official checkpoint (~1 GB) saved with torch.save loads by name."""
    t0 = time.perf_counter()
    sd = {}
    for k, s in MANIFEST.items():
        target, why = official_key_map(k)
        if why != "alias":
            sd[k] = torch.zeros(s)
    for k in MANIFEST:
        target, why = official_key_map(k)
        if why == "alias":
            sd[k] = sd[target]  # registered twice, as in the official model
    # a few recognisable values
    sd["backbone.decoder.conv_last.bias"][29, 3] = 7.0
    sd["regressor.trans_reg.linear2.bias"][1] = -2.5
    path = tmp_path / "tless.pth"
    torch.save({"network": sd, "optimizer": {}, "scheduler": {}, "last_epoch": 74}, path)
    del sd
    with pytest.raises(CheckpointError, match="conv_last.weights"):
        load_checkpoint(path, dataset="lmo")
    model = mrcnet.load_checkpoint(path)  # 30 objects -> T-LESS
    assert model.n_obj == 30 and model.meta["dataset"] == "tless" and model.meta["source"] == "official"
    assert model.meta["box_rule"] == "official"  # the official inference's box truncation and caps
    assert model.meta["obj_ids"] == list(range(1, 31))
    assert model.tables.depth_range == (0.05, 1.7)
    assert model.backbone.decoder.conv_last.bias[29, 3, 0, 0].item() == 7.0
    assert model.regressor.trans_reg.linear2.bias[1].item() == -2.5
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert time.perf_counter() - t0 < 60


def test_project_format_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(3, (0.05, 1.7), "small").eval()
    path = tmp_path / "small.pth"
    meta = save_checkpoint(path, model, dataset="synth", fov_variant="training", epoch=3)
    assert meta["preset"] == "small" and meta["obj_ids"] == [1, 2, 3]
    loaded = load_checkpoint(path)
    assert loaded.cfg == model.cfg and loaded.meta["source"] == "project"
    assert loaded.meta["dataset"] == "synth" and loaded.meta["fov_variant"] == "training"
    assert loaded.meta["box_rule"] == "clip"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    g = torch.Generator().manual_seed(1)
    S = model.cfg.crop_size
    x = torch.rand(4, 4, S, S, generator=g)
    obj = torch.full((4,), 2)
    fov = torch.tensor([[0.0, 0.0, 0.3]]).repeat(4, 1)
    K = torch.tensor([[600.0, 0, S / 2], [0, 600, S / 2], [0, 0, 1]]).repeat(4, 1, 1)
    with torch.no_grad():
        a = model(x, obj, fov, K, x.flip(-1))
        b = loaded(x, obj, fov, K, x.flip(-1))
    np.testing.assert_array_equal(a["t"].numpy(), b["t"].numpy())
    # a preset argument that does not fit -> one-line error naming a key and both shapes
    with pytest.raises(CheckpointError, match=r"has shape \(.*\) but the model expects \("):
        load_checkpoint(path, preset="paper")
    # the dataset argument overrides the metadata; the object count must fit
    with pytest.raises(CheckpointError, match="'tless' has 30 objects"):
        load_checkpoint(path, dataset="tless")
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_obj_ids_name_the_decoders_of_a_smaller_checkpoint(tmp_path):
    """A 3-object checkpoint loaded as T-LESS objects 5, 7, 9 (fewer objects than the preset)."""
    torch.manual_seed(0)
    model = build_model(3, (0.05, 1.7), "small").eval()
    path = tmp_path / "three.pth"
    save_checkpoint(path, model, dataset="synth", fov_variant="official")
    loaded = load_checkpoint(path, dataset="tless", obj_ids=[5, 7, 9])
    assert loaded.meta["dataset"] == "tless" and loaded.meta["obj_ids"] == [5, 7, 9]
    assert loaded.meta["fov_variant"] == "inference" and loaded.n_obj == 3
    with pytest.raises(CheckpointError, match="checkpoint holds 3 objects, obj_ids names 2"):
        load_checkpoint(path, dataset="tless", obj_ids=[5, 7])
    with pytest.raises(CheckpointError, match=r"obj_ids \[99\] are not objects of dataset 'tless'"):
        load_checkpoint(path, dataset="tless", obj_ids=[5, 7, 99])

"""The official box rule (integer truncation, centre and size capped at the image, no clipping)
against the rule written out literally, for boxes inside, across and outside the image borders;
its selection through checkpoints, manifests and the runtime pipeline."""
import dataclasses
import json

import numpy as np
import pytest

from mrcnet.runtime import preprocess as P
from mrcnet.runtime.backends import create_backend
from mrcnet.runtime.manifest import ManifestError, load_manifest
from mrcnet.runtime.pipeline import Pipeline

import runtime_fakes as F

W, H = 640, 480
K = np.array([[600.0, 0, 320], [0, 610.0, 240], [0, 0, 1]])

# BOP'22 boxes (x, y, w, h), floats
BOXES = {
    "inside": (100.7, 120.2, 80.9, 60.6),
    "across_left_top": (-15.6, -7.3, 60.4, 50.8),
    "across_right_bottom": (600.2, 450.9, 90.5, 70.1),
    "outside_right": (700.5, 100.0, 40.0, 30.0),
    "outside_bottom": (10.0, 500.3, 30.0, 40.0),
    "larger_than_image": (-50.5, -20.5, 800.0, 530.0),
}


def official_reference(bbox_xywh, width=W, height=H):
    """The official inference's rule, written as its code states it."""
    x, y, w, h = bbox_xywh
    x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
    cx = min((x1 + x2) / 2, width)
    cy = min((y1 + y2) / 2, height)
    bw = int(max(0, min(x2 - x1, width)))
    bh = int(max(0, min(y2 - y1, height)))
    return (cx, cy), 1.5 * max(bw, bh), (bw, bh)


@pytest.mark.parametrize("case", sorted(BOXES))
def test_official_square_follows_the_rule(case):
    x, y, w, h = BOXES[case]
    box, centre, side = P.detection_square([x, y, x + w, y + h], W, H, "official")
    (cx, cy), s, (bw, bh) = official_reference(BOXES[case])
    assert centre == pytest.approx((cx, cy), abs=1e-12) and side == pytest.approx(s, abs=1e-12)
    np.testing.assert_allclose(box, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], atol=1e-12)
    # the crop and its box location follow from that square
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3)).astype(np.uint8)
    cb = P.prepare_detection(img, K, [x, y, x + w, y + h], fov_variant="inference", box_rule="official")
    Rz = cb.Rz
    for k in range(4):
        M, K_roi, c_rot = P.crop_transform(K, (cx, cy), s, Rz[k])
        np.testing.assert_allclose(cb.M[k], M, atol=1e-9)
        np.testing.assert_allclose(cb.K_roi[k], K_roi, atol=1e-9)
        loc = P.crop_box_location([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], (cx, cy), s, Rz[k])
        np.testing.assert_allclose(cb.box_loc[k], loc, atol=1e-12)
    # centred box location at k = 0: [0.5 - w/2s, 0.5 - h/2s, 0.5 + w/2s, 0.5 + h/2s]
    np.testing.assert_allclose(cb.box_loc[0], [0.5 - bw / (2 * s), 0.5 - bh / (2 * s), 0.5 + bw / (2 * s),
                                               0.5 + bh / (2 * s)], atol=1e-12)


def test_official_and_clip_rules_differ_where_the_official_code_does():
    # fractional box inside: truncation moves the centre and the side
    x, y, w, h = BOXES["inside"]
    b = [x, y, x + w, y + h]
    _, c_off, s_off = P.detection_square(b, W, H, "official")
    _, c_clip, s_clip = P.detection_square(b, W, H, "clip")
    assert c_off == (140.5, 150.0) and s_off == 1.5 * 81  # int(100.7) = 100, int(181.6) = 181
    assert c_clip == pytest.approx((x + w / 2, y + h / 2)) and s_clip == pytest.approx(1.5 * w)
    # a box across the border keeps its full size under the official rule, is clipped under ours
    x, y, w, h = BOXES["across_right_bottom"]
    _, c_off, s_off = P.detection_square([x, y, x + w, y + h], W, H, "official")
    box, c_clip, s_clip = P.detection_square([x, y, x + w, y + h], W, H, "clip")
    assert s_off == 1.5 * 90 and s_clip == pytest.approx(1.5 * (W - x))
    # a box outside the image: official caps the centre at the image size; ours refuses it
    x, y, w, h = BOXES["outside_right"]
    _, c_off, _ = P.detection_square([x, y, x + w, y + h], W, H, "official")
    assert c_off[0] == W
    with pytest.raises(P.InputError, match="outside"):
        P.detection_square([x, y, x + w, y + h], W, H, "clip")


def test_official_rule_bad_boxes_are_one_line_errors():
    with pytest.raises(P.InputError, match="empty after truncation"):
        P.detection_square([10.2, 10.0, 10.9, 40.0], W, H, "official")
    with pytest.raises(P.InputError, match="4 finite numbers"):
        P.detection_square([10, 10, np.nan, 40], W, H, "official")
    with pytest.raises(P.InputError, match="box rule"):
        P.detection_square([10, 10, 40, 40], W, H, "nearest")


def test_checkpoint_box_rule_defaults():
    from mrcnet.checkpoint import CheckpointError, checkpoint_box_rule

    assert checkpoint_box_rule({}, "official") == "official"
    assert checkpoint_box_rule({}, "project") == "clip"
    assert checkpoint_box_rule({"box_rule": "official"}, "project") == "official"
    with pytest.raises(CheckpointError, match="box rule"):
        checkpoint_box_rule({"box_rule": "round"}, "project")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return F.make_export(tmp_path_factory.mktemp("export"), obj_ids=(1, 2))


def test_manifest_box_rule_key(export_dir, tmp_path):
    m = load_manifest(export_dir)
    assert m.box_rule == "clip"  # absent key: the project's rule (older exports)
    d = json.loads((export_dir / "manifest.json").read_text())
    for rule in ("official", "round"):
        out = tmp_path / rule
        out.mkdir()
        for f in export_dir.iterdir():
            if f.is_file():
                (out / f.name).write_bytes(f.read_bytes())
        (out / "models").mkdir(exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({**d, "box_rule": rule}))
        if rule == "official":
            assert load_manifest(out).box_rule == "official"
        else:
            with pytest.raises(ManifestError, match="box_rule 'round'"):
                load_manifest(out)


def test_pipeline_uses_the_manifest_box_rule(export_dir):
    """The fake graphs put the object on the crop-centre ray at a depth proportional to 256/side:
    the pose tells which square the pipeline cropped."""
    m = load_manifest(export_dir)
    box = (100.7, 100.2, 200.9, 180.6)
    img = np.zeros((H, W, 3), np.uint8)
    poses = {}
    for rule in ("clip", "official"):
        mr = dataclasses.replace(m, box_rule=rule)
        pipe = Pipeline(create_backend(mr, "onnxruntime-cpu"), mr, F.SilhouetteRenderer())
        poses[rule] = pipe.estimate(img, K, [(1, box)])[0]
    for rule, used in (("official", (100, 100, 200, 180)), ("clip", box)):
        x1, y1, x2, y2 = used
        c = np.array([(x1 + x2) / 2, (y1 + y2) / 2, 1.0])
        tz = F.D0 * 256.0 / (1.5 * max(x2 - x1, y2 - y1)) * K[0, 0]
        np.testing.assert_allclose(poses[rule].t, tz * np.linalg.inv(K) @ c, rtol=1e-5)

"""ImageNet ResNet-34 (torchvision key layout) -> MRC-Net's backbone: every key accounted for, the
stem rules, one-line errors, the paper-preset-only check (``mrcnet-train --backbone-init``)."""
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from mrcnet.model import build_model, get_config
from mrcnet.train import backbone_init as B
from mrcnet.train import trainer
from mrcnet.train.cli import main as train_cli

from train_fixtures import write_tiny_split


class _Block(nn.Module):
    """torchvision's BasicBlock parameter layout (conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class _TorchvisionResNet34(nn.Module):
    """The module layout of ``torchvision.models.resnet34()`` (written out: torchvision is not a
    dependency), so its ``state_dict()`` has torchvision's keys and shapes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
            blocks = [_Block(cin if b == 0 else c, c, 2 if (b == 0 and i > 1) else 1) for b in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = c
        self.fc = nn.Linear(512, 1000)


def _random_imagenet_state(seed=0):
    """A torchvision-layout ResNet-34 state dict with every tensor random (BatchNorm affine and running
    statistics included), so a copied value cannot match by accident."""
    g = torch.Generator().manual_seed(seed)
    sd = _TorchvisionResNet34().state_dict()
    return {k: (torch.randint(0, 1000, v.shape, generator=g) if v.dtype == torch.int64
                else torch.randn(v.shape, generator=g)) for k, v in sd.items()}


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("imagenet") / "resnet34.pth"
    sd = _random_imagenet_state()
    torch.save(sd, path)
    return path, sd


@pytest.fixture()
def paper_model():
    torch.manual_seed(0)
    return build_model(1, (0.05, 1.7), get_config("paper"))


def test_layout_is_torchvisions():
    """The expected layout (keys and shapes) is that of torchvision's ResNet-34 module: 218 tensors."""
    sd = _TorchvisionResNet34().state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == B.torchvision_resnet34_shapes()
    assert len(sd) == 218


def test_official_stem_rule_copies_the_stages_and_keeps_a_fresh_stem(imagenet_file, paper_model):
    path, sd = imagenet_file
    stem_before = {k: v.clone() for k, v in paper_model.backbone.layer0.state_dict().items()}
    rest_before = paper_model.backbone.pool[1].weight.clone()
    rep = B.init_backbone_from_imagenet(paper_model, path)
    params = dict(paper_model.named_parameters())
    n_stage = 0
    for key, value in sd.items():
        if key.startswith("layer") and key.split(".")[-1] not in B.RUNNING_STATS:
            name = "backbone." + key.replace(".", ".0.", 1)  # layer1.0.conv1.weight -> layer1.0.0.conv1.weight
            torch.testing.assert_close(params[name].detach(), value, rtol=0, atol=0)
            n_stage += 1
    assert n_stage == len(rep["loaded"]) == 2 * 16 * 3 + 3 * 3  # 16 blocks x (2 convs + 2 BN x 2) + 3 downsamples
    # the official rule: the 4-channel stem is the model's own fresh one, the 3-channel filters unused
    for k, v in paper_model.backbone.layer0.state_dict().items():
        torch.testing.assert_close(v, stem_before[k], rtol=0, atol=0)
    torch.testing.assert_close(paper_model.backbone.pool[1].weight, rest_before, rtol=0, atol=0)
    unused = rep["unused"]
    assert sorted(unused["stem (official rule: a fresh 4-channel stem)"]) == ["bn1.bias", "bn1.weight", "conv1.weight"]
    assert sorted(unused["ImageNet classifier"]) == ["fc.bias", "fc.weight"]
    assert len(unused["running statistics (batch statistics always)"]) == 36 * 3
    # every key of the file accounted for exactly once
    assert len(rep["loaded"]) + sum(len(v) for v in unused.values()) == len(sd)


def test_imagenet_stem_rule_uses_the_filters_in_bgr_order(imagenet_file, paper_model):
    path, sd = imagenet_file
    rep = B.init_backbone_from_imagenet(paper_model, path, stem="imagenet")
    conv, norm = paper_model.backbone.layer0[0].weight.detach(), paper_model.backbone.layer0[1]
    torch.testing.assert_close(conv[:, 0], sd["conv1.weight"][:, 2])  # B <- torchvision's B (its 3rd, RGB)
    torch.testing.assert_close(conv[:, 2], sd["conv1.weight"][:, 0])  # R <- R
    torch.testing.assert_close(conv[:, 1], sd["conv1.weight"][:, 1])
    assert torch.count_nonzero(conv[:, 3]) == 0  # the box-map channel starts at zero
    torch.testing.assert_close(norm.weight.detach(), sd["bn1.weight"])
    torch.testing.assert_close(norm.bias.detach(), sd["bn1.bias"])
    assert "backbone.layer0.0.weight" in rep["loaded"] and not any("stem" in k for k in rep["unused"])


def test_file_errors_name_the_keys(tmp_path):
    sd = _random_imagenet_state(1)
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "layer4.2.bn2.weight"}, "missing keys: layer4.2.bn2.weight"),
        "extra": ({**sd, "module.head.weight": torch.zeros(3)}, "unexpected keys: module.head.weight"),
        "shape": ({**sd, "layer2.0.conv1.weight": torch.zeros(128, 64, 5, 5)},
                  r"mismatched shapes: layer2.0.conv1.weight \(128, 64, 5, 5\) \(expected \(128, 64, 3, 3\)\)"),
        "resnet18": ({k: v for k, v in sd.items() if not k.startswith(("layer3.2", "layer3.3", "layer3.4", "layer3.5"))},
                     r"missing keys: layer3\.2\.conv1\.weight.*\(\+\d+ more\)"),
    }
    for name, (state, msg) in cases.items():
        torch.save(state, tmp_path / f"{name}.pth")
        with pytest.raises(B.BackboneInitError, match=msg) as e:
            B.read_imagenet_state(tmp_path / f"{name}.pth")
        assert f"{name}.pth" in str(e.value) and "\n" not in str(e.value)
    # a file saved before BatchNorm counted its batches (no num_batches_tracked) is complete
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    assert B.read_imagenet_state(tmp_path / "old.pth").keys() == old.keys()
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(B.BackboneInitError, match="junk.pth: not a readable state dict"):
        B.read_imagenet_state(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(B.BackboneInitError, match="list.pth: not a state dict of tensors"):
        B.read_imagenet_state(tmp_path / "list.pth")
    with pytest.raises(B.BackboneInitError, match="state dict: mismatched shapes: fc.bias"):
        B.init_backbone_from_imagenet(build_model(1, (0.05, 1.7), get_config("paper")), {**sd, "fc.bias": torch.zeros(9)})
    with pytest.raises(B.BackboneInitError, match="nothing.pth: file not found"):
        B.read_imagenet_state(tmp_path / "nothing.pth")


def test_only_a_resnet34_backbone_takes_imagenet_weights(imagenet_file, tmp_path):
    small = build_model(1, (0.05, 1.7), get_config("small"))
    with pytest.raises(B.BackboneInitError, match="preset 'small'.*is not ResNet-34"):
        B.init_backbone_from_imagenet(small, imagenet_file[0])
    res = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "small",
                                         "--backbone-init", str(imagenet_file[0]), "-q"])
    assert res.exit_code == 1
    assert "--backbone-init: preset 'small'" in res.output and "not ResNet-34" in res.output
    res = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--out", str(tmp_path / "run2"), "--preset", "paper",
                                         "--backbone-init", str(tmp_path / "none.pth"), "-q"])
    assert res.exit_code == 1 and "--backbone-init:" in res.output and "none.pth: file not found" in res.output
    res = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--out", str(tmp_path / "run3"),
                                         "--init", str(imagenet_file[0]), "--backbone-init", str(imagenet_file[0])])
    assert res.exit_code == 2 and "give one" in res.output


@pytest.mark.slow
def test_trainer_starts_from_the_imagenet_backbone(imagenet_file, tmp_path, monkeypatch):
    """train(backbone_init=FILE): after one step at a negligible learning rate the checkpoint's stages
    hold the file's weights. The graph is the small preset's with ResNet-34 stages (the paper
    preset's backbone, at a fraction of the paper preset's cost)."""
    r34 = replace(get_config("small"), name="small-r34", stem_channels=64, stage_channels=B.RESNET34_CHANNELS,
                  stage_blocks=B.RESNET34_BLOCKS)
    monkeypatch.setattr(trainer, "get_config", lambda name: r34)
    data = write_tiny_split(tmp_path / "data", n_images=1, n_objects=1, seed=0)
    path, sd = imagenet_file
    res = trainer.train(trainer.TrainConfig(data=str(data), out=str(tmp_path / "run"), batch_size=2, warmup=0,
                                            lr=1e-9, min_lr=1e-9, max_steps=1, workers=0, progress=False,
                                            device="cpu", backbone_init=str(path)))
    assert res["step"] == 1
    net = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)["network"]
    for key in ("layer1.0.conv1.weight", "layer3.5.bn2.bias", "layer4.0.downsample.0.weight"):
        torch.testing.assert_close(net["backbone." + key.replace(".", ".0.", 1)], sd[key], rtol=0, atol=1e-6)

"""GroupBatchNorm2d under mixed precision: batch statistics in float32 (float16 squares overflow)."""
import torch

from mrcnet.model.layers import GroupBatchNorm2d


def _fp16_variance_overflows(x: torch.Tensor, g: int) -> bool:
    """What a float16 computation of the statistics gives (the behaviour this layer avoids)."""
    n, c, h, w = x.shape
    xg = x.reshape(-1, g, c, h, w)
    xc = xg - xg.mean(dim=(1, 3, 4), keepdim=True)
    return not bool(torch.isfinite((xc * xc).mean(dim=(1, 3, 4))).all())


def test_float16_inputs_beyond_255_normalise_like_float32():
    torch.manual_seed(0)
    bn = GroupBatchNorm2d(8, group_size=4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(8, 8, 16, 16) * 600.0 + 40.0  # |x - mean| well above 255
    x16 = x.half()
    assert _fp16_variance_overflows(x16, 4)
    ref = bn(x16.float())
    y = bn(x16)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 5e-3 * ref.abs().max()
    # float32 inputs take the float32 path unchanged
    assert bn(x).dtype == torch.float32


def test_cpu_autocast_statistics_stay_finite_and_match():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    bn = GroupBatchNorm2d(8, group_size=0)  # whole-batch statistics, as in training
    x = torch.randn(8, 3, 32, 32) * 300.0
    with torch.no_grad():
        ref = bn(conv(x))
        with torch.autocast("cpu", dtype=torch.float16):
            h = conv(x)
            y = bn(h)
    assert h.dtype == torch.float16 and _fp16_variance_overflows(h, 8)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 2e-2 * ref.abs().max()


def test_amp_gradients_are_finite():
    torch.manual_seed(2)
    bn = GroupBatchNorm2d(4, group_size=4)
    x = (torch.randn(8, 4, 8, 8) * 500.0).half().requires_grad_()
    bn(x).float().square().mean().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(bn.weight.grad).all()

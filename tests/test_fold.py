"""Inference folds a batch norm into the conv before it only where that is the same computation,
and then computes what ``norm(conv(x))`` computes."""
import pytest
import torch
import torch.nn as nn

from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNeXt
from resnest_mm.models.layers import fold
from resnest_mm.models.layers.fold import conv_norm, folds, run_sequential
from resnest_mm.models.layers.pointwise import PointwiseConv2d
from resnest_mm.models.layers.spatial import SpatialConv2d


def randomised(norm: nn.Module) -> nn.Module:
    """A norm in eval mode with statistics and affine parameters far from the defaults."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1, generator=g)
        norm.running_var.uniform_(0.2, 3, generator=g)
        if norm.weight is not None:
            norm.weight.uniform_(-2, 2, generator=g)
            norm.bias.uniform_(-1, 1, generator=g)
    return norm.eval()


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


CASES = {
    'gemm': (lambda: PointwiseConv2d(8, 6), cl),
    'gemm_strided': (lambda: PointwiseConv2d(8, 6, stride=2), cl),
    'gemm_bias': (lambda: PointwiseConv2d(8, 6, bias=True), cl),
    'pointwise_nchw': (lambda: PointwiseConv2d(8, 6), lambda t: t),
    'spatial': (lambda: SpatialConv2d(8, 6, 3, padding=1, bias=False), cl),
    'spatial_grouped_strided': (lambda: SpatialConv2d(8, 12, 3, stride=2, padding=2, dilation=2,
                                                      groups=2, bias=True), cl),
    'spatial_nchw': (lambda: SpatialConv2d(8, 6, 3, padding=1), lambda t: t),
}


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('case', sorted(CASES))
def test_folded_conv_is_the_conv_and_the_norm(case, affine):
    torch.manual_seed(0)
    make, layout = CASES[case]
    conv = make().double()
    norm = randomised(nn.BatchNorm2d(conv.out_channels, affine=affine).double())
    x = layout(torch.randn(2, 8, 12, 10, dtype=torch.float64))
    with torch.no_grad():
        assert folds(conv, norm, x)
        got = conv_norm(conv, norm, x)
        want = norm(conv(x))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The layout the plain path returns (channels-last in, channels-last out).
    assert got.is_contiguous(memory_format=torch.channels_last) == \
        want.is_contiguous(memory_format=torch.channels_last)


def test_folding_uses_the_current_parameters_every_call():
    """Nothing is cached: a changed weight or statistic shows in the next call."""
    conv, norm = PointwiseConv2d(8, 6), randomised(nn.BatchNorm2d(6))
    x = cl(torch.randn(2, 8, 6, 6))
    with torch.no_grad():
        first = conv_norm(conv, norm, x)
        conv.weight.mul_(2)
        norm.running_mean.add_(1)
        second = conv_norm(conv, norm, x)
        torch.testing.assert_close(second, norm(conv(x)))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize('why,setup', [
    ('autograd on', lambda conv, norm: (conv, norm)),
    ('norm training', lambda conv, norm: (conv, norm.train())),
    ('group norm', lambda conv, norm: (conv, nn.GroupNorm(2, 6))),
    ('batch norm without running statistics', lambda conv, norm: (
        conv, nn.BatchNorm2d(6, track_running_stats=False).eval())),
    ('plain nn.Conv2d', lambda conv, norm: (nn.Conv2d(8, 6, 1, bias=False), norm)),
    ('weight heavy for the map', lambda conv, norm: (SpatialConv2d(8, 6, 3, padding=1), norm)),
])
def test_not_folded_where_it_would_change_what_runs(why, setup):
    conv, norm = setup(PointwiseConv2d(8, 6), randomised(nn.BatchNorm2d(6)))
    # 72 weight values per output channel over 2 output positions; else 8 over 72.
    x = cl(torch.randn(1, 8, 1, 2) if 'heavy' in why else torch.randn(2, 8, 6, 6))
    with torch.set_grad_enabled(why == 'autograd on'):
        assert not folds(conv, norm, x)
        torch.testing.assert_close(conv_norm(conv, norm, x), norm(conv(x)))


def test_a_hook_on_either_module_sees_it_run():
    for hooked in ('conv', 'norm'):
        conv, norm = PointwiseConv2d(8, 6), randomised(nn.BatchNorm2d(6))
        ran = []
        dict(conv=conv, norm=norm)[hooked].register_forward_hook(lambda m, a, o: ran.append(o))
        x = cl(torch.randn(2, 8, 6, 6))
        with torch.no_grad():
            assert not folds(conv, norm, x)
            conv_norm(conv, norm, x)
        assert len(ran) == 1


def test_not_folded_under_autocast_or_graph_capture():
    conv, norm = PointwiseConv2d(8, 6), randomised(nn.BatchNorm2d(6))
    x = cl(torch.randn(2, 8, 6, 6))
    with torch.no_grad():
        assert folds(conv, norm, x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not folds(conv, norm, x)
        assert not folds(conv.bfloat16(), norm.bfloat16(), x.bfloat16())
        conv.float(), norm.float()
        global_hook = torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, o: None)
        try:
            assert not folds(conv, norm, x)
        finally:
            global_hook.remove()

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = conv, norm

        def forward(self, t):
            return conv_norm(self.conv, self.norm, t)

    traced = torch.jit.trace(Pair().eval(), x)
    assert 'aten::batch_norm' in {n.kind() for n in traced.inlined_graph.nodes()}


def test_run_sequential_folds_pairs_and_runs_the_rest():
    torch.manual_seed(0)
    seq = nn.Sequential(SpatialConv2d(3, 8, 3, stride=2, padding=1, bias=False),
                        randomised(nn.BatchNorm2d(8)), nn.ReLU(inplace=True),
                        PointwiseConv2d(8, 8), nn.ReLU(),  # a conv without a norm
                        PointwiseConv2d(8, 6), randomised(nn.BatchNorm2d(6)),
                        PointwiseConv2d(6, 4)).double()
    x = cl(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    folded = []
    original = fold.conv_norm
    with torch.no_grad():
        want = seq(x)
        fold.conv_norm = lambda c, n, t: folded.append(folds(c, n, t)) or original(c, n, t)
        try:
            got = run_sequential(seq, x)
        finally:
            fold.conv_norm = original
    assert folded == [True, True]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    seen = []
    seq.register_forward_hook(lambda m, a, o: seen.append(1))
    with torch.no_grad():
        run_sequential(seq, x)
    assert seen  # a hook on the Sequential sees it run as itself


NETS = {
    'resnest_deep_stem': lambda: ResNeSt(depth=50, base_channels=8, base_width=4, groups=2),
    'resnext': lambda: ResNeXt(depth=50, base_channels=8, groups=4, base_width=2),
    'res2net': lambda: Res2Net(depth=50, base_channels=8, base_width=4, scales=4),
    'resnet18': lambda: ResNet(depth=18, base_channels=8),
    'resnet_v1d': lambda: ResNet(depth=50, base_channels=8, deep_stem=True, avg_down=True),
}


@pytest.mark.parametrize('name', sorted(NETS))
def test_backbone_inference_is_the_unfolded_network(name, monkeypatch):
    """Every family's inference with folding (stem, blocks, split attention, Res2Net scales,
    shortcuts) against the same network with folding off, in float64."""
    torch.manual_seed(0)
    model = NETS[name]().double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomised(m)
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    decided = []
    original = fold.folds
    monkeypatch.setattr(fold, 'folds', lambda *a: decided.append(original(*a)) or decided[-1])
    with torch.no_grad():
        got = model(x)
    assert sum(decided) >= 4 and not all(decided)  # folded where light, not where heavy
    monkeypatch.setattr(fold, 'FOLD_MAX_RATIO', -1)
    with torch.no_grad():
        want = model(x)
    for a, b in zip(got, want):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('name', sorted(NETS))
def test_mmcv_fuse_conv_bn_folds_every_norm_for_deployment(name):
    """mmcv's deployment fold (``fuse_conv_bn``) finds each conv and its norm in our modules and
    leaves the outputs unchanged; it skips Res2Net's per-scale lists, as in MMDetection's."""
    import copy

    from mmcv.cnn import fuse_conv_bn
    torch.manual_seed(0)
    model = NETS[name]().double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomised(m)
    fused = fuse_conv_bn(copy.deepcopy(model))
    left = [n for n, m in fused.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if name == 'res2net':
        assert left and all('.bns.' in n for n in left)
    else:
        assert not left
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(fused(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

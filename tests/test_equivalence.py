"""Numerical identity with the reference implementations.

Each test builds a reference network with random weights and non-trivial BN statistics, loads its
state dict (in the reference's own layout) into resnest_mm through the checkpoint loader, and
compares every stage output. Both directions of the official-vs-built-in differences are covered:
the defaults equal the official networks, the compatibility options equal the built-ins.
"""
import pytest
import torch
import torch.nn as nn

from resnest_mm.checkpoint import load_pretrained
from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNetV1c, ResNeXt

from .conftest import max_diff, randomize_norms

TOL = 1e-4
OS8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True)


def n_params(model: nn.Module, skip=('fc.',)) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def official_stages(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def compare(reference, reference_forward, ours, size=64, quiet=True):
    randomize_norms(reference)
    reference.eval()
    load_pretrained(ours, reference.state_dict(), logger=(lambda m: None) if quiet else None)
    ours.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref_out = reference_forward(reference, x)
        our_out = ours(x)
    assert [o.shape for o in ref_out] == [o.shape for o in our_out]
    diff = max_diff(ref_out, our_out)
    scale = max(float(o.abs().max()) for o in ref_out)
    assert scale > 1e-2, 'outputs collapsed: the comparison would not mean anything'
    assert diff < TOL, f'max abs diff {diff:.3g} (output scale {scale:.3g})'
    print(f' max|diff|={diff:.2e} (scale {scale:.2g})', end=' ')  # pytest -s -v shows it
    return diff


def mm_forward(net, x):
    return net(x)


# ------------------------------------------------------------------------------------------------
# Official ResNeSt (PyPI `resnest`)
OFFICIAL_DEPTHS = [50, 101, 200, 269]


@pytest.mark.parametrize('depth', OFFICIAL_DEPTHS)
def test_resnest_equals_official(depth):
    import resnest.torch as official
    ref = getattr(official, f'resnest{depth}')(pretrained=False)
    ours = ResNeSt(depth=depth)
    assert n_params(ours) == n_params(ref)
    compare(ref, official_stages, ours, size=64 if depth <= 101 else 32)


@pytest.mark.parametrize('depth', [50, 101])
def test_dilated_resnest_equals_official_dilated(depth):
    import resnest.torch as official
    ref = getattr(official, f'resnest{depth}')(pretrained=False, dilated=True)
    compare(ref, official_stages, ResNeSt(depth=depth, **OS8))


def test_resnest_fast_variant_equals_official():
    from resnest.torch.ablation import resnest50_fast_2s2x40d
    from resnest_mm.models import build_backbone
    ref = resnest50_fast_2s2x40d(pretrained=False)
    ours = build_backbone('resnest50_fast_2s2x40d')
    assert n_params(ours) == n_params(ref)
    compare(ref, official_stages, ours)


# ------------------------------------------------------------------------------------------------
# MMDetection built-ins
def mmdet_backbone(name, **kwargs):
    from mmdet.registry import MODELS
    import mmdet.models  # noqa: F401
    return MODELS.build(dict(type=name, **kwargs))


def mmseg_backbone(name, **kwargs):
    from mmseg.registry import MODELS
    import mmseg.models  # noqa: F401
    return MODELS.build(dict(type=name, **kwargs))


@pytest.mark.parametrize('depth', [50, 101])
def test_resnest_equals_mmdet(depth):
    stem = 64 if depth == 50 else 128
    ref = mmdet_backbone('ResNeSt', depth=depth, stem_channels=stem, norm_eval=False)
    ours = ResNeSt(depth=depth)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


def test_resnext_equals_mmdet():
    ref = mmdet_backbone('ResNeXt', depth=50, groups=32, base_width=4)
    ours = ResNeXt(depth=50, groups=32, base_width=4)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


@pytest.mark.parametrize('depth,style', [(18, 'pytorch'), (50, 'pytorch'), (50, 'caffe')])
def test_resnet_equals_mmdet(depth, style):
    # 'caffe': the stride on the first 1x1 conv, as MSRA's weights (the detection baselines') need
    ref = mmdet_backbone('ResNet', depth=depth, style=style)
    ours = ResNet(depth=depth, style=style)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


@pytest.mark.parametrize('scales,width', [(4, 26), (8, 26), (2, 48)])
def test_res2net_builtin_option_equals_mmdet(scales, width):
    ref = mmdet_backbone('Res2Net', depth=50, scales=scales, base_width=width)
    ours = Res2Net(depth=50, scales=scales, base_width=width, pool_first_stage=False)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


def _pool_in_first_stage(res2net):
    """Patch MMDetection's Res2Net into the official network: its first block of the first stage
    gets the stride-1 3x3 pool on the last split that the official network has there."""
    block = res2net.layer1[0]
    orig_forward = type(block).forward
    block.pool = nn.AvgPool2d(3, 1, padding=1)

    def patched(x, block=block):
        block.conv2_stride = 2  # takes the pooling branch; the convs were built with stride 1
        try:
            return orig_forward(block, x)
        finally:
            block.conv2_stride = 1
    block.forward = patched
    return res2net


def test_res2net_default_equals_official_network():
    ref = _pool_in_first_stage(mmdet_backbone('Res2Net', depth=50, scales=4, base_width=26))
    ours = Res2Net(depth=50, scales=4, base_width=26)
    compare(ref, mm_forward, ours)
    # And the unpatched built-in differs from the official network by exactly that pool.
    plain = mmdet_backbone('Res2Net', depth=50, scales=4, base_width=26)
    plain.load_state_dict(ref.state_dict())
    plain.eval()  # MMDetection's train() returns None, so no chaining
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(plain(x), ours(x)) > 1e-3


def test_res2net_loads_official_v1b_key_layout():
    """A state dict in the official/timm v1b layout (conv1.0..6, bn1, fc) loads strictly."""
    ref = _pool_in_first_stage(mmdet_backbone('Res2Net', depth=50, scales=4, base_width=26))
    randomize_norms(ref)
    state = {}
    for k, v in ref.state_dict().items():
        if k.startswith('stem.'):
            idx, rest = k[5:].split('.', 1)
            k = f'bn1.{rest}' if idx == '7' else f'conv1.{idx}.{rest}'
        state[k] = v
    state['fc.weight'], state['fc.bias'] = torch.zeros(1000, 2048), torch.zeros(1000)
    ours = Res2Net(depth=50)
    report = load_pretrained(ours, state, logger=lambda m: None)
    assert report.layout == 'deep-stem' and report.dropped_classifier == ['fc.weight', 'fc.bias']
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref.eval()
        assert max_diff(ref(x), ours.eval()(x)) < TOL


# ------------------------------------------------------------------------------------------------
# MMSegmentation built-ins (dilated, output stride 8)
def test_dilated_resnest_builtin_option_equals_mmseg():
    ref = mmseg_backbone('ResNeSt', depth=50, stem_channels=64, **OS8)
    ours = ResNeSt(depth=50, avd_in_dilated_stages=False, **OS8)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


def test_official_dilated_resnest_equals_mmseg_patched_with_pool():
    """The one difference between the official dilated ResNeSt and MMSegmentation's: the stride-1
    pool in the first block of each dilated stage."""
    import resnest.torch as official
    ref = mmseg_backbone('ResNeSt', depth=50, stem_channels=64, **OS8)
    for layer in (ref.layer3, ref.layer4):
        layer[0].avg_down_stride = True
        layer[0].avd_layer = nn.AvgPool2d(3, 1, padding=1)
    off = official.resnest50(pretrained=False, dilated=True)
    ours = ResNeSt(depth=50, **OS8)
    compare(ref, mm_forward, ours)
    # ... and the official dilated network's weights fit ours exactly (a strict load, which
    # raises on any mismatch; the outputs are compared in test_dilated_resnest_equals_official_*).
    report = load_pretrained(ours, off.state_dict(), logger=lambda m: None)
    assert report.layout == 'deep-stem'  # the official package's stem naming


def test_resnest_builtin_equals_official_when_not_dilated():
    """Without dilation the option changes nothing: both equal the official network."""
    a, b = ResNeSt(depth=50), ResNeSt(depth=50, avd_in_dilated_stages=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(a.eval()(x), b.eval()(x)) == 0


@pytest.mark.parametrize('dilated', [False, True])
def test_resnet_v1c_equals_mmseg(dilated):
    kwargs = OS8 if dilated else {}
    ref = mmseg_backbone('ResNetV1c', depth=50, **kwargs)
    ours = ResNetV1c(depth=50, **kwargs)
    assert n_params(ours) == n_params(ref)
    compare(ref, mm_forward, ours)


def test_dilated_resnext_equals_mmseg():
    ref = mmseg_backbone('ResNeXt', depth=50, groups=32, base_width=4, **OS8)
    compare(ref, mm_forward, ResNeXt(depth=50, groups=32, base_width=4, **OS8))


def test_dilated_res2net_builtin_option_equals_mmdet_dilated():
    ref = mmdet_backbone('Res2Net', depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 2))
    ours = Res2Net(depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 2),
                   pool_first_stage=False)
    compare(ref, mm_forward, ours)

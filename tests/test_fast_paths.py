"""The fast paths (matrix-product 1x1 convs, in-place shortcut adds, NCHW outputs kept once,
average pools that keep only a shape) compute exactly what the plain ops compute."""
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks import ConvWS2d

from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNeXt
from resnest_mm.models.layers import fold, pointwise
from resnest_mm.models.layers import layout
from resnest_mm.models.layers.layout import SavedAsNCHW, nchw_copy, to_nchw
from resnest_mm.models.layers.pointwise import PointwiseConv2d, build_pointwise_conv
from resnest_mm.models.layers import spatial, split_attention
from resnest_mm.models.layers.pool import ShapeOnlyAvgPool2d
from resnest_mm.models.layers.spatial import SpatialConv2d, build_spatial_conv


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('bias,stride', [(False, 1), (True, 1), (False, 2)])
def test_gemm_path_matches_conv_forward_and_backward(bias, stride):
    conv = PointwiseConv2d(12, 20, stride=stride, bias=bias)
    x = channels_last(2, 12, 7, 5).requires_grad_()  # odd sizes: strided output is 4x3
    assert conv.uses_gemm(x)
    out = conv(x)
    assert out.shape == (2, 20, -(-7 // stride), -(-5 // stride))
    assert out.is_contiguous(memory_format=torch.channels_last)  # no layout copy on the way out
    grad = torch.randn_like(out)
    out.backward(grad)
    got = [x.grad, conv.weight.grad] + ([conv.bias.grad] if bias else [])

    x_ref = x.detach().clone().requires_grad_()
    w_ref = conv.weight.detach().clone().requires_grad_()
    b_ref = conv.bias.detach().clone().requires_grad_() if bias else None
    ref_out = F.conv2d(x_ref, w_ref, b_ref, stride=stride)
    ref_out.backward(grad)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    ref = [x_ref.grad, w_ref.grad] + ([b_ref.grad] if bias else [])
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_conv_path_for_nchw_large_and_non_4d_inputs(monkeypatch):
    conv = PointwiseConv2d(4, 6)
    assert not conv.uses_gemm(torch.randn(2, 4, 8, 8))  # NCHW: the conv needs no copy
    x = channels_last(2, 4, 8, 8)  # 128 positions
    assert conv.uses_gemm(x)
    monkeypatch.setattr(pointwise, 'GEMM_MAX_POSITIONS', 127)
    assert not conv.uses_gemm(x)
    assert PointwiseConv2d(4, 6, stride=2).uses_gemm(x)  # 32 output positions
    calls = []
    monkeypatch.setattr(F, 'linear', lambda *a: calls.append(a))
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight))
    assert not calls
    assert not conv.uses_gemm(torch.randn(4, 8, 8))  # unbatched input: nn.Conv2d's own path
    assert conv(torch.randn(4, 8, 8)).shape == (6, 8, 8)


def test_traced_graphs_keep_the_conv_op():
    conv = PointwiseConv2d(4, 6).eval()
    x = channels_last(1, 4, 8, 8)
    traced = torch.jit.trace(conv, x)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert 'aten::_convolution' in kinds and 'aten::linear' not in kinds
    torch.testing.assert_close(traced(x), conv(x), atol=1e-6, rtol=1e-6)


def test_builder_keeps_other_conv_types():
    assert type(build_pointwise_conv(None, 4, 8)) is PointwiseConv2d
    assert type(build_pointwise_conv(dict(type='Conv2d'), 4, 8)) is PointwiseConv2d
    strided = build_pointwise_conv(None, 4, 8, stride=2)
    assert type(strided) is PointwiseConv2d and strided.stride == (2, 2)
    ws = build_pointwise_conv(dict(type='ConvWS'), 4, 8)
    assert isinstance(ws, ConvWS2d) and not isinstance(ws, PointwiseConv2d)
    # Same parameters and state-dict keys as the conv it replaces: checkpoints load unchanged.
    plain = nn.Conv2d(4, 8, 1, bias=True)
    ours = build_pointwise_conv(None, 4, 8, bias=True)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(ours.parameters(), plain.parameters()))


NETS = {
    'resnest': lambda **kw: ResNeSt(depth=50, base_channels=8, base_width=4, groups=2, **kw),
    'resnest_r1': lambda **kw: ResNeSt(depth=14, base_channels=8, base_width=8, radix=1, **kw),
    'resnext': lambda **kw: ResNeXt(depth=50, base_channels=8, groups=4, base_width=2, **kw),
    'res2net': lambda **kw: Res2Net(depth=50, base_channels=8, base_width=4, scales=4, **kw),
    'resnet_v1d': lambda **kw: ResNet(depth=50, base_channels=8, deep_stem=True, avg_down=True,
                                      **kw),
}


@pytest.mark.parametrize('cpu', ['avx2', 'avx512'])
@pytest.mark.parametrize('name', sorted(NETS))
def test_backbone_training_step_is_the_plain_nchw_network(name, cpu, monkeypatch):
    """Every fast path at once (channels-last, matrix products, in-place adds, outputs kept once,
    shape-only pools, and the spatial convs' ways for either kind of CPU) against the same network
    run in NCHW with plain ops, in training mode: outputs, their layout and every parameter
    gradient. In float64, so that only a real difference, not batch norm amplifying float32
    rounding, can fail it."""
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: cpu == 'avx2')
    # Scaled to these narrow networks: some convs take the matrix-product weight gradient, in
    # bands of rows.
    monkeypatch.setattr(spatial, 'GEMM_MIN_GROUP_WEIGHTS', 128)
    monkeypatch.setattr(spatial, 'GEMM_BLOCK_VALUES', 2000)
    torch.manual_seed(0)
    fast = NETS[name](norm_eval=False).train().double()
    plain = NETS[name](norm_eval=False, channels_last=False).train().double()
    plain.load_state_dict(fast.state_dict())
    assert any(isinstance(m, PointwiseConv2d) for m in fast.modules())
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)

    def step(model):
        outs = model(x)
        sum((o * torch.linspace(0, 1, o.shape[1], dtype=o.dtype).view(1, -1, 1, 1)).mean()
            for o in outs
            ).backward()
        return outs, {n: p.grad for n, p in model.named_parameters()}

    linear = F.linear
    used = []
    monkeypatch.setattr(F, 'linear', lambda *a: used.append(1) or linear(*a))
    paths = []
    for m in fast.modules():
        if isinstance(m, SpatialConv2d):
            m.register_forward_pre_hook(lambda m, a: paths.append(m.path(a[0])))
    outs, grads = step(fast)
    assert used  # the matrix-product path ran
    # The spatial convs ran two ways: the CPU's other way and channels-last.
    assert set(paths) == {'gemm' if cpu == 'avx2' else 'nchw', 'channels_last'}
    assert all(o.is_contiguous() for o in outs)
    used.clear()
    monkeypatch.setattr(pointwise, 'GEMM_MAX_POSITIONS', 0)
    monkeypatch.setattr(type(fast.layer1[0]), '_add_in_place', lambda self: False)
    monkeypatch.setattr(ShapeOnlyAvgPool2d, 'forward', nn.AvgPool2d.forward)
    monkeypatch.setattr(split_attention._WeightedSplitSum, 'apply',
                        split_attention._weighted_split_sum)
    ref_outs, ref_grads = step(plain)
    assert not used
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], msg=n)


def native_half_precision(monkeypatch, native: bool) -> None:
    """Make this CPU count as computing half precision natively (AMX, AVX-512 BF16) or not."""
    monkeypatch.setattr(layout, '_native_half_precision',
                        lambda: {torch.bfloat16: native, torch.float16: native})


@pytest.mark.parametrize('native', [True, False], ids=['native', 'emulated'])
@pytest.mark.parametrize('name', sorted(NETS))
def test_backbone_training_step_under_bfloat16_autocast(monkeypatch, name, native):
    """The custom backward passes run under the forward's autocast state, so a bfloat16 autocast
    training step works and leaves float32 gradients, whether or not the CPU has bfloat16
    kernels (without, the plain channels-last convs run)."""
    native_half_precision(monkeypatch, native)
    model = NETS[name](norm_eval=False).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.rand(2, 3, 64, 48))
    assert all(o.dtype == torch.bfloat16 for o in outs)
    sum(o.float().mean() for o in outs).backward()
    for n, p in model.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n


def test_emulated_half_precision_takes_the_plain_channels_last_convs(monkeypatch):
    """Where the CPU lacks a half-precision type (autocast's, or the input's), 1x1 convs are not
    matrix products and spatial convs compute channels-last: PyTorch's generic kernels for that
    type ran far slower as products and in NCHW. float64 inputs, which autocast leaves alone,
    keep their ways."""
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: True)
    monkeypatch.setattr(spatial, 'LARGE_MAP_POSITIONS', 40)
    pointwise_conv = PointwiseConv2d(16, 8)
    wide = SpatialConv2d(16, 128, 3, padding=1)  # wide: the matrix-product weight gradient
    heavy = SpatialConv2d(16, 64, 3, padding=1, groups=2).double()  # heavy for a 2x2 map: NCHW
    x = channels_last(2, 16, 7, 6).requires_grad_()
    tiny = channels_last(1, 16, 2, 2).double().requires_grad_()
    for native in (True, False):
        native_half_precision(monkeypatch, native)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert pointwise_conv.uses_gemm(x) is native
            # Under autocast, no matrix products; a large map would compute in NCHW.
            assert wide.path(x) == ('nchw' if native else 'channels_last')
            assert heavy.path(tiny) == 'nchw'  # float64: not autocast's
        half = x.detach().bfloat16().requires_grad_()
        assert pointwise_conv.bfloat16().uses_gemm(half) is native
        assert wide.bfloat16().path(half) == ('gemm' if native else 'channels_last')
        assert pointwise_conv.float().uses_gemm(x) and wide.float().path(x) == 'gemm'


def test_strided_product_under_bfloat16_autocast_is_the_convs(monkeypatch):
    native_half_precision(monkeypatch, True)  # the product is what this test is about
    torch.manual_seed(0)
    conv = PointwiseConv2d(16, 8, stride=2)
    x = channels_last(2, 16, 7, 6).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert conv.uses_gemm(x)
        out = conv(x)
        ref = F.conv2d(x, conv.weight, stride=2)
    assert out.dtype == ref.dtype == torch.bfloat16
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, conv.weight), grad)
    want = torch.autograd.grad(ref, (x, conv.weight), grad)
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=5e-2, rtol=2e-2)


@pytest.mark.parametrize('radix,channels', [(1, 6), (2, 6), (4, 6), (2, 2)])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
def test_weighted_split_sum_backward_is_autograds(radix, channels, layout):
    """The split-attention weighted sum's own backward against autograd through the plain ops:
    same gradients, and the input's gradient is one tensor in the input's layout."""
    torch.manual_seed(0)
    x = torch.randn(2, radix * channels, 5, 7, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = torch.rand(2, radix, channels, dtype=torch.float64, requires_grad=True)
    out = split_attention._WeightedSplitSum.apply(x, weights)
    ref = split_attention._weighted_split_sum(x, weights)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    grad = torch.randn_like(out).contiguous()  # an NCHW gradient for a channels-last x too
    got = torch.autograd.grad(out, (x, weights), grad)
    want = torch.autograd.grad(ref, (x, weights), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt)
    assert torch.autograd.gradcheck(split_attention._WeightedSplitSum.apply,
                                    (x[:1, :, :3, :2].detach().requires_grad_(),
                                     weights[:1].detach().requires_grad_()))


def test_split_attention_pooling_gradient_is_not_materialised():
    """The pooling's gradient reaches the feature map as a broadcast view: the mean it replaces
    materialised an NCHW map and added it to the channels-last gradient."""
    layer = split_attention.SplitAttentionConv2d(in_channels=8, channels=8, radix=2)
    layer.conv = layer.conv.to(memory_format=torch.channels_last)
    x = channels_last(2, 8, 6, 6).requires_grad_()
    ops = []

    class Log(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    out = layer(x)
    with Log():
        out.sum().backward()
    assert 'div' not in ops and 'cat' not in ops
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_bfloat16_split_attention_rounds_only_each_splits_sum_and_the_result():
    """Under CPU bfloat16 autocast the pooling sums each split over the map (rounded once, as
    any bfloat16 sum is), then scales and adds the splits in float32 and rounds the result
    once. Scaled and added in bfloat16 it rounded twice more than the reference's pooling,
    which gave fc1's and its norm's gradients 1.4x-1.7x the reference's error."""
    torch.manual_seed(0)
    layer = split_attention.SplitAttentionConv2d(in_channels=64, channels=64, radix=2).train()
    x = channels_last(4, 64, 28, 28).requires_grad_()
    seen = {}
    layer.fc1.register_forward_pre_hook(lambda m, args: seen.update(pooled=args[0]))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
        maps = layer.relu(layer.norm0(layer.conv(x))).detach()  # the same statistics
    split_sums = maps.double().sum((2, 3), keepdim=True).to(torch.bfloat16).double()
    expected = (split_sums.view(4, 2, 64, 1, 1).sum(1) / (28 * 28)).to(torch.bfloat16)
    assert seen['pooled'].dtype == torch.bfloat16
    exact = (seen['pooled'] == expected).float().mean()
    assert exact > 0.99, exact  # scaled and added in bfloat16: 0.79 of the entries
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('device', [
    'cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason='needs a CUDA device'))])
def test_float16_split_attention_on_a_detection_size_map_is_finite(device):
    """A float16 network (model.half(), no autocast) pools by a mean: the sum over 200x304
    positions passed float16's 65504 and the softmax turned the inf into NaN."""
    torch.manual_seed(0)
    layer = split_attention.SplitAttentionConv2d(in_channels=8, channels=8, radix=2)
    layer = layer.to(device).eval()
    x = torch.rand(1, 8, 200, 304, device=device) * 4
    with torch.no_grad():
        ref = layer(x)
        out = layer.half()(x.half())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def _check_training_step(conv: SpatialConv2d, x: torch.Tensor,
                         weight_format: torch.memory_format, *,
                         input_grad_format: torch.memory_format = torch.channels_last) -> None:
    """``conv(x)`` and its gradients (input, weight and bias, if any) equal the plain NCHW
    conv's (``nn.Conv2d``'s, its padding mode included); the weight is kept in ``weight_format``,
    the output is channels-last, the input's gradient in ``input_grad_format``, and the weight's
    gradient comes in the weight's own layout (no copy). The weight is first made unsettled,
    as a fresh one, so that each call shows the layout its way computes in."""
    if layout.layouts_settled(conv.weight):
        delattr(conv.weight, layout.SETTLED)
    out = conv(x)
    weight = conv.weight
    assert weight.is_contiguous(memory_format=weight_format)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(out)
    bias = () if conv.bias is None else (conv.bias,)
    got = torch.autograd.grad(out, (x, weight, *bias), grad)
    x_ref = x.detach().contiguous().requires_grad_()
    w_ref = weight.detach().contiguous().requires_grad_()
    b_ref = tuple(b.detach().requires_grad_() for b in bias)
    ref = nn.Conv2d._conv_forward(conv, x_ref, w_ref, *b_ref or (None,))
    want = torch.autograd.grad(ref, (x_ref, w_ref, *b_ref), grad)
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert got[0].is_contiguous(memory_format=input_grad_format)
    assert got[1].stride() == weight.stride()


def test_spatial_conv_computes_weight_heavy_training_convs_in_nchw():
    torch.manual_seed(0)
    conv = SpatialConv2d(16, 24, 3, padding=1, groups=2).double()
    weight = conv.weight
    small = channels_last(2, 16, 3, 3).double().requires_grad_()  # 72 weights, 18 positions
    large = channels_last(2, 16, 6, 5).double().requires_grad_()  # 72 weights, 60 positions
    assert conv.path(small) == 'nchw' and conv.path(large) == 'channels_last'
    weight.requires_grad_(False)  # frozen: no weight gradient, nothing to gain
    assert conv.path(small) == 'channels_last'
    weight.requires_grad_(True)
    with torch.no_grad():
        assert conv.path(small) == 'channels_last'
    assert conv.path(small.contiguous()) == 'plain'  # an NCHW map is the plain conv's
    for x, fmt in [(small, torch.contiguous_format), (large, torch.channels_last),
                   (small, torch.contiguous_format)]:
        _check_training_step(conv, x, fmt)
        assert conv.weight is weight
    # The last training step settled the weight in NCHW (an optimiser's state takes that
    # layout): another way, training or inference, reads it as it is.
    assert layout.layouts_settled(weight)
    with torch.no_grad():
        torch.testing.assert_close(conv(large), F.conv2d(large, weight, conv.bias, padding=1,
                                                         groups=2))
    out = conv(large)
    assert weight.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()
    assert weight.grad.stride() == weight.stride()  # what an optimiser's state takes
    nchw = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(conv(nchw), F.conv2d(nchw, weight, conv.bias, padding=1, groups=2))
    traced = torch.jit.trace(conv, small)
    torch.testing.assert_close(traced(small), conv(small))


@pytest.mark.parametrize('slow', [True, False], ids=['avx2', 'avx512'])
def test_spatial_conv_ways_for_large_maps_without_avx512(monkeypatch, slow):
    """Without AVX-512, on large maps: wide convs that cannot take the matrix products compute in
    NCHW (oneDNN's channels-last weight-gradient kernel is slow there); narrow ungrouped ones take
    the products on the largest maps; narrow grouped ones stay channels-last."""
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: slow)
    monkeypatch.setattr(spatial, 'LARGE_MAP_POSITIONS', 40)
    monkeypatch.setattr(spatial, 'GEMM_NARROW_MIN_POSITIONS', 60)
    monkeypatch.setattr(spatial, 'GEMM_MIN_GROUP_WEIGHTS', 256)
    torch.manual_seed(0)
    large = channels_last(1, 16, 6, 7).double().requires_grad_()  # 42 positions
    small = channels_last(1, 16, 5, 8).double().requires_grad_()  # 40 positions
    largest = channels_last(2, 16, 6, 7).double().requires_grad_()  # 84 positions
    wide = SpatialConv2d(16, 32, 3, padding=1).double()  # 16 x 32
    reflect = SpatialConv2d(16, 32, 3, padding=1, padding_mode='reflect').double()
    narrow = SpatialConv2d(16, 8, 3, padding=1).double()  # 16 x 8
    grouped = SpatialConv2d(32, 24, 3, padding=1, groups=2).double()  # 16 x 12 per group
    thin = SpatialConv2d(8, 24, 3, padding=1).double()  # 8 input channels
    on_slow = lambda way: way if slow else 'channels_last'
    assert wide.path(large) == on_slow('gemm')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert wide.path(large) == on_slow('nchw') and wide.path(small) == 'channels_last'
    assert reflect.path(large) == on_slow('nchw') and reflect.path(small) == 'channels_last'
    assert narrow.path(largest) == on_slow('gemm') and narrow.path(large) == 'channels_last'
    grouped_in = channels_last(2, 32, 6, 7).double().requires_grad_()
    assert grouped.path(grouped_in) == 'channels_last'
    assert thin.path(channels_last(2, 8, 6, 7).double().requires_grad_()) == 'channels_last'
    with torch.no_grad():
        assert reflect.path(large) == 'channels_last'  # inference stays channels-last
    _check_training_step(reflect, large,
                         torch.contiguous_format if slow else torch.channels_last)
    for conv, x in ((narrow, largest), (grouped, grouped_in)):
        _check_training_step(conv, x, torch.channels_last)


@pytest.mark.parametrize('slow', [True, False], ids=['avx2', 'avx512'])
def test_spatial_conv_computes_weight_grad_by_gemm_without_avx512(monkeypatch, slow):
    """Without AVX-512, wide training convs take the weight's gradient as matrix products of the
    unfolded input: in whole images or bands of rows, for any stride, dilation, bias and a
    channel slice of a map (Res2Net's), equal to the plain conv's."""
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: slow)
    monkeypatch.setattr(spatial, 'GEMM_MIN_GROUP_WEIGHTS', 128)
    torch.manual_seed(0)
    conv = SpatialConv2d(16, 32, 3, padding=1, groups=2).double()  # 8 x 16 per group
    narrow = SpatialConv2d(16, 32, 3, padding=1, groups=4).double()  # 4 x 8
    x = channels_last(2, 16, 7, 9).double().requires_grad_()
    assert conv.path(x) == ('gemm' if slow else 'channels_last')
    assert narrow.path(x) == 'channels_last'
    with torch.no_grad():
        assert conv.path(x) == 'channels_last'
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert conv.path(x) != 'gemm'  # its backward would meet mixed dtypes
    conv.weight.requires_grad_(False)
    assert conv.path(x) == 'channels_last'
    if not slow:
        return
    wide = channels_last(2, 40, 7, 9).double().requires_grad_()
    convs = [
        (SpatialConv2d(16, 32, 3, padding=1, groups=2).double(), x),
        (SpatialConv2d(16, 16, 3, stride=2, padding=1, bias=True).double(), x),
        (SpatialConv2d(16, 16, 3, padding=2, dilation=2).double(), x),
        (SpatialConv2d(16, 16, (3, 1), padding=(1, 0)).double(), x),
        (SpatialConv2d(16, 16, 3, padding=1).double(), wide[:, 8:24]),  # a channel slice
    ]
    # 16 channels x 9 taps a position: both images at once, one image (7 x 9 positions) at a
    # time, bands of 3 rows (the last one short), single rows.
    for block in (10 ** 6, 63 * 144, 27 * 144, 100):
        monkeypatch.setattr(spatial, 'GEMM_BLOCK_VALUES', block)
        for conv, inp in convs:
            assert conv.path(inp) == 'gemm'
            _check_training_step(conv, inp, torch.channels_last)


@pytest.mark.parametrize('dtype,tol', [(torch.bfloat16, 4e-3), (torch.float16, 6e-4)])
def test_half_precision_weight_grad_by_gemm_adds_its_blocks_in_float32(monkeypatch, dtype, tol):
    # A half-precision model (not autocast) on a CPU with slow weight-gradient kernels takes
    # this way; its blocks' sum must be as accurate as a conv's own, not rounded per block.
    monkeypatch.setattr(spatial, 'GEMM_BLOCK_VALUES', 48 * 144 * 4)  # 16 blocks of 4 rows
    torch.manual_seed(0)
    x = torch.randn(4, 16, 48, 48, dtype=torch.float64)
    grad = torch.randn(4, 32, 48, 48, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    want = torch.nn.grad.conv2d_weight(x, (32, 16, 3, 3), grad, padding=1)
    got = spatial.weight_grad_by_gemm(x.to(dtype), grad.to(dtype), torch.Size((32, 16, 3, 3)),
                                      (1, 1), (1, 1), (1, 1), 1)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    conv = torch.nn.grad.conv2d_weight(x.to(dtype), (32, 16, 3, 3), grad.to(dtype), padding=1)
    errors = [float((g.double() - want).abs().max() / want.abs().max()) for g in (got, conv)]
    assert errors[0] < tol and errors[1] < tol, errors


@pytest.mark.parametrize('slow', [True, False], ids=['avx2', 'avx512'])
@pytest.mark.parametrize('mode', ['reflect', 'replicate', 'circular'])
def test_spatial_conv_pads_as_its_padding_mode_says(monkeypatch, slow, mode):
    """A conv with a non-zero padding mode never takes the matrix-product way (its forward pads
    with zeros): every way it does take, training or inference, is the ``nn.Conv2d``'s."""
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: slow)
    monkeypatch.setattr(spatial, 'GEMM_MIN_GROUP_WEIGHTS', 128)
    torch.manual_seed(0)
    conv = SpatialConv2d(16, 32, 3, padding=1, groups=2, padding_mode=mode).double()
    plain = nn.Conv2d(16, 32, 3, padding=1, groups=2, padding_mode=mode).double()
    plain.load_state_dict(conv.state_dict())
    small = channels_last(2, 16, 2, 3).double().requires_grad_()  # weight-heavy: NCHW
    large = channels_last(2, 16, 7, 9).double().requires_grad_()
    assert conv.path(small) == 'nchw'
    assert conv.path(large) == 'channels_last'
    zeros = SpatialConv2d(16, 32, 3, padding=1, groups=2).double()
    assert zeros.path(large) == ('gemm' if slow else 'channels_last')  # the one it would take
    _check_training_step(conv, small, torch.contiguous_format)
    # With circular padding the channels-last way's input gradient comes back in NCHW (the
    # pad's backward).
    _check_training_step(conv, large, torch.channels_last, input_grad_format=(
        torch.contiguous_format if mode == 'circular' else torch.channels_last))
    for x in (small, large):
        with torch.no_grad():
            torch.testing.assert_close(conv(x), plain(x.contiguous()))


def test_spatial_conv_builder_keeps_other_conv_types():
    assert type(build_spatial_conv(None, 4, 8, 3, padding=1)) is SpatialConv2d
    ws = build_spatial_conv(dict(type='ConvWS'), 4, 8, 3, padding=1)
    assert isinstance(ws, ConvWS2d) and not isinstance(ws, SpatialConv2d)
    plain = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1, groups=2, bias=False)
    ours = build_spatial_conv(None, 4, 8, 3, stride=2, padding=1, groups=2, bias=False)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert repr(ours).replace('SpatialConv2d', 'Conv2d') == repr(plain)


def test_shortcut_add_is_out_of_place_after_a_conv3_plugin():
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                    stages=(True, False, False, False), position='after_conv3')]
    model = ResNet(depth=50, base_channels=8, plugins=plugins)
    assert not model.layer1[0]._add_in_place()
    assert model.layer2[0]._add_in_place()
    gn = ResNet(depth=50, base_channels=8, norm_cfg=dict(type='GN', num_groups=4))
    assert gn.layer1[0]._add_in_place()


def saved_tensor_count(fn, x):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(x)
    return out, [t for t in saved if t.numel() > 1]


@pytest.mark.parametrize('kwargs', [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=2, stride=2, ceil_mode=True,
                                         count_include_pad=False),
                                    dict(kernel_size=3, stride=1, padding=1)])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
def test_shape_only_pool_matches_avg_pool_and_keeps_no_input(kwargs, layout):
    x = torch.randn(2, 6, 9, 7)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    pool, ref_pool = ShapeOnlyAvgPool2d(**kwargs), nn.AvgPool2d(**kwargs)
    out, saved = saved_tensor_count(pool, x)
    assert not saved
    ref, ref_saved = saved_tensor_count(ref_pool, x)
    assert len(ref_saved) == 1  # the plain op keeps the whole input
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, x, grad)[0]
    want = torch.autograd.grad(ref, x, grad)[0]
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout != 'nchw')
    traced = torch.jit.trace(pool, x)  # x requires grad: only graph capture picks the plain op
    assert 'aten::avg_pool2d' in {n.kind() for n in traced.inlined_graph.nodes()}


@pytest.mark.parametrize('stride', [1, 2])
def test_saved_as_nchw_keeps_only_the_nchw_tensor(stride):
    torch.manual_seed(0)
    nchw = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    conv = PointwiseConv2d(4, 3, stride=stride).double()
    x_cl = nchw.contiguous(memory_format=torch.channels_last)
    assert conv.uses_gemm(x_cl)  # the matrix product saves x_cl or a view of it
    with SavedAsNCHW(x_cl, nchw).saving():
        out = conv(x_cl) * 2
    copy_alive = weakref.ref(x_cl)
    del x_cl
    assert copy_alive() is None  # autograd did not keep the channels-last copy
    grad = torch.randn_like(out)
    full_size_copies = []

    class Log(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ('clone', 'copy_', '_to_copy') and \
                    args[0].shape == nchw.shape:
                full_size_copies.append(func)
            return func(*args, **(kwargs or {}))

    with Log():
        got = torch.autograd.grad(out, (nchw, conv.weight), grad)
    # The strided product reads the NCHW map as it is; the plain one gets a channels-last copy.
    assert len(full_size_copies) == (stride == 1)
    x_ref = nchw.detach().requires_grad_()
    ref = F.conv2d(x_ref, conv.weight, stride=stride) * 2
    want = torch.autograd.grad(ref, (x_ref, conv.weight), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_to_nchw_returns_nchw_and_sends_gradients_back_channels_last():
    x = channels_last(2, 3, 4, 5).requires_grad_()
    y = to_nchw(x)
    assert y.is_contiguous() and torch.equal(y, x)
    grad, = torch.autograd.grad(y, x, torch.randn(2, 3, 4, 5))
    assert grad.is_contiguous(memory_format=torch.channels_last)
    nchw = torch.randn(2, 3, 4, 5)
    assert to_nchw(nchw) is nchw


@pytest.mark.parametrize('shape', [(2, 4, 5, 3), (1, 4, 1, 9), (3, 3, 4, 4), (2, 16, 1, 1)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.int64])
def test_blocked_nchw_copy_is_the_plain_copy(shape, dtype, monkeypatch):
    # A block of 8 elements is 2 positions of 4 channels: several blocks and a short last one.
    monkeypatch.setattr(layout, 'NCHW_COPY_BLOCK', 8)
    x = (torch.randn(shape) * 100).to(dtype).contiguous(memory_format=torch.channels_last)
    y = nchw_copy(x)
    assert y.is_contiguous() and y.dtype == dtype and torch.equal(y, x)
    if x.is_contiguous():  # 1x1 maps are both layouts at once
        assert y is x
    else:
        assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    nchw = torch.randn(shape)
    assert nchw_copy(nchw) is nchw
    strided = torch.randn(shape[0], shape[1] * 2, *shape[2:])[:, ::2]  # neither layout
    assert torch.equal(nchw_copy(strided), strided) and nchw_copy(strided).is_contiguous()


def test_stage_outputs_take_the_blocked_copy(monkeypatch):
    # The blocked copy is what turns channels-last stage outputs into NCHW, in both modes.
    calls = []
    monkeypatch.setattr(layout, 'NCHW_COPY_BLOCK', 64)
    real = layout.nchw_copy

    def counted(x):
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(layout, 'nchw_copy', counted)
    model = ResNeSt(depth=14, stem_channels=8, base_channels=4, out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 3, 64, 64)  # no 1x1 output: those are NCHW already
    for training in (False, True):
        calls.clear()
        model.train(training)
        with torch.set_grad_enabled(training):
            outs = model(x)
        # (Training also converts the inputs of the convs that spatial.py runs in NCHW.)
        shapes = [tuple(o.shape) for o in outs]
        assert calls == shapes if not training else set(shapes) <= set(calls)
        assert all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('name', sorted(NETS))
def test_training_forward_without_backward_frees_everything(name):
    """A training-mode forward whose graph is dropped unused (a skipped batch, an evaluation in
    train mode) frees its outputs and everything autograd saved: the saved-tensor hooks must not
    close a reference cycle through the graph (it leaked a whole step's activations per call)."""
    model = NETS[name](norm_eval=False).train()
    alive = []

    def keep_weakref(module, args, out):
        if isinstance(out, torch.Tensor):
            alive.append((type(module).__name__, weakref.ref(out)))

    for m in model.modules():
        m.register_forward_hook(keep_weakref)
    x = torch.rand(2, 3, 64, 48)  # NCHW input: the outputs are converted back, saves redirected
    outs = model(x)
    assert all(o.requires_grad for o in outs) and len(alive) > 50
    del outs
    # No gc.collect(): reference counting alone must free the graph, as it does for plain ops.
    leaked = [name for name, r in alive if r() is not None]
    assert not leaked


def test_saved_as_nchw_takes_the_copy_later_and_rebuilds_each_use():
    """The NCHW copy may be given after the saves; each backward use gets the channels-last map
    back (twice with retain_graph), and the channels-last map itself is not kept."""
    torch.manual_seed(0)
    base = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    x_cl = base.contiguous(memory_format=torch.channels_last) * 1  # a whole channels-last map
    conv = PointwiseConv2d(4, 3).double()
    carry = SavedAsNCHW(x_cl)
    with carry.saving():
        out = conv(x_cl).sigmoid()
    carry.set_nchw(to_nchw(x_cl))
    copy_alive = weakref.ref(x_cl)
    del x_cl
    assert copy_alive() is None
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (base, conv.weight), grad, retain_graph=True)
    second = torch.autograd.grad(out, (base, conv.weight), grad)
    x_ref = base.detach().requires_grad_()
    ref = F.conv2d(x_ref, conv.weight).sigmoid()
    want = torch.autograd.grad(ref, (x_ref, conv.weight), grad)
    for got in (first, second):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize('make', [
    lambda: torch.randn(2, 3, 4, 5),  # NCHW
    lambda: torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)[:1],  # part
    lambda: torch.randn(3, 4, 5),  # not 4-D
])
def test_saved_as_nchw_rejects_what_it_cannot_rebuild(make):
    t = make()
    assert not SavedAsNCHW.accepts(t)
    with pytest.raises(ValueError, match=r'channels_last must be .* got size \(' +
                       ', '.join(map(str, t.shape))):
        SavedAsNCHW(t)


@pytest.mark.parametrize('name', ['resnest', 'res2net'])
def test_stage_outputs_live_once_through_the_backward_pass(name):
    """What a stage ends with lives once until the backward pass: the returned NCHW output. The
    channels-last map the next stage reads is freed after the forward pass; autograd keeps the
    NCHW output in its place."""
    model = NETS[name](norm_eval=False).train()
    ends = {}
    for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        # The block's activation module runs inside the branch too; its last call ends it.
        stage[-1].relu.register_forward_hook(
            lambda m, a, out, i=i: ends.__setitem__(i, out.untyped_storage()))
    outs = model(torch.rand(2, 3, 64, 48))
    assert len(ends) == 4
    out_storages = {o.untyped_storage().data_ptr() for o in outs}
    for i, storage in ends.items():
        if storage.data_ptr() not in out_storages:
            # Our reference is the only one left: neither the graph nor the model holds it.
            assert torch._C._storage_Use_Count(storage._cdata) == 1, f'stage {i}'
    assert len(out_storages) == 4
    sum(o.sum() for o in outs).backward()  # the redirected saves serve the backward pass


@pytest.mark.parametrize('name', ['resnest', 'res2net'])
def test_stage_outputs_that_are_not_whole_channels_last_maps_take_the_plain_path(name,
                                                                                   monkeypatch):
    """A stage ending in a map that SavedAsNCHW cannot rebuild (a plugin's layout) converts it
    before the activation and computes the same step."""
    torch.manual_seed(0)
    model = NETS[name](norm_eval=False).train().double()
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)

    def step():
        model.zero_grad()
        outs = model(x)
        sum((o * o).mean() for o in outs).backward()
        return outs, [p.grad.clone() for p in model.parameters()]

    want_outs, want_grads = step()
    monkeypatch.setattr(SavedAsNCHW, 'accepts', staticmethod(lambda t: False))
    outs, grads = step()
    for a, b in zip(outs, want_outs):
        torch.testing.assert_close(a, b)
        assert a.is_contiguous()
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)


def test_inference_skips_the_autograd_functions_and_computes_the_same(monkeypatch):
    """Without autograd the weighted split sum and the strided product run as plain ops (an
    autograd Function call costs ~0.1 ms) and give what the training-path Functions give."""
    torch.manual_seed(0)
    layer = split_attention.SplitAttentionConv2d(in_channels=8, channels=8, radix=2).eval()
    strided = PointwiseConv2d(8, 6, stride=2)
    x = channels_last(2, 8, 10, 9)
    monkeypatch.setattr(fold, 'FOLD_MAX_RATIO', -1)  # not what this test is about
    applied = []
    for fn in (split_attention._WeightedSplitSum, pointwise._SubsampledProduct):
        original = fn.apply
        monkeypatch.setattr(fn, 'apply', lambda *a, original=original: applied.append(1)
                            or original(*a))
    with torch.enable_grad():
        want = layer(x), strided(x)
    assert len(applied) == 2 and all(t.requires_grad for t in want)
    applied.clear()
    with torch.no_grad():
        got = layer(x), strided(x)
    assert not applied
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got[1], F.conv2d(x, strided.weight, stride=2).detach())


# ------------------------------------------------------------------------------------------------
# What users do around a backbone: DDP, swapped activations, backward hooks, edited outputs,
# parametrized weights. The fast paths must give what the plain network gives, or fail as it does.
def _grads(model: nn.Module, steps) -> list[dict]:
    out = []
    for x in steps:
        model.zero_grad(set_to_none=True)
        sum(o.square().mean() for o in model(x)).backward()
        out.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return out


def _assert_same_grads(got: list[dict], want: list[dict]) -> None:
    for step, (g, w) in enumerate(zip(got, want)):
        worst = max(float((g[n] - w[n]).abs().max() / w[n].abs().max().clamp_min(1e-12))
                    for n in w)
        assert worst < 1e-9, f'step {step}: relative gradient error {worst:.3g}'


@pytest.mark.parametrize('cls,kwargs', [(ResNet, dict(depth=18)),
                                        (ResNeXt, dict(depth=50, groups=4, base_width=2))])
def test_ddp_gradients_equal_the_plain_networks(tmp_path, cls, kwargs):
    # Multi-scale steps: the convs' ways (and their weights' layouts) would change between them.
    torch.manual_seed(0)
    steps = [torch.rand(2, 3, s, s, dtype=torch.float64) for s in (64, 32, 96)]
    plain = cls(base_channels=8, channels_last=False, **kwargs).double().train()
    fast = cls(base_channels=8, **kwargs).double().train()
    fast.load_state_dict(plain.state_dict())
    _assert_same_grads(_grads_under_ddp(tmp_path, fast, steps), _grads(plain, steps))


def _grads_under_ddp(tmp_path, model, steps) -> list[dict]:
    """:func:`_grads` of ``model`` wrapped in DDP in a one-process gloo group, by its own
    parameter names."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group('gloo', store=dist.FileStore(str(tmp_path / 'store'), 1), rank=0,
                            world_size=1)
    try:
        return [{k.replace('module.', '', 1): v for k, v in g.items()}
                for g in _grads(DistributedDataParallel(model), steps)]
    finally:
        dist.destroy_process_group()


def _spatial_weights(model: nn.Module) -> dict:
    return {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)}


@pytest.mark.parametrize('cls,kwargs', [(ResNeSt, dict(depth=14, stem_channels=16)),
                                        (ResNeXt, dict(depth=50, groups=4, base_width=2))])
def test_channels_last_true_builds_the_weights_channels_last_for_ddp(tmp_path, cls, kwargs):
    # Under torch.distributed a weight keeps the layout it has when DDP wraps the model, so a
    # forward pass is too late to lay it out: with channels_last=True it is built so.
    torch.manual_seed(0)
    steps = [torch.rand(2, 3, s, s, dtype=torch.float64) for s in (64, 32)]
    plain = cls(base_channels=8, channels_last=False, **kwargs).double().train()
    fast = cls(base_channels=8, channels_last=True, **kwargs).double().train()
    fast.load_state_dict(plain.state_dict())
    weights = _spatial_weights(fast)
    not_cl = [n for n, p in weights.items()
              if not p.is_contiguous(memory_format=torch.channels_last)]
    assert weights and not not_cl, not_cl
    _assert_same_grads(_grads_under_ddp(tmp_path, fast, steps), _grads(plain, steps))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights.values())


def test_a_norm_that_reads_nchw_memory_gets_nchw_maps():
    # mmcv's SyncBatchNorm ('MMSyncBN') indexes its input's memory as NCHW, as this one does;
    # PyTorch's norms follow the strides. A norm of another kind keeps the stages NCHW.
    from mmengine.registry import MODELS

    class NCHWMemoryNorm(nn.Module):  # not a _BatchNorm
        def __init__(self, num_features, **kwargs):
            super().__init__()
            self.norm = nn.BatchNorm2d(num_features, **kwargs)

        def forward(self, x):
            assert x.is_contiguous(), 'channels-last map given to an NCHW-memory norm'
            return self.norm(x)

    MODELS.register_module('_TestNCHWMemoryNorm', module=NCHWMemoryNorm, force=True)
    cfg = dict(type='_TestNCHWMemoryNorm')
    model = ResNeSt(depth=14, base_channels=8, stem_channels=16, norm_cfg=cfg).train()
    sum(o.sum() for o in model(torch.rand(2, 3, 32, 32))).backward()
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match=r"channels_last=True is not valid; .* norms other than "
                       r"PyTorch's \(e\.g\. mmcv's 'MMSyncBN'\) need NCHW input"):
        ResNet(depth=18, norm_cfg=cfg, channels_last=True)


@pytest.mark.parametrize('act', [nn.SiLU, nn.GELU])
def test_swapped_activations_get_the_plain_gradients(act):
    def swap(model):
        for module in model.modules():
            for name, child in module.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(module, name, act())
        return model.double().train()
    plain = swap(ResNet(depth=50, base_channels=8, channels_last=False))
    fast = swap(ResNet(depth=50, base_channels=8))
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    _assert_same_grads(_grads(fast, [x]), _grads(plain, [x]))


@pytest.mark.parametrize('channels_last', [None, False])
def test_full_backward_hooks_fire_on_every_module(channels_last):
    model = ResNeSt(depth=14, base_channels=8, stem_channels=16, channels_last=channels_last)
    model.train()
    fired = []
    names = ['stem', 'layer2', 'layer2.0', 'layer2.0.downsample', 'layer4']
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_full_backward_hook(
            lambda m, gi, go, name=name: fired.append(name))
    sum(o.sum() for o in model(torch.rand(2, 3, 64, 64))).backward()
    assert sorted(fired) == sorted(names)


def test_a_returned_output_changed_in_place_fails_the_backward_pass():
    # As autograd does for a saved tensor changed in place: the gradients would be wrong.
    model = ResNet(depth=50, base_channels=8).train()
    outs = model(torch.rand(2, 3, 64, 64))
    outs[1].mul_(-1)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        sum(o.sum() for o in outs).backward()


def test_a_parametrized_conv_weight_is_computed_once_per_call():
    from torch.nn.utils import parametrize as P

    class Counted(nn.Module):
        calls = 0

        def forward(self, w):
            Counted.calls += 1
            return w

    model = ResNet(depth=50, base_channels=8).train()
    P.register_parametrization(model.layer4[0].conv2, 'weight', Counted())
    Counted.calls = 0  # registering computes it once
    model(torch.rand(2, 3, 64, 64))
    assert Counted.calls == 1


@pytest.mark.parametrize('cls, kwargs', [(torch.optim.SGD, dict(lr=1e-3, momentum=0.9)),
                                         (torch.optim.AdamW, dict(lr=1e-3))], ids=['sgd', 'adamw'])
def test_fused_optimizers_through_multi_scale_training_and_validation(cls, kwargs):
    """Fused optimisers walk parameter, gradient and state by raw offset: a weight re-laid out
    after the first step (another input size, a validation pass) had its update applied to the
    wrong elements. Weights keep the layout of the first training pass."""
    def build(**kw):
        torch.manual_seed(0)
        return ResNeXt(depth=50, groups=4, base_width=4, base_channels=16, norm_eval=False,
                       **kw).double().train()

    def run(model, opt):
        conv = model.layer3[0].conv2
        layouts = []
        for i, size in enumerate((64, 192, 64)):
            x = torch.rand(2, 3, size, size, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            sum(o.square().mean() for o in model(x)).backward()
            opt.step()
            layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
            if i == 0:  # a validation pass between epochs
                model.eval()
                with torch.no_grad():
                    model(x)
                model.train()
        return layouts

    ref = build(channels_last=False)
    ours = build()
    ours.load_state_dict(ref.state_dict())
    run(ref, cls(ref.parameters(), **kwargs))
    layouts = run(ours, cls(ours.parameters(), fused=True, **kwargs))
    assert len(set(layouts)) == 1  # settled after the first training pass
    for (name, got), want in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9, msg=name)


def _multi_scale_steps(model, opt, sizes, *, seed=0, batch=2):
    """Training steps through ``sizes``; the layout of one of layer4's 3x3 weights after each."""
    conv = model.layer4[-1].conv2
    layouts = []
    for i, size in enumerate(sizes):
        x = torch.rand(batch, 3, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed + i))
        opt.zero_grad()
        sum(o.square().mean() + o.mean() for o in model(x)).backward()
        opt.step()
        layouts.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
    return layouts


def _assert_same_parameters(ours, ref):
    # Batch norm over layer4's 1x1 maps amplifies float64 rounding to about 1e-6 here; the
    # wrong updates these tests guard against were off by 0.2 and more.
    for (name, got), want in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=name)


def _resnet_pair(**kw):
    """Our channels-last ResNet-50 at toy width and the same network in NCHW, same weights."""
    torch.manual_seed(0)
    ref = ResNet(depth=50, base_channels=16, norm_eval=False, channels_last=False,
                 **kw).double().train()
    ours = ResNet(depth=50, base_channels=16, norm_eval=False, **kw).double().train()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_fused_optimizer_training_in_eval_mode_keeps_the_first_layout():
    """Weights trained with the backbone in eval mode (frozen norm statistics, a hand-written
    loop): the first pass that records a weight's gradient settles its layout. Only train mode
    did before, and fused AdamW then updated every parameter wrongly (relative error 0.84)."""
    ours, ref = _resnet_pair()
    ours.eval(), ref.eval()
    sizes = (32, 128, 32, 128)  # layer4's 3x3 conv is weight-heavy at 32, not at 128
    _multi_scale_steps(ref, torch.optim.AdamW(ref.parameters(), lr=1e-3), sizes)
    layouts = _multi_scale_steps(ours, torch.optim.AdamW(ours.parameters(), lr=1e-3,
                                                         fused=True), sizes)
    assert len(set(layouts)) == 1
    _assert_same_parameters(ours, ref)


def test_parameters_put_in_after_training_began_settle_themselves():
    """``load_state_dict(assign=True)`` after the first training pass brings new Parameter
    objects (here layer4's convs): each settles at its own first recorded gradient. Settling
    was read from the backbone's first parameter only, so these were re-laid out per input
    size under fused SGD (relative error 0.38)."""
    ours, ref = _resnet_pair()
    sizes = (32, 64, 32, 64)
    for model in (ours, ref):
        x = torch.rand(8, 3, 64, 64, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(9))
        sum(o.square().mean() for o in model(x)).backward()
        model.zero_grad(set_to_none=True)
        fresh = {k: v.contiguous().clone() for k, v in model.state_dict().items()
                 if k.startswith('layer4.') and 'conv' in k}
        model.load_state_dict(fresh, strict=False, assign=True)
    _multi_scale_steps(ref, torch.optim.SGD(ref.parameters(), lr=0.02, momentum=0.9),
                       sizes, batch=8)
    layouts = _multi_scale_steps(
        ours, torch.optim.SGD(ours.parameters(), lr=0.02, momentum=0.9, fused=True), sizes,
        batch=8)
    assert len(set(layouts)) == 1
    _assert_same_parameters(ours, ref)


_SGD, _ADAMW = (torch.optim.SGD, dict(lr=0.02, momentum=0.9)), (torch.optim.AdamW, dict(lr=1e-3))


@pytest.mark.parametrize('cls, kwargs, way', [
    (*_SGD, dict(fused=True)), (*_ADAMW, dict(fused=True)), (*_ADAMW, dict(foreach=True)),
    (*_SGD, dict(foreach=False))], ids=['sgd-fused', 'adamw-fused', 'adamw-foreach', 'sgd-loop'])
def test_optimizer_state_resumed_in_another_layout_follows_the_weights(cls, kwargs, way,
                                                                      monkeypatch):
    """A state restored by ``load_state_dict`` keeps the layout it was saved with. Resumed
    where the weights settle in another layout (another first input size here; likewise a
    run saved outside torch.distributed and resumed under it), the fused step walked the
    state by raw offset into the wrong elements, and the for-loop and foreach steps, right
    but on mixed strides, ran slower for the rest of the run (a ResNeSt-50 SGD step 1.6x the
    time with its 3x3 weights' states mismatched). Before each step the state now takes
    its weight's layout."""
    import copy
    # The ways that lay layer4's 3x3 weights out differently at the two sizes (AVX-512 CPUs
    # take others, which may not differ between them).
    monkeypatch.setattr(spatial, 'slow_channels_last_weight_grad', lambda: True)
    ours, ref = _resnet_pair()
    ref_opt = cls(ref.parameters(), **kwargs)
    opt = cls(ours.parameters(), **way, **kwargs)
    _multi_scale_steps(ref, ref_opt, (128,), batch=8)
    assert _multi_scale_steps(ours, opt, (128,), batch=8) == [True]
    saved_model, saved_opt = copy.deepcopy(ours.state_dict()), copy.deepcopy(opt.state_dict())
    # The resumed run starts at another size, where layer4's 3x3 weights settle in NCHW.
    resumed, _ = _resnet_pair()
    resumed.load_state_dict(saved_model)
    resumed_opt = cls(resumed.parameters(), **way, **kwargs)
    resumed_opt.load_state_dict(saved_opt)
    assert _multi_scale_steps(resumed, resumed_opt, (32, 128), seed=1, batch=8) == [False] * 2
    _multi_scale_steps(ref, ref_opt, (32, 128), seed=1, batch=8)
    _assert_same_parameters(resumed, ref)
    mismatched = [(tuple(p.shape), key) for p in resumed.parameters()
                  for key, value in resumed_opt.state[p].items()
                  if value.shape == p.shape and value.stride() != p.stride()]
    assert mismatched == []


def test_state_dict_views_such_as_an_ema_keep_reading_the_weights():
    """mmengine's ``ExponentialMovingAverage(update_buffers=True)`` (and MMDetection's
    ``ExpMomentumEMA``) keep ``state_dict()`` views of the averaged copy and update them in
    place. A weight viewed that way keeps its memory: once the copy had been evaluated, its
    3x3 weights were moved to new memory and stopped following the average."""
    from mmengine.model import ExponentialMovingAverage
    torch.manual_seed(0)
    model = ResNeSt(depth=14, base_channels=16, stem_channels=16).train()
    ema = ExponentialMovingAverage(model, momentum=0.5, update_buffers=True)
    ema.update_parameters(model)
    ema.module.eval()
    with torch.no_grad():
        ema.module(torch.rand(1, 3, 64, 64))  # evaluating the copy
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    ema.update_parameters(model)
    after = ema.module.state_dict()
    stuck = [k for k, _ in ema.module.named_parameters() if torch.equal(before[k], after[k])]
    assert not stuck
    # The copy computes with the averaged weights: as the same network in NCHW with them.
    ref = ResNeSt(depth=14, base_channels=16, stem_channels=16, channels_last=False).eval()
    ref.load_state_dict(after)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(ema.module(x), ref(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_narrow_strided_pointwise_conv_avoids_onednns_crashing_backward():
    """oneDNN's backward of a strided 1x1 conv on a channels-last float32 map with 3-6 input
    channels corrupts the heap (PyTorch 2.13 CPU): such convs take the matrix product at any
    size, and the training step of a toy-width network finishes (in a process of its own, as a
    crash would take the test runner with it)."""
    conv = PointwiseConv2d(4, 8, stride=2)
    big = torch.rand(2, 4, 256, 256).contiguous(memory_format=torch.channels_last)
    assert big.shape[0] * 128 * 128 > pointwise.GEMM_MAX_POSITIONS and conv.uses_gemm(big)
    assert not PointwiseConv2d(8, 8, stride=2).uses_gemm(
        torch.rand(2, 8, 256, 256).contiguous(memory_format=torch.channels_last))
    import subprocess
    import sys
    code = ('import torch; torch.set_num_threads(1)\n'
            'from resnest_mm.models import ResNet\n'
            'm = ResNet(depth=18, base_channels=4).train()\n'
            'sum(o.mean() for o in m(torch.rand(2, 3, 640, 640))).backward()\n'
            'print("backward done")\n')
    import os
    import resnest_mm
    # The package under test, whatever the environment's install points at.
    root = os.path.dirname(os.path.dirname(os.path.abspath(resnest_mm.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        root, os.environ.get('PYTHONPATH')])))
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0 and 'backward done' in done.stdout, done.stderr[-2000:]


def test_copies_of_a_trained_backbone_settle_their_own_weights():
    """A deepcopy has new parameters: its first training pass settles them again."""
    import copy
    model = ResNet(depth=18, base_channels=8).train()
    model(torch.rand(1, 3, 32, 32))[0].sum().backward()
    assert all(layout.layouts_settled(p) for p in model.parameters())
    twin = copy.deepcopy(model)
    assert not any(layout.layouts_settled(p) for p in twin.parameters())
    twin(torch.rand(1, 3, 32, 32))[0].sum().backward()
    assert all(layout.layouts_settled(p) for p in twin.parameters())


@pytest.mark.parametrize('upcast', [False, True])
def test_radix_one_attention_weights_follow_the_softmaxs_precision(monkeypatch, upcast):
    # CUDA autocast runs radix >= 2's softmax in float32 but leaves radix 1's sigmoid in
    # float16; where the softmax would be float32 (_softmax_upcast: CUDA autocast), radix 1's
    # weights are float32 too. The logic, on CPU with float16 autocast and the condition set.
    monkeypatch.setattr(split_attention, '_softmax_upcast', lambda t: upcast)
    torch.manual_seed(0)
    layer = split_attention.SplitAttentionConv2d(in_channels=16, channels=16, radix=1).train()
    seen = {}
    attention = layer.attention
    layer.attention = lambda pooled: seen.setdefault('weights', attention(pooled))
    x = torch.rand(2, 16, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.float16):
        out = layer(x)
    want = torch.float32 if upcast else torch.float16
    assert seen['weights'].dtype == want
    out.float().sum().backward()
    assert layer.fc2.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.fc2.weight.grad).all()


def test_optimizer_state_hook_leaves_other_optimizers_and_devices_alone():
    """The hook re-lays out the state of PyTorch's own optimisers only: another may keep its
    state as views into one buffer, which a copy would cut off; and a state on another device
    than its parameter (offloaded) stays there."""
    w = nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))

    class FlatMomentum(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})
            self.flat = torch.zeros(w.numel())

        @torch.no_grad()
        def step(self, closure=None):
            for p in self.param_groups[0]['params']:
                self.state[p].setdefault('buf', self.flat.view(p.shape))  # NCHW view
                self.flat.add_(p.grad.flatten())

    opt = FlatMomentum([w])
    for _ in range(2):
        w.grad = torch.ones_like(w)
        opt.step()
    assert opt.state[w]['buf'].data_ptr() == opt.flat.data_ptr()
    assert float(opt.state[w]['buf'].sum()) == 2 * w.numel()
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sgd.state[w]['momentum_buffer'] = torch.zeros(w.shape, device='meta')
    layout.state_layouts_follow_parameters(sgd)
    assert sgd.state[w]['momentum_buffer'].device.type == 'meta'

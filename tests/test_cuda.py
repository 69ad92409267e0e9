"""The backbones on a CUDA device: same numbers as the reference implementations there, and sound
float16 autocast in channels-last. Skipped where PyTorch sees no CUDA device (CI has none); run it
on a GPU machine with ``pytest tests/test_cuda.py``. (A float16 network on a detection-size map
is tested on both devices in test_fast_paths.py.)

fp32 comparisons turn TF32 off: with it, cuDNN rounds conv inputs to 10 bits of mantissa and two
implementations that pick different algorithms differ by about 1e-3.
"""
import pytest
import torch

from resnest_mm.benchmark import build_implementations, resolve_spec
from resnest_mm.models.layers.split_attention import SplitAttentionConv2d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

#: Variant and overrides. Res2Net with the built-ins' first stage (no extra pool), so that
#: MMDetection's Res2Net is the same network.
NETWORKS = {
    'resnest50': {},
    'resnext50_32x4d': {},
    'res2net50': dict(pool_first_stage=False),
    'resnet50': {},
}
TOL = 1e-4


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def implementations(name):
    impls, _ = build_implementations(resolve_spec(name, **NETWORKS[name]), ['mmdet', 'official'])
    assert [i.source for i in impls][:2] == ['ours', 'mmdet']
    for impl in impls:
        impl.model.cuda()
    return impls


def relative_diff(outs, refs) -> float:
    scale = max(float(r.detach().abs().max()) for r in refs)
    assert scale > 1e-2, 'outputs collapsed: the comparison would not mean anything'
    return max(float((o.float() - r.float()).abs().max()) for o, r in zip(outs, refs)) / scale


def training_step(model, x):
    outs = model(x)
    # Weighs every channel differently, so that a permuted channel would show.
    loss = sum((o.float() * torch.linspace(0, 1, o.shape[1], device=o.device).view(1, -1, 1, 1)
                ).mean() for o in outs)
    loss.backward()
    return outs, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_inference_equals_the_references_on_cuda(name):
    x = torch.randn(2, 3, 64, 96, device='cuda')
    impls = implementations(name)
    outs = {}
    for impl in impls:
        impl.model.eval()
        with torch.no_grad():
            outs[impl.source] = impl.forward(impl.model, x)
    assert all(o.is_cuda and o.is_contiguous() for o in outs['ours'])
    for source, refs in outs.items():
        if source != 'ours':
            assert relative_diff(outs['ours'], refs) < TOL, source


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_training_step_equals_mmdetection_on_cuda(name):
    """Outputs, every parameter gradient and the updated BN statistics. In float64: batch norm
    over the last stage's few positions amplifies float32 rounding past any useful tolerance."""
    x = torch.randn(2, 3, 64, 96, device='cuda', dtype=torch.float64)
    ours, mmdet = implementations(name)[:2]
    for impl in (ours, mmdet):
        impl.model.double().train()
    outs, grads = training_step(ours.model, x)
    ref_outs, ref_grads = training_step(mmdet.model, x)
    assert relative_diff(outs, ref_outs) < 1e-9
    assert grads.keys() == ref_grads.keys()
    assert max(float(g.abs().max()) for g in ref_grads.values()) > 1e-6
    for n, g in grads.items():
        # atol for the attention's fc1 bias: a training-mode norm follows it, so its true
        # gradient is zero and both compute rounding noise (~1e-17).
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-9, atol=1e-13, msg=n)
    ref_buffers = dict(mmdet.model.named_buffers())
    for n, b in ours.model.named_buffers():
        if b.is_floating_point():
            torch.testing.assert_close(b, ref_buffers[n], msg=n)


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_float16_autocast_channels_last_is_as_close_as_mmdetections(name):
    """Under float16 autocast (which our backbones run in channels-last on CUDA), ours is as close
    to the float32 network as MMDetection's is, in inference and in a training step."""
    x = torch.randn(2, 3, 64, 96, device='cuda')
    ours, mmdet = implementations(name)[:2]
    errors, halves = {}, {}
    for impl in (ours, mmdet):
        impl.model.eval()
        with torch.no_grad():
            ref = impl.forward(impl.model, x)
            with torch.autocast('cuda', dtype=torch.float16):
                half = halves[impl.source] = impl.forward(impl.model, x)
        assert all(torch.isfinite(o).all() for o in half)
        errors[impl.source] = relative_diff(half, ref)
    assert all(o.is_contiguous() for o in halves['ours'])  # NCHW in, NCHW out
    # cuDNN's channels-last kernels get channels-last weights: no per-call weight copies.
    spatial = [m.weight for m in ours.model.modules()
               if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial and all(w.is_contiguous(memory_format=torch.channels_last) for w in spatial)
    assert errors['ours'] < max(2 * errors['mmdet'], 2e-3), errors
    ours.model.train()
    with torch.autocast('cuda', dtype=torch.float16):
        outs, grads = training_step(ours.model, x)
    assert all(o.dtype == torch.float16 for o in outs)
    for n, g in grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), n


@pytest.mark.parametrize('radix', [1, 2])
@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
def test_split_attention_under_autocast_keeps_float32_weights_and_their_gradient(radix, layout):
    """Autocast runs the softmax across splits in float32; the weights stay float32 (as in the
    reference implementations), so the weighted sum is float32 and so is the weights' gradient,
    a sum over the whole map that a float16 tensor could not hold under loss scaling. Radix 1's
    sigmoid, which autocast leaves in float16, is given float32 logits for the same reason. In
    the backbone under autocast the layer sees channels-last maps."""
    layer = SplitAttentionConv2d(in_channels=64, channels=64, radix=radix).cuda()
    seen = {}
    attention = layer.attention
    layer.attention = lambda pooled: seen.setdefault('weights', attention(pooled))
    x = torch.rand(2, 64, 200, 304, device='cuda').contiguous(memory_format=layout)
    with torch.no_grad():
        ref = layer.eval()(x)
        seen.clear()
        with torch.autocast('cuda', dtype=torch.float16):
            out = layer(x)
    assert seen['weights'].dtype == out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    del layer.attention  # back to the method: the recorder would return its first weights
    layer.train()
    with torch.autocast('cuda', dtype=torch.float16):
        out = layer(x)
    # Each split's weight gradient sums ~0.4 * 4 over 60800 positions, past float16's 65504;
    # the attention's logits get the (small) difference of two such sums.
    (out * 4.0).sum().backward()
    for n, p in layer.named_parameters():
        if n.startswith(('fc1', 'fc2', layer.norm1_name)):
            assert torch.isfinite(p.grad).all(), n
    assert layer.fc2.weight.grad.abs().max() > 0  # (fc1's bias: a training-mode norm follows)


def test_compiled_backbone_equals_eager_on_cuda():
    ours = implementations('resnest50')[0].model.eval()
    x = torch.randn(2, 3, 64, 96, device='cuda')
    with torch.no_grad():
        ref = ours(x)
        compiled = torch.compile(ours)(x)
    assert relative_diff(compiled, ref) < TOL

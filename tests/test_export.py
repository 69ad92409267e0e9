"""Tracing, torch.export, ONNX export and torch.compile of every family, checked against eager
outputs (and, compiled, gradients)."""
import copy

import pytest
import torch

from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNeXt

FAMILIES = {
    'resnet': lambda: ResNet(depth=50, base_channels=8),
    'resnext': lambda: ResNeXt(depth=50, base_channels=8, groups=4, base_width=2),
    'resnest': lambda: ResNeSt(depth=14, base_channels=8, base_width=8),
    'resnest_r4_k2': lambda: ResNeSt(depth=14, base_channels=8, base_width=4, radix=4, groups=2),
    'res2net': lambda: Res2Net(depth=50, base_channels=8, base_width=4),
}


def _eval(name):
    from .conftest import randomize_norms
    model = FAMILIES[name]()
    randomize_norms(model)
    return model.eval()


def _close(a, b, tol=1e-4):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == tuple(y.shape)
        assert float((torch.as_tensor(x) - y).abs().max()) < tol


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_jit_trace_matches_eager(name):
    model = _eval(name)
    x = torch.randn(2, 3, 64, 64)
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        _close(traced(x), model(x))


@pytest.mark.parametrize('name', ['resnest', 'res2net'])
def test_torch_export_with_automatic_dynamic_sizes_runs_at_other_sizes(name):
    # Dim.AUTO, as README says: a named Dim(min=33) is refused by PyTorch's shape solver for
    # the ceil-mode avg-down pool (MMDetection's ResNeSt and Res2Net alike).
    from torch.export import Dim
    model = _eval(name)
    program = torch.export.export(model, (torch.randn(1, 3, 64, 64),),
                                  dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO},))
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        _close(program.module()(x), model(x))


@pytest.mark.parametrize('name', ['resnest_r4_k2', 'res2net'])
def test_torch_export_matches_eager(name):
    model = _eval(name)
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        _close(program.module()(x), model(x))


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_onnx_export_runs_in_onnxruntime_with_dynamic_sizes(name, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = _eval(name)
    path = tmp_path / f'{name}.onnx'
    outputs = [f'c{i + 2}' for i in range(len(model.out_indices))]
    dynamic = {'image': {0: 'batch', 2: 'height', 3: 'width'}}
    dynamic.update({o: {0: 'batch', 2: f'h_{o}', 3: f'w_{o}'} for o in outputs})
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), input_names=['image'],
                      output_names=outputs, dynamic_axes=dynamic, opset_version=17,
                      dynamo=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = torch.randn(2, 3, 96, 80)  # a different size than at export time
    with torch.no_grad():
        _close(session.run(None, {'image': x.numpy()}), model(x))


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_torch_compile_matches_eager(name):
    """One graph (fullgraph: no breaks) for inference and for a training step, with the eager
    outputs and parameter gradients. AOT autograd is the compiler's own front end; the backend
    that runs its graph ('aot_eager') skips only the code generation (inductor, seconds to
    minutes on CPU; benchmarked with tools/benchmark.py --compile)."""
    import torch._dynamo
    torch._dynamo.reset()
    model = _eval(name)
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(compiled(x), twin(x))
    model.train()
    twin.train()
    out, ref = compiled(x), twin(x)
    _close([o.detach() for o in out], [r.detach() for r in ref])

    def loss(outs):  # channel-weighted, so every channel's gradient differs
        return sum((o * torch.linspace(0, 1, o.shape[1]).view(1, -1, 1, 1)).sum() for o in outs)
    loss(out).backward()
    loss(ref).backward()
    grads = [(n, p.grad, q.grad) for (n, p), q in zip(model.named_parameters(), twin.parameters())
             if p.requires_grad]
    assert grads and all(g is not None and h is not None for _, g, h in grads)
    for n, g, h in grads:
        assert float((g - h).abs().max()) <= 1e-4 * (1 + float(h.abs().max())), n

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_norms(model: torch.nn.Module, last_norm_names=('bn3', 'norm3', 'bn2')) -> None:
    """Give every BN non-trivial affine parameters and running statistics, so that equivalence
    tests compare networks that use all of them (default BN is an identity in eval mode); the
    norm closing each residual branch (BasicBlock's bn2 included) gets a small scale."""
    from resnest_mm.benchmark import randomize_norms as randomize
    randomize(model, seed=1, last_norm_names=last_norm_names)


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def assert_same_architecture(backbone: torch.nn.Module, variant: str) -> None:
    """``backbone`` has exactly the parameters and buffers of the named variant, shape for shape
    (depth, groups, widths, scales and stem all show in them; dilation and strides do not)."""
    from resnest_mm.models import build_backbone
    want = {k: tuple(v.shape) for k, v in build_backbone(variant).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:5]
    wrong = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    assert not wrong, list(wrong.items())[:5]


@pytest.fixture
def svg_backend():
    """matplotlib set to the 'svg' backend for the test (restored afterwards): charts must be
    drawn without switching the caller's backend."""
    import matplotlib
    before = matplotlib.get_backend()
    matplotlib.use('svg')
    yield 'svg'
    matplotlib.use(before)


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """``(folder, url)``: files put in the folder are served at the URL by a local HTTP server,
    and torch's hub cache (where mmengine downloads them) is under ``tmp_path``."""
    import functools
    import http.server
    import threading
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    folder = tmp_path / 'served'
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f'http://127.0.0.1:{server.server_address[1]}/'
    server.shutdown()
    server.server_close()

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
    tests compare networks that use all of them (default BN is an identity in eval mode).

    The norm closing each residual branch gets a small scale to keep deep nets' activations in a
    range where an absolute tolerance means something.
    """
    g = torch.Generator().manual_seed(1)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            scale = 0.2 if name.rsplit('.', 1)[-1] in last_norm_names else 1.0
            with torch.no_grad():
                m.weight.copy_(scale * (0.5 + 0.5 * torch.rand(c, generator=g)))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))

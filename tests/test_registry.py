"""Scoped registration: our names never clash with MMDetection's or MMSegmentation's."""
import subprocess
import sys

import pytest

from resnest_mm.models import VARIANTS, Res2Net, ResNeSt, ResNet, ResNeXt, build_backbone
from resnest_mm.registry import MODELS


def test_registry_is_direct_child_of_mmengine_root():
    from mmengine.registry import MODELS as ROOT
    assert MODELS.parent is ROOT
    assert MODELS.scope == 'resnest_mm'
    assert ROOT.children['resnest_mm'] is MODELS


def test_importing_models_needs_neither_mmdet_nor_mmseg():
    code = ('import sys, resnest_mm.models, resnest_mm.checkpoint; '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("mmdet", "mmseg")]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_scoped_names_resolve_from_mmdet_and_mmseg_while_builtins_keep_theirs():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmdet.models.backbones import ResNeSt as DetResNeSt
    from mmseg.models.backbones import ResNeSt as SegResNeSt
    for registry in (DET, SEG):
        assert registry.get('resnest_mm.ResNeSt') is ResNeSt
        assert registry.get('resnest_mm.ResNeXt') is ResNeXt
        assert registry.get('resnest_mm.Res2Net') is Res2Net
        assert registry.get('resnest_mm.ResNet') is ResNet
    assert DET.get('ResNeSt') is DetResNeSt
    assert SEG.get('ResNeSt') is SegResNeSt
    model = DET.build(dict(type='resnest_mm.ResNeSt', depth=14))
    assert isinstance(model, ResNeSt)


@pytest.mark.parametrize('name', ['resnest50', 'resnext101_32x4d', 'res2net50_26w_4s_v1',
                                  'resnet50_v1c'])
def test_named_variants_build(name):
    model = build_backbone(name)
    cls, kwargs = VARIANTS[name]
    assert type(model).__name__ == cls
    for k, v in kwargs.items():
        assert getattr(model, k) == v


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="variant='resnest51'.*resnest50"):
        build_backbone('resnest51')

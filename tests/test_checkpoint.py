"""Checkpoint layouts, strict loading, safe torch.load and the converter tool."""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from resnest_mm.checkpoint import (CheckpointMismatchError, convert_file, convert_state_dict,
                                   load_pretrained, safe_torch_load)
from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNeXt, build_backbone, variant_config
from resnest_mm.registry import MODELS

from .conftest import randomize_norms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(logger=lambda m: None)


def to_deep_stem_layout(mm_state, with_fc=True):
    """resnest_mm/MM keys -> the official ResNeSt / timm / Res2Net-v1b layout."""
    out = OrderedDict()
    for k, v in mm_state.items():
        if k.startswith('stem.'):
            idx, rest = k[5:].split('.', 1)
            k = f'bn1.{rest}' if idx == '7' else f'conv1.{idx}.{rest}'
        out[k] = v
    if with_fc:
        out['fc.weight'] = torch.zeros(10, 8)
        out['fc.bias'] = torch.zeros(10)
    return out


def tiny_resnest(**kw):
    return ResNeSt(depth=14, base_channels=8, base_width=8, **kw)


def assert_same_weights(a, b):
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_official_layout_round_trip_drops_classifier():
    src = tiny_resnest()
    randomize_norms(src)
    dst = tiny_resnest()
    report = load_pretrained(dst, to_deep_stem_layout(src.state_dict()), **QUIET)
    assert report.layout == 'deep-stem'
    assert report.dropped_classifier == ['fc.weight', 'fc.bias']
    assert_same_weights(src, dst)


def test_detector_state_dict_with_backbone_prefix_and_meta(tmp_path):
    src = tiny_resnest()
    randomize_norms(src)
    state = OrderedDict((f'backbone.{k}', v) for k, v in src.state_dict().items())
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(4, 4, 1, 1)
    path = tmp_path / 'detector.pth'
    from mmengine.logging import HistoryBuffer
    import numpy as np
    torch.save({'meta': {'epoch': 3, 'seed': np.int64(5), 'hist': HistoryBuffer([1.0, 2.0], [1, 1]),
                         'arr': np.arange(3)}, 'state_dict': state}, path)
    dst = tiny_resnest()
    report = load_pretrained(dst, str(path), **QUIET)
    assert report.layout == 'mm' and report.prefix == 'backbone'
    assert report.dropped_other_modules == 1
    assert_same_weights(src, dst)


def test_plain_stem_layouts_torchvision_and_original_res2net():
    src = ResNeXt(depth=50, base_channels=8, groups=4, base_width=2)
    randomize_norms(src)
    state = OrderedDict(src.state_dict())
    state['fc.weight'] = torch.zeros(10, 256)
    dst = ResNeXt(depth=50, base_channels=8, groups=4, base_width=2)
    assert load_pretrained(dst, state, **QUIET).layout == 'plain-stem'
    assert_same_weights(src, dst)
    r2 = Res2Net(depth=50, base_channels=8, base_width=4, deep_stem=False, avg_down=False)
    randomize_norms(r2)
    r2b = Res2Net(depth=50, base_channels=8, base_width=4, deep_stem=False, avg_down=False)
    load_pretrained(r2b, r2.state_dict(), **QUIET)
    assert_same_weights(r2, r2b)


def test_msra_caffe_resnet_file_layout_loads(tmp_path):
    # The detection baselines' ImageNet file (MMDetection's conversion of detectron2's R-50.pkl):
    # torchvision names under 'state_dict', BN statistics 0/1 (folded into the affine), no counters.
    src = ResNet(depth=50, base_channels=8, style='caffe')
    randomize_norms(src)
    state = OrderedDict((k, v) for k, v in src.state_dict().items()
                        if not k.endswith('num_batches_tracked'))
    path = tmp_path / 'resnet50_msra.pth'
    torch.save({'state_dict': state}, path)
    dst = ResNet(depth=50, base_channels=8, style='caffe')
    assert load_pretrained(dst, str(path), **QUIET).layout == 'plain-stem'
    assert_same_weights(src, dst)


def test_old_checkpoints_without_bn_counters_load():
    src = tiny_resnest()
    randomize_norms(src)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith('num_batches_tracked')}
    dst = tiny_resnest()
    report = load_pretrained(dst, state, **QUIET)
    counters = [k for k in src.state_dict() if k.endswith('num_batches_tracked')]
    assert counters and sorted(report.filled_counters) == sorted(counters)
    assert_same_weights(src, dst)


def test_missing_and_unexpected_keys_are_listed():
    src = tiny_resnest().state_dict()
    del src['layer2.0.conv2.fc1.weight']
    src['layer9.0.conv1.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(tiny_resnest(), src, **QUIET)
    text = str(err.value)
    assert 'layer2.0.conv2.fc1.weight' in text and 'layer9.0.conv1.weight' in text


def test_stem_width_mismatch_explains_itself():
    src = ResNeSt(depth=14, base_channels=8, base_width=8, stem_channels=16).state_dict()
    with pytest.raises(CheckpointMismatchError, match='stem_channels=64') as err:
        load_pretrained(tiny_resnest(), src, **QUIET)
    assert 'stem.0.weight' in str(err.value)


def test_deep_stem_checkpoint_into_plain_model_hints_deep_stem():
    with pytest.raises(CheckpointMismatchError, match='deep_stem=True'):
        convert_state_dict(tiny_resnest().state_dict(),
                           ResNet(depth=50, base_channels=8))


def test_res2net_plain_checkpoint_into_v1b_fails_loudly():
    src = Res2Net(depth=50, base_channels=8, base_width=4, deep_stem=False, avg_down=False)
    with pytest.raises(CheckpointMismatchError, match='deep_stem=False'):
        load_pretrained(Res2Net(depth=50, base_channels=8, base_width=4), src.state_dict(),
                        **QUIET)


def test_unrecognised_layout():
    with pytest.raises(CheckpointMismatchError, match='unrecognised'):
        convert_state_dict({'foo.weight': torch.zeros(1)}, tiny_resnest())


def test_init_cfg_pretrained_through_the_registry(tmp_path):
    src = tiny_resnest()
    randomize_norms(src)
    path = tmp_path / 'official.pth'
    torch.save(to_deep_stem_layout(src.state_dict()), path)
    model = MODELS.build(dict(type='resnest_mm.ResNeSt', depth=14, base_channels=8,
                              base_width=8, init_cfg=dict(type='Pretrained',
                                                          checkpoint=str(path))))
    model.init_weights()
    assert_same_weights(src, model)
    bad = MODELS.build(dict(type='resnest_mm.ResNeSt', depth=14, base_channels=8, base_width=4,
                            init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    with pytest.raises(CheckpointMismatchError, match='shape'):
        bad.init_weights()
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        MODELS.build(dict(type='resnest_mm.ResNeSt', depth=14, init_cfg=dict(
            type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))).init_weights()


def test_pretrained_in_an_init_cfg_list_loads_strictly(tmp_path):
    src = tiny_resnest()
    randomize_norms(src)
    state = src.state_dict()
    torch.save(state, tmp_path / 'full.pth')
    torch.save({k: v for k, v in state.items() if not k.startswith('layer4.')},
               tmp_path / 'partial.pth')
    seen = []

    def where(storage, location):  # map_location reaches torch.load
        seen.append(location)
        return storage

    model = tiny_resnest(init_cfg=[dict(type='Kaiming', layer='Conv2d'), dict(
        type='Pretrained', checkpoint=str(tmp_path / 'full.pth'), map_location=where)])
    model.init_weights()
    assert_same_weights(src, model)
    assert seen
    # In a list too, a checkpoint that does not fit fails instead of leaving layer4 random.
    bad = tiny_resnest(init_cfg=[dict(type='Kaiming', layer='Conv2d'), dict(
        type='Pretrained', checkpoint=str(tmp_path / 'partial.pth'))])
    with pytest.raises(CheckpointMismatchError, match='layer4'):
        bad.init_weights()


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_safe_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match='not safe'):
        safe_torch_load(str(path))


@pytest.mark.parametrize('overrides, dst, message', [
    (dict(depth=101), 'out.pth', r"sets depth=50; the override \{'depth': 101\}"),
    (dict(foo=1), 'out.pth', "unexpected keyword argument 'foo'"),
    (dict(pretrained='x.pth'), 'out.pth', r"\['pretrained'\] would not be used"),
    (dict(init_cfg=None), 'out.pth', r"\['init_cfg'\] would not be used"),
    ({}, '.', 'is a folder'),
])
def test_convert_file_refuses_overrides_and_paths_it_cannot_use(tmp_path, overrides, dst,
                                                                message):
    src = tmp_path / 'src.pth'
    torch.save(ResNeSt(depth=50).state_dict(), src)
    with pytest.raises(ValueError, match=message):
        convert_file(str(src), str(tmp_path / dst), 'resnest50', overrides)
    assert sorted(os.listdir(tmp_path)) == ['src.pth']
    # Repeating a value the variant sets is no clash.
    assert variant_config('resnest50', depth=50) == variant_config('resnest50')


def test_convert_tool_verifies_against_official(tmp_path):
    import resnest.torch as official
    ref = official.resnest50(pretrained=False)
    randomize_norms(ref)
    src, dst = tmp_path / 'resnest50-official.pth', tmp_path / 'resnest50_mm.pth'
    torch.save(ref.state_dict(), src)
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_weights.py'),
                          str(src), str(dst), '--variant', 'resnest50', '--verify'],
                         capture_output=True, text=True, check=True).stdout
    assert 'layout' in out and 'official resnest.torch.resnest50: max abs diff' in out
    model = build_backbone('resnest50')
    load_pretrained(model, str(dst), **QUIET)
    assert torch.equal(model.layer1[0].conv2.fc1.weight, ref.layer1[0].conv2.fc1.weight)


def test_convert_tool_fails_on_wrong_variant(tmp_path):
    src = tmp_path / 'r.pth'
    torch.save(tiny_resnest().state_dict(), src)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_weights.py'),
                           str(src), str(tmp_path / 'o.pth'), '--variant', 'resnest50'],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and 'shape mismatches' in proc.stderr

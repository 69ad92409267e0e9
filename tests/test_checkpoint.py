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

from .conftest import max_diff, randomize_norms

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
    with pytest.raises(pickle.UnpicklingError, match='not safe') as err:
        safe_torch_load(str(path))
    # The way out, also for an installed copy (no tools/).
    assert 'resnest_mm.checkpoint.convert_file(src, dst, variant, trust=True)' in str(err.value)


@pytest.mark.parametrize('overrides, dst, message', [
    (dict(depth=101), 'out.pth', r"sets depth=50; the override \{'depth': 101\}"),
    (dict(foo=1), 'out.pth', "unexpected keyword argument 'foo'"),
    (dict(pretrained='x.pth'), 'out.pth', r"\['pretrained'\] would not be used"),
    (dict(init_cfg=None), 'out.pth', r"\['init_cfg'\] would not be used"),
    ({}, '.', 'is a folder'),
    ({}, 'src.pth', 'is the source file itself'),  # it would have replaced the original
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


def test_verify_compares_an_mm_layout_source_with_the_official_network(tmp_path):
    # A detector's state dict in MM names: the official network cannot take it as it is.
    import resnest.torch as official
    ref = official.resnest50(pretrained=False)
    randomize_norms(ref)
    ours = build_backbone('resnest50')
    load_pretrained(ours, ref.state_dict(), **QUIET)
    src = tmp_path / 'detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in ours.state_dict().items()}}, src)
    result = convert_file(str(src), str(tmp_path / 'out.pth'), 'resnest50', verify=True,
                          log=lambda m: None)
    assert result.report.layout == 'mm' and result.reference == 'resnest.torch.resnest50'
    assert result.max_abs_diff < 1e-4


def _imagenet_state(**kw):
    src = ResNet(depth=50, base_channels=8, **kw)
    randomize_norms(src)
    return src, src.state_dict()


def test_imagenet_weights_load_into_deformable_stages_with_zero_offsets():
    # MMDetection's dconv recipes start from ImageNet weights, which have no offset branches.
    src, state = _imagenet_state()
    dcn = dict(type='DCN', deform_groups=1, fallback_on_stride=False)  # v2's masks start at 0.5
    dst = ResNet(depth=50, base_channels=8, dcn=dcn, stage_with_dcn=(False, True, True, True))
    with torch.no_grad():  # make sure loading sets them, not the constructor
        for name, p in dst.named_parameters():
            if 'conv_offset' in name:
                p.fill_(0.5)
    messages = []
    report = load_pretrained(dst, state, logger=messages.append)
    offsets = [k for k in dst.state_dict() if '.conv_offset.' in k]
    assert offsets and sorted(report.kept_initialised) == sorted(offsets)
    assert 'layer2.0.conv2.conv_offset' in messages[0]
    assert 'keep their initialisation' in messages[0]
    dst._zero_deform_offsets()
    x = torch.rand(1, 3, 128, 128)  # mmcv's CPU kernel needs maps of at least 3x3
    with torch.no_grad():
        assert max_diff(src.eval()(x), dst.eval()(x)) < 1e-5  # zero offsets: plain convs
    # A checkpoint that has some offsets but not all does not fit.
    partial = dict(dst.state_dict())
    del partial['layer3.0.conv2.conv_offset.weight']
    with pytest.raises(CheckpointMismatchError, match='layer3.0.conv2.conv_offset.weight'):
        load_pretrained(dst, partial, **QUIET)


def test_pretrained_init_cfg_zeroes_deformable_offsets(tmp_path):
    _, state = _imagenet_state()
    path = tmp_path / 'imagenet.pth'
    torch.save(state, path)
    dst = ResNet(depth=50, base_channels=8, dcn=dict(type='DCN', deform_groups=1),
                 stage_with_dcn=(False, False, True, False),
                 init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    offsets = [p for n, p in dst.named_parameters() if 'conv_offset' in n]
    with torch.no_grad():
        for p in offsets:
            p.fill_(0.5)
    dst.init_weights()
    assert offsets and all(not p.any() for p in offsets)


def test_imagenet_weights_load_into_a_backbone_with_plugins():
    _, state = _imagenet_state()
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                    stages=(False, True, True, True), position='after_conv3')]
    dst = ResNet(depth=50, base_channels=8, plugins=plugins)
    report = load_pretrained(dst, state, **QUIET)
    assert report.kept_initialised and all('.context_block.' in k
                                           for k in report.kept_initialised)
    assert torch.equal(dst.layer1[0].conv1.weight, state['layer1.0.conv1.weight'])


def test_fewer_stages_take_the_whole_networks_checkpoint():
    # MMDetection's C4 detectors build 3 stages from the ImageNet weights of all 4.
    _, state = _imagenet_state()
    dst = ResNet(depth=50, base_channels=8, num_stages=3, out_indices=(2,), strides=(1, 2, 2),
                 dilations=(1, 1, 1))
    messages = []
    report = load_pretrained(dst, state, logger=messages.append)
    assert report.dropped_unbuilt_stages and all(
        k.startswith('layer4.') for k in report.dropped_unbuilt_stages)
    assert 'layer4 ignored (num_stages does not build them)' in messages[0]
    assert torch.equal(dst.layer3[0].conv1.weight, state['layer3.0.conv1.weight'])
    # Another stage's keys are still a mismatch.
    state['layer3.9.conv1.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match='layer3.9.conv1.weight'):
        load_pretrained(dst, state, **QUIET)


def test_integer_tensors_for_float_weights_are_refused_and_casts_reported():
    _, state = _imagenet_state()
    bad = dict(state)
    bad['layer1.0.conv1.weight'] = bad['layer1.0.conv1.weight'].round().long()
    with pytest.raises(CheckpointMismatchError,
                       match=r'layer1\.0\.conv1\.weight: checkpoint torch\.int64 vs model '
                             r'torch\.float32'):
        load_pretrained(ResNet(depth=50, base_channels=8), bad, **QUIET)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    messages = []
    report = load_pretrained(ResNet(depth=50, base_channels=8), half, logger=messages.append)
    assert report.cast_from == ['float16'] and 'cast from float16' in messages[0]


def test_load_pretrained_takes_path_objects_and_checks_its_arguments(tmp_path):
    src = ResNet(depth=18, base_channels=8)
    path = tmp_path / 'r18.pth'
    torch.save(src.state_dict(), path)
    dst = ResNet(depth=18, base_channels=8)
    load_pretrained(dst, path, **QUIET)  # a pathlib.Path, as os.PathLike
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    with pytest.raises(TypeError, match="prefix=1 is not valid"):
        load_pretrained(dst, str(path), prefix=1, **QUIET)
    with pytest.raises(TypeError, match='checkpoint=3 is not valid'):
        load_pretrained(dst, 3, **QUIET)


def test_importing_the_models_lets_mmengine_checkpoints_load_with_weights_only(tmp_path):
    # MMDetection's DetInferencer/init_detector and MMSegmentation's inferencers load with
    # torch.load's default weights_only=True, which refused what every mmengine checkpoint holds
    # (numpy values, a HistoryBuffer); our configs import resnest_mm.models. Run apart: this
    # process may have allowed them already.
    import subprocess
    import sys
    script = f'''
import numpy as np, torch
from mmengine.logging.history_buffer import HistoryBuffer
path = {str(tmp_path / 'c.pth')!r}
buf = HistoryBuffer()
buf.update(1.5)
torch.save(dict(state_dict=dict(w=torch.ones(2)), meta=dict(seed=np.int64(3), epoch=1),
                message_hub=dict(log_scalars=dict(loss=buf)), array=np.arange(3)), path)
try:
    torch.load(path)
    print('loaded before the import')
except Exception as err:
    print('refused before the import:', type(err).__name__)
import resnest_mm.models
ckpt = torch.load(path)
print('loaded after the import', int(ckpt['meta']['seed']), ckpt['message_hub']['log_scalars']['loss'].current())
class Evil:
    def __reduce__(self):
        return (print, ('executed',))
torch.save(dict(x=Evil()), path)
try:
    torch.load(path)
    print('loaded an arbitrary object')
except Exception as err:
    print('still refused:', type(err).__name__)
'''
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ['refused before the import: UnpicklingError',
                                        'loaded after the import 3 1.5',
                                        'still refused: UnpicklingError'], proc.stdout


def test_a_url_init_checkpoint_is_loaded_weights_only(http_folder):
    # init_cfg=dict(type='Pretrained', checkpoint=URL) of our backbones: mmengine's download
    # unpickled the whole file (torch.hub's weights_only defaults to False).
    import argparse
    from resnest_mm.checkpoint import load_pretrained
    folder, url = http_folder
    model = build_backbone('resnet18', base_channels=4)
    torch.save({'state_dict': model.state_dict()}, folder / 'ok.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': argparse.Namespace(x=1)},
               folder / 'unsafe.pth')
    load_pretrained(build_backbone('resnet18', base_channels=4), url + 'ok.pth')
    with pytest.raises(pickle.UnpicklingError, match='Namespace'):
        load_pretrained(build_backbone('resnet18', base_channels=4), url + 'unsafe.pth')

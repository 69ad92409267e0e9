"""Behaviour of the engine and every family, on tiny widths."""
import copy
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from resnest_mm.models import Res2Net, ResNeSt, ResNet, ResNetV1c, ResNetV1d, ResNeXt
from resnest_mm.models.backbones import engine
from resnest_mm.models.backbones.res2net import Res2NetBottleneck
from resnest_mm.models.backbones.resnest import ResNeStBottleneck
from resnest_mm.models.layers.spatial import SpatialConv2d

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Tiny widths: every family, both stems, both shortcut kinds.
TINY = {
    'resnet18': (ResNet, dict(depth=18, base_channels=8)),
    'resnet50': (ResNet, dict(depth=50, base_channels=8)),
    'resnet50_v1d': (ResNet, dict(depth=50, base_channels=8, deep_stem=True, avg_down=True)),
    'resnet50_caffe': (ResNet, dict(depth=50, base_channels=8, style='caffe')),
    'resnext50': (ResNeXt, dict(depth=50, base_channels=8, groups=4, base_width=2)),
    'resnest14': (ResNeSt, dict(depth=14, base_channels=8, base_width=8)),
    'resnest50_2s2x': (ResNeSt, dict(depth=50, base_channels=8, base_width=4, groups=2)),
    'resnest14_fast_r1': (ResNeSt, dict(depth=14, base_channels=8, base_width=8, radix=1,
                                        avd_first=True)),
    'resnest14_r4': (ResNeSt, dict(depth=14, base_channels=8, base_width=8, radix=4)),
    'res2net50': (Res2Net, dict(depth=50, base_channels=8, base_width=4, scales=4)),
    'res2net50_v1': (Res2Net, dict(depth=50, base_channels=8, base_width=4, scales=3,
                                   deep_stem=False, avg_down=False)),
}


def build(name, **overrides):
    cls, kwargs = TINY[name]
    return cls(**{**kwargs, **overrides})


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('size', [(64, 64), (65, 47)])
def test_outputs_follow_declared_channels_and_strides(name, size):
    model = build(name, out_indices=(0, 2, 3)).eval()
    outs = model(torch.rand(2, 3, *size))
    assert len(outs) == 3
    assert model.out_strides == (4, 16, 32)
    for out, c, s in zip(outs, model.out_channels, model.out_strides):
        assert out.shape == (2, c, math.ceil(size[0] / s), math.ceil(size[1] / s))


def test_bottleneck_nets_have_standard_channels_and_strides():
    for model in (ResNeSt(depth=50), Res2Net(depth=50), ResNeXt(depth=50), ResNet(depth=50)):
        assert model.out_channels == (256, 512, 1024, 2048)
        assert model.out_strides == (4, 8, 16, 32)
    assert ResNet(depth=18).out_channels == (64, 128, 256, 512)


@pytest.mark.parametrize('name', sorted(TINY))
def test_every_parameter_gets_a_gradient(name):
    model = build(name, norm_eval=False).train()
    outs = model(torch.rand(2, 3, 32, 32))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize('name,norm_cfg', [
    ('resnet50_v1d', None), ('resnext50', None), ('resnest50_2s2x', None), ('res2net50', None),
    ('resnet50_v1d', dict(type='IN', affine=True, track_running_stats=True))])
def test_with_cp_equals_plain(name, norm_cfg, monkeypatch):
    from resnest_mm.models.backbones import blocks
    norm = {} if norm_cfg is None else dict(norm_cfg=norm_cfg)
    plain = build(name, norm_eval=False, **norm).train()
    ckpt = build(name, norm_eval=False, with_cp=True, **norm).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    checkpoint = blocks.cp.checkpoint

    def counting_checkpoint(fn, *args, **kwargs):
        calls.append(fn)
        return checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(blocks.cp, 'checkpoint', counting_checkpoint)
    x = torch.rand(2, 3, 64, 64)  # instance norms need 2x2 maps in the last stage
    outs = [m(x.clone().requires_grad_()) for m in (plain, ckpt)]
    # Every block of the with_cp network, and none of the plain one, ran under checkpointing.
    assert len(calls) == sum(ckpt.stage_blocks)
    for o in outs:
        sum(t.sum() for t in o).backward()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    # The recomputation in the backward pass counts no batch twice into the norms' statistics.
    buffers = dict(plain.named_buffers())
    for n, b in ckpt.named_buffers():
        torch.testing.assert_close(b, buffers[n], msg=n)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50_v1d', 'resnest14', 'res2net50'])
@pytest.mark.parametrize('frozen', [0, 1, 3])
def test_frozen_stages_stay_frozen_across_train_calls(name, frozen):
    model = build(name, frozen_stages=frozen, norm_eval=False)
    model.train()
    model.train()
    stem = [model.stem] if model.deep_stem else [model.conv1, model.norm1]
    frozen_modules = stem + [getattr(model, f'layer{i}') for i in range(1, frozen + 1)]
    live_modules = [getattr(model, f'layer{i}') for i in range(frozen + 1, 5)]
    before = copy.deepcopy(model.state_dict())
    model(torch.rand(2, 3, 32, 32))
    after = model.state_dict()
    for module in frozen_modules:
        assert not module.training
        assert all(not m.training for m in module.modules())
        assert all(not p.requires_grad for p in module.parameters())
    for module in live_modules:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    frozen_prefixes = ('stem.', 'conv1.', 'bn1.') + tuple(f'layer{i}.' for i in range(1, frozen + 1))
    for k, v in before.items():
        if k.endswith('running_mean'):
            if k.startswith(frozen_prefixes):
                assert torch.equal(v, after[k]), k
            else:
                assert not torch.equal(v, after[k]), k


@pytest.mark.parametrize('name', ['resnest14', 'res2net50', 'resnet50'])
def test_norm_eval_reaches_every_batch_norm(name):
    model = build(name, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    # Split attention's and Res2Net's per-split norms are in there too.
    assert len(bns) > 3 * sum(model.stage_blocks)
    assert all(not m.training for m in bns)
    stats = [m.running_mean.clone() for m in bns]
    model(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns))
    # The convs stay trainable: norm_eval freezes statistics, not weights.
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('zero', [True, False])
def test_zero_init_residual_zeroes_every_family_last_norm(name, zero):
    model = build(name, zero_init_residual=zero)
    model.init_weights()
    blocks = [b for layer in model.res_layers for b in getattr(model, layer)]
    assert blocks
    for block in blocks:
        # By state-dict name, not through last_norm(), which zero_init_last() itself uses.
        weights = {k: v for k, v in block.state_dict().items()
                   if k.startswith('bn') and k.endswith('.weight')}
        last = 'bn3.weight' if 'bn3.weight' in weights else 'bn2.weight'
        assert bool((weights.pop(last) == 0).all()) is zero
        assert weights and all(bool((w != 0).all()) for w in weights.values())


@pytest.mark.parametrize('name', ['resnet50', 'resnext50', 'resnest50_2s2x', 'res2net50'])
@pytest.mark.parametrize('dcn_type', ['DCN', 'DCNv2'])
def test_dcn_builds_and_runs_without_mutating_the_config(name, dcn_type):
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
    dcn = dict(type=dcn_type, deform_groups=1, fallback_on_stride=True)
    original = copy.deepcopy(dcn)
    model = build(name, dcn=dcn, stage_with_dcn=(False, True, True, True), norm_eval=False)
    assert dcn == original
    dcn_class = ModulatedDeformConv2d if dcn_type == 'DCNv2' else DeformConv2d
    kinds = {}
    for layer_name in model.res_layers:
        kinds[layer_name] = [isinstance(m, dcn_class) for m in getattr(model, layer_name).modules()]
    assert not any(kinds['layer1'])
    assert all(any(kinds[f'layer{i}']) for i in (2, 3, 4))
    model.init_weights()
    # mmcv's deformable kernels need every map at least as large as the kernel.
    outs = model.train()(torch.rand(2, 3, 96, 96))
    sum(o.sum() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)


def test_dcn_fallback_on_stride_keeps_strided_convs_plain():
    from mmcv.ops import DeformConv2d
    model = build('resnet50', dcn=dict(type='DCN', fallback_on_stride=True),
                  stage_with_dcn=(False, True, False, False))
    first, second = model.layer2[0], model.layer2[1]
    assert not isinstance(first.conv2, DeformConv2d)
    assert isinstance(second.conv2, DeformConv2d)


@pytest.mark.parametrize('name', ['resnet50', 'resnest14', 'res2net50'])
def test_plugins_build_where_asked_and_run(name):
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                    stages=(False, True, True, True), position='after_conv3'),
               dict(cfg=dict(type='GeneralizedAttention', spatial_range=-1, num_heads=2,
                             attention_type='0010', kv_stride=2),
                    stages=(False, False, True, True), position='after_conv2')]
    model = build(name, plugins=plugins, norm_eval=False)
    names = lambda layer: {n for n, _ in layer.named_children()}  # noqa: E731
    assert 'context_block' not in names(model.layer1[0])
    assert 'context_block' in names(model.layer2[0])
    assert 'gen_attention_block' not in names(model.layer2[0])
    assert 'gen_attention_block' in names(model.layer4[0])
    outs = model.train()(torch.rand(2, 3, 32, 32))
    sum(o.sum() for o in outs).backward()


def test_syncbn_config_runs_in_one_cpu_process():
    model = build('resnest14', norm_cfg=dict(type='SyncBN', requires_grad=True),
                  norm_eval=False)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    outs = model.train()(torch.rand(2, 3, 32, 32))
    sum(o.sum() for o in outs).backward()
    model.eval()(torch.rand(1, 3, 32, 32))


def test_group_norm_uses_mm_names():
    model = build('resnest14', norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    keys = set(model.state_dict())
    assert 'layer1.0.gn1.weight' in keys and 'layer1.0.conv2.gn0.weight' in keys
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    model.train()(torch.rand(1, 3, 32, 32))


def test_dilated_output_stride_8():
    model = build('resnest50_2s2x', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                  contract_dilation=True).eval()
    assert model.out_strides == (4, 8, 8, 8)
    assert [b.dilation for b in model.layer3] == [1] + [2] * 5
    assert [b.dilation for b in model.layer4] == [2, 4, 4]
    assert [o.shape[-1] for o in model(torch.rand(1, 3, 64, 64))] == [16, 8, 8, 8]


def test_multi_grid_sets_last_stage_dilations():
    model = build('resnet50', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), multi_grid=(1, 2, 4),
                  contract_dilation=True)
    assert [b.dilation for b in model.layer4] == [1, 2, 4]
    assert [b.conv2.dilation for b in model.layer4] == [(1, 1), (2, 2), (4, 4)]


def test_resnest_avd_placement_official_and_builtin():
    official = build('resnest50_2s2x', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                     contract_dilation=True)
    builtin = build('resnest50_2s2x', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                    contract_dilation=True, avd_in_dilated_stages=False)
    first = lambda m: [getattr(m, f'layer{i}')[0].avd for i in range(1, 5)]  # noqa: E731
    assert first(official) == [False, True, True, True]
    assert first(builtin) == [False, True, False, False]
    assert official.layer3[0].avd_layer.stride == 1
    assert not any(b.avd for layer in ('layer2', 'layer3') for b in getattr(official, layer)[1:])


def test_res2net_stage_pool_official_and_builtin():
    official, builtin = build('res2net50'), build('res2net50', pool_first_stage=False)
    assert [getattr(official, f'layer{i}')[0].with_pool for i in range(1, 5)] == [True] * 4
    assert [getattr(builtin, f'layer{i}')[0].with_pool for i in range(1, 5)] == \
        [False, True, True, True]


@pytest.mark.parametrize('cls,kwargs,arg,value', [
    (ResNeSt, dict(depth=51), 'depth', '51'),
    (ResNet, dict(depth=51), 'depth', '51'),
    (Res2Net, dict(depth=34), 'depth', '34'),
    (ResNeSt, dict(radix=0), 'radix', '0'),
    (ResNeSt, dict(groups=0), 'groups', '0'),
    (ResNeSt, dict(out_indices=(4,)), 'out_indices', '(4,)'),
    (ResNet, dict(out_indices=()), 'out_indices', '()'),
    (ResNet, dict(out_indices=(1, 1)), 'out_indices', '(1, 1)'),
    (ResNeSt, dict(frozen_stages=5), 'frozen_stages', '5'),
    (ResNet, dict(frozen_stages=-2), 'frozen_stages', '-2'),
    (Res2Net, dict(scales=1), 'scales', '1'),
    (ResNeSt, dict(strides=(1, 2, 2)), 'strides', '(1, 2, 2)'),
    (ResNeSt, dict(dilations=(1, 1, 2)), 'dilations', '(1, 1, 2)'),
    (ResNet, dict(num_stages=5), 'num_stages', '5'),
    (ResNet, dict(style='tf'), 'style', "'tf'"),
    (ResNeSt, dict(style='caffe'), 'style', "'caffe'"),
    (ResNet, dict(stage_with_dcn=(False, True, False, False)), 'stage_with_dcn', 'False'),
    (ResNet, dict(multi_grid=(1, 2)), 'multi_grid', '(1, 2)'),
    (ResNet, dict(norm_cfg=dict(requires_grad=True)), 'norm_cfg', 'requires_grad'),
    (ResNeXt, dict(groups=0), 'groups', '0'),
    (ResNet, dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25),
                                position='after_conv4')]), 'position', 'after_conv4'),
    (ResNet, dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25),
                                position='after_conv3', stages=(True,))]), 'stages', '(True,)'),
    # Booleans are booleans: a string would count as True.
    (ResNet, dict(contract_dilation='no'), 'contract_dilation', "'no'"),
    (ResNet, dict(deep_stem='no'), 'deep_stem', "'no'"),
    (ResNet, dict(norm_eval=1), 'norm_eval', '1'),
    (ResNet, dict(with_cp='no'), 'with_cp', "'no'"),
    (ResNeSt, dict(avd='no'), 'avd', "'no'"),
    (Res2Net, dict(pool_first_stage=1), 'pool_first_stage', '1'),
    (ResNet, dict(dcn=dict(type='DCN'), stage_with_dcn=(False, 'no', False, False)),
     'stage_with_dcn', "'no'"),
    (ResNet, dict(plugins=[dict(cfg=dict(type='ContextBlock', ratio=0.25),
                                position='after_conv3', stages=('False',) * 4)]),
     'stages', "'False'"),
    (ResNeSt, dict(avd=False, avd_first=True), 'avd_first', 'avd=True'),
    # DCN: a config no stage uses, or one beside a conv_cfg it would drop.
    (ResNet, dict(dcn=dict(type='DCNv2')), 'stage_with_dcn', 'no stage uses it'),
    (ResNet, dict(dcn=dict(type='DCNv2'), stage_with_dcn=(False, True, False, False),
                  conv_cfg=dict(type='ConvWS')), 'conv_cfg', 'ConvWS'),
    # Layer types that no registry holds, named before mmcv's builders fail without naming them.
    (ResNet, dict(conv_cfg=dict(type='Cnov2d')), 'conv_cfg', "'Cnov2d'"),
    (ResNet, dict(norm_cfg=dict(type='NB')), 'norm_cfg', "'NB'"),
    (ResNet, dict(norm_cfg=dict(type='GN')), 'norm_cfg', 'num_groups'),
    (ResNet, dict(dcn=dict(type='DCNv9'), stage_with_dcn=(False, True, True, True)), 'dcn',
     "'DCNv9'"),
    (ResNet, dict(plugins=[dict(cfg=dict(type='ContextBlokc'), position='after_conv3')]),
     'plugins', "'ContextBlokc'"),
    # Init configs that could only fail later, in init_weights().
    (ResNet, dict(init_cfg=dict(type='Pretrained')), 'init_cfg', 'checkpoint=PATH'),
    (ResNet, dict(init_cfg='foo'), 'init_cfg', "'foo'"),
    (ResNet, dict(init_cfg=dict(checkpoint='a.pth')), 'init_cfg', "'type' key"),
    (ResNet, dict(init_cfg=dict(type='Pretrained', checkpoint='a.pth', strict=False)),
     'init_cfg', "['strict']"),
    (ResNet, dict(init_cfg=[dict(type='Pretrained', checkpoint='a.pth'),
                            dict(type='Pretrained', checkpoint='b.pth')]), 'init_cfg',
     'at most one'),
    (ResNet, dict(pretrained=123), 'pretrained', '123'),
    (ResNet, dict(init_cfg=dict(type='Kaiminng')), 'init_cfg', "'Kaiminng'"),
    # What could only fail in forward, or with torch's words.
    (ResNet, dict(out_indices=(3, 1)), 'out_indices', '(3, 1)'),
    (ResNet, dict(channels_last=1), 'channels_last', '1'),
    (ResNet, dict(norm_cfg=dict(type='LN')), 'norm_cfg', 'LayerNorm'),
    (ResNet, dict(norm_cfg=dict(type='BN1d')), 'norm_cfg', 'BatchNorm1d'),
    (ResNet, dict(norm_cfg=dict(type='BN', requires_grad='no')), "norm_cfg['requires_grad']",
     "'no'"),
    (ResNet, dict(base_channels=8, stem_channels=16, norm_cfg=dict(type='GN', num_groups=32)),
     'norm_cfg', 'num_groups to divide'),
    (ResNet, dict(dcn=dict(type='DCN', deform_groups=5), stage_with_dcn=(False, True, True, True)),
     'dcn', 'deform_groups=5'),
    (ResNeSt, dict(radix=3), 'radix', '3'),
    (ResNeSt, dict(norm_cfg=dict(type='IN')), 'norm_cfg', "'IN'"),
    (ResNeSt, dict(avd=True, avg_down_stride=False), 'avg_down_stride', 'give one'),
])
def test_bad_arguments_name_argument_and_value(cls, kwargs, arg, value):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert arg in str(err.value) and value in str(err.value)


CONTEXT = dict(cfg=dict(type='ContextBlock', ratio=0.25), position='after_conv3')


@pytest.mark.parametrize('build, start, allowed', [
    # Each was a message without the backbone's name, or torch's words without an argument.
    (lambda: ResNeSt(groups=3, base_width=4), 'ResNeSt: groups=3 is not valid',
     "divide the split attention's hidden width"),
    (lambda: ResNet(plugins=CONTEXT), "ResNet: plugins={'cfg'", 'expected a list of dict'),
    (lambda: ResNet(depth=18, plugins=[CONTEXT]), 'ResNet: plugins=[', 'BasicBlock (ResNet-18/34)'),
    (lambda: ResNet(depth=34, dcn=dict(type='DCN'), stage_with_dcn=(False, True, True, True)),
     "ResNet: dcn={'type': 'DCN'} is not valid", 'BasicBlock (ResNet-18/34)'),
    (lambda: ResNet(plugins=[CONTEXT, CONTEXT]), 'ResNet: plugins=[',
     "both named 'context_block'"),
    # V1c/V1d are a stem and a shortcut: another one was built quietly under the name.
    (lambda: ResNetV1c(deep_stem=False), 'ResNetV1c: deep_stem=False is not valid',
     'use ResNet(deep_stem=..., avg_down=...)'),
    (lambda: ResNetV1c(avg_down=True), 'ResNetV1c: avg_down=True', 'always has'),
    (lambda: ResNetV1d(avg_down=False), 'ResNetV1d: avg_down=False', 'always has'),
])
def test_bad_arguments_are_named_by_the_backbone(build, start, allowed):
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(start) and allowed in str(err.value), err.value


def test_v1c_and_v1d_take_their_own_stem_and_shortcut_by_name():
    c, d = ResNetV1c(depth=18, deep_stem=True, avg_down=False), ResNetV1d(depth=18, avg_down=True)
    assert (c.deep_stem, c.avg_down, d.deep_stem, d.avg_down) == (True, False, True, True)


def test_four_stage_dcn_default_fits_fewer_stages():
    # MMDetection's default stage_with_dcn (four False) with num_stages=3, as it accepts it.
    model = ResNet(depth=18, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                   out_indices=(0, 1, 2))
    assert model.stage_with_dcn == (False, False, False)


def test_dcn_builds_in_a_fresh_process():
    # mmcv registers DCN/DCNv2 only when mmcv.ops is imported (MMDetection does it; a script
    # using our backbone alone may not).
    code = ('import sys\n'
            'from resnest_mm.models import ResNet\n'
            "assert 'mmcv.ops' not in sys.modules\n"
            "m = ResNet(depth=50, dcn=dict(type='DCNv2', deform_groups=1),\n"
            '           stage_with_dcn=(False, True, False, False))\n'
            'print(type(m.layer2[0].conv2).__name__)\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == 'ModulatedDeformConv2dPack'


def test_zero_init_residual_follows_other_init_cfgs():
    model = ResNet(depth=50, base_channels=8, init_cfg=[
        dict(type='Kaiming', layer='Conv2d'), dict(type='Constant', val=1, layer='_BatchNorm')])
    model.init_weights()
    assert all(bool((b.bn3.weight == 0).all()) for layer in model.res_layers
               for b in getattr(model, layer))
    assert bool((model.layer1[0].bn1.weight == 1).all())


def test_unknown_argument_is_not_ignored():
    with pytest.raises(TypeError, match='radx'):
        ResNeSt(depth=50, radx=2)
    with pytest.raises(TypeError):
        ResNeSt(50)  # keyword-only


def test_blocks_declare_their_kind():
    assert isinstance(build('resnest14').layer1[0], ResNeStBottleneck)
    assert isinstance(build('res2net50').layer1[0], Res2NetBottleneck)


@pytest.mark.parametrize('name', ['resnest14', 'res2net50', 'resnext50'])
def test_channels_last_matches_nchw_and_keeps_the_callers_layout(name):
    torch.manual_seed(0)
    nchw = build(name, channels_last=False).eval()
    auto = build(name).eval()  # None: channels-last on CPU
    auto.load_state_dict(nchw.state_dict())
    params = dict(auto.named_parameters())
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        ref, got = nchw(x), auto(x)
    for a, b in zip(ref, got):
        assert b.is_contiguous()  # necks and mmcv ops get the NCHW they gave
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # Conv weights now live channels-last (no per-call weight and gradient copies) but are the
    # same Parameter objects, so optimisers built before the first call still update them.
    convs = [p for p in auto.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(params[n] is p for n, p in auto.named_parameters())
    assert all(p.is_contiguous() for p in nchw.parameters())
    # A channels-last input keeps its layout; training after inference_mode works.
    cl = x.contiguous(memory_format=torch.channels_last)
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in auto(cl))
    fresh = build(name)
    with torch.inference_mode():  # the first call converts the weights here
        fresh.eval()(x)
    fresh.train()
    # Training: some spatial convs take another way than plain channels-last (weight-heavy ones
    # compute and keep their weight in NCHW; without AVX-512 wide ones take the matrix-product
    # weight gradient); every way, each gradient arrives in its weight's layout (no copy).
    paths = {}
    for m in fresh.modules():
        if isinstance(m, SpatialConv2d):
            m.register_forward_pre_hook(lambda m, args: paths.update({m: m.path(args[0])}))
    sum(o.mean() for o in fresh(x)).backward()
    assert 'channels_last' in paths.values() and set(paths.values()) & {'nchw', 'gemm'}
    for m in fresh.modules():
        for p in m.parameters(recurse=False):
            if p.dim() == 4:
                fmt = torch.contiguous_format if paths.get(m) == 'nchw' else torch.channels_last
                assert p.is_contiguous(memory_format=fmt)
                assert p.grad.stride() == p.stride()


def test_inference_copies_each_output_to_nchw_after_the_next_stages_first_block(monkeypatch):
    """Copied before that block, an NCHW output would live through it beside the channels-last
    map it copies and the block's own maps (the peak memory of ResNeSt-50 at 2x224). A stage
    with forward hooks runs whole, its hooks see it, and the copy waits for the stage."""
    torch.manual_seed(0)
    model = build('resnet50', out_indices=(0, 2)).eval()
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        ref = [o.contiguous() for o in model(x.contiguous(memory_format=torch.channels_last))]
    log = []
    copy = engine.to_nchw
    monkeypatch.setattr(engine, 'to_nchw', lambda t: log.append(('nchw', t.shape[1])) or copy(t))
    for i, name in enumerate(model.res_layers):
        getattr(model, name)[0].register_forward_hook(
            lambda *_, i=i: log.append(('first block', i)))
    with torch.no_grad():
        outs = model(x)
    assert log == [('first block', 0), ('first block', 1), ('nchw', 32), ('first block', 2),
                   ('first block', 3), ('nchw', 128)]
    for got, want in zip(outs, ref):
        assert got.is_contiguous()
        assert torch.equal(got, want)
    log.clear()
    model.layer2.register_forward_hook(lambda *_: log.append(('stage', 1)))
    with torch.no_grad():
        outs = model(x)
    assert log == [('first block', 0), ('first block', 1), ('stage', 1), ('nchw', 32),
                   ('first block', 2), ('first block', 3), ('nchw', 128)]
    assert all(torch.equal(got, want) for got, want in zip(outs, ref))


@pytest.mark.parametrize('hooked_module', ['layer2', 'layer1.2'])
def test_stage_and_block_forward_hooks_run_in_training_too(hooked_module):
    """Training runs the blocks one by one, and a stage's last block in parts, to store no map
    twice; with forward hooks on a stage or its last block the modules are called whole instead
    (those hooks were skipped), with the same outputs and gradients."""
    torch.manual_seed(0)
    plain = build('resnest50_2s2x').double()
    hooked = copy.deepcopy(plain)
    log = []
    hooked.get_submodule(hooked_module).register_forward_pre_hook(lambda *_: log.append('pre'))
    hooked.get_submodule(hooked_module).register_forward_hook(lambda *_: log.append('post'))
    x = torch.rand(2, 3, 40, 48, dtype=torch.float64)
    outs = [model(x) for model in (plain, hooked)]
    assert log == ['pre', 'post']
    for model, out in zip((plain, hooked), outs):
        sum((o * o).sum() for o in out).backward()
    for a, b in zip(*outs):
        assert b.is_contiguous()
        torch.testing.assert_close(b, a)
    for (name, a), b in zip(plain.named_parameters(), hooked.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


class _Conv3x3Plugin(torch.nn.Module):
    """A plugin holding a plain 3x3 conv: the backbone stores its weight channels-last."""

    def __init__(self, in_channels, postfix=''):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_weights_are_rearranged_after_whatever_replaced_or_relaid_them():
    """The forward pass keeps its list of conv weights to arrange (no walk of the module tree per
    call), and forgets it whenever parameters may have changed: .to(), a state-dict load (with
    assign=True the Parameters are new ones), train() after a module was swapped."""
    from mmengine.registry import MODELS
    if '_Conv3x3Plugin' not in MODELS.module_dict:
        MODELS.register_module(module=_Conv3x3Plugin)
    plugins = [dict(cfg=dict(type='_Conv3x3Plugin'), position='after_conv2')]

    def plugin_weights(model):
        return [m.weight for m in model.modules() if type(m) is torch.nn.Conv2d]

    def arranged(model):
        return [p.is_contiguous(memory_format=torch.channels_last) for p in plugin_weights(model)]

    model = build('resnest14', plugins=plugins).eval()
    n = len(plugin_weights(model))
    assert n and arranged(model) == [False] * n  # as built
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        assert arranged(model) == [True] * n
        walked = []
        modules = model.modules
        model.modules = lambda: walked.append(1) or modules()
        model(x)
        assert not walked  # the second call used the kept list
        del model.modules
        model.to(memory_format=torch.contiguous_format)
        model(x)
        assert arranged(model) == [True] * n
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        model.load_state_dict(state, assign=True)
        assert arranged(model) == [False] * n
        model(x)  # the Parameters view the dict's tensors: moved, they would no longer
        assert arranged(model) == [False] * n
        del state
        model(x)
        assert arranged(model) == [True] * n
        block = model.layer1[0]
        name = block.plugin_names['after_conv2'][0]
        setattr(block, name, _Conv3x3Plugin(getattr(block, name).conv.in_channels))
        assert arranged(model) == [False] + [True] * (n - 1)
        model.eval()
        model(x)
        assert arranged(model) == [True] * n
    # Off the CPU (a GPU under autocast) the spatial convs' weights follow too: cuDNN's
    # channels-last kernels would otherwise copy them per call. On CPU they are left to arrange
    # their own, per way.
    fresh = build('resnest14')
    spatial = [m.weight for m in fresh.modules() if isinstance(m, SpatialConv2d)]
    fresh._weights_to_channels_last(torch.empty(0))
    assert spatial and not any(w.is_contiguous(memory_format=torch.channels_last)
                               for w in spatial)
    fresh._weights_to_channels_last(torch.empty(0, device='meta'))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in spatial)


def test_backbone_pickles_with_its_hooks():
    """torch.save(model) and multiprocessing pickle the whole module, its hooks included."""
    import pickle
    model = build('resnest14').eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        copy_ = pickle.loads(pickle.dumps(model))
        for a, b in zip(copy_(x), ref):
            torch.testing.assert_close(a, b)


def test_other_conv_types_keep_their_weights_layout():
    """A conv_cfg conv (mmcv's weight-standardised conv views its weight as NCHW) runs inside a
    channels-last backbone with its weight as built."""
    torch.manual_seed(0)
    conv_cfg = dict(type='ConvWS')
    # float64: standardised weights of these tiny convs amplify float32 rounding.
    model = build('resnest14', conv_cfg=conv_cfg).double().eval()
    nchw = build('resnest14', conv_cfg=conv_cfg, channels_last=False).double().eval()
    nchw.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(model(x), nchw(x)):
            torch.testing.assert_close(a, b)
    ws = [m.weight for m in model.modules() if type(m).__name__ == 'ConvWS2d']
    assert ws and all(w.is_contiguous() for w in ws)


def test_channels_last_with_dcn_is_refused_and_auto_stays_nchw():
    dcn = dict(type='DCNv2', deform_groups=1, fallback_on_stride=False)
    with pytest.raises(ValueError, match='channels_last'):
        build('resnet50', dcn=dcn, stage_with_dcn=(False, True, True, True), channels_last=True)
    with pytest.raises(ValueError, match='channels_last'):
        build('resnet50', channels_last='yes')


def test_split_attention_needs_inputs_the_split_conv_can_group():
    from resnest_mm.models.layers.split_attention import SplitAttentionConv2d
    with pytest.raises(ValueError, match=r'in_channels=10 .* multiple of groups \* radix = 4'):
        SplitAttentionConv2d(in_channels=10, channels=10, groups=2, radix=2)
    # The backbone names its own argument: each cardinal group of stage 1 is 5 wide.
    with pytest.raises(ValueError, match='radix=2 .* which is 5 in stage 1'):
        ResNeSt(depth=14, base_channels=8, stem_channels=16, groups=2, base_width=5)


def test_split_attention_conv_checks_its_geometry_and_layers():
    from resnest_mm.models.layers.split_attention import SplitAttentionConv2d
    for kwargs, match in ((dict(stride=0), 'stride=0'), (dict(padding=-1), 'padding=-1'),
                          (dict(dilation=0), 'dilation=0'), (dict(kernel_size=0), 'kernel_size'),
                          (dict(stride=True), 'stride=True'),
                          (dict(norm_cfg=dict(type='BNX')), "norm_cfg=.*'BNX'"),
                          (dict(conv_cfg='x'), "conv_cfg='x'")):
        with pytest.raises(ValueError, match=match):
            SplitAttentionConv2d(in_channels=64, channels=64, **kwargs)


def test_width_follows_mmdetection_when_base_width_is_not_given():
    """MMDetection's ResNet (and ResNeXt/ResNeSt with one group) keep the 3x3 width at
    ``planes`` whatever ``base_channels`` is: a narrow ResNet is narrow throughout."""
    from mmdet.models.backbones import ResNeSt as MMResNeSt, ResNet as MMResNet
    for ours, theirs in ((ResNet(depth=50, base_channels=16),
                          MMResNet(depth=50, base_channels=16)),
                         (ResNeSt(depth=50, base_channels=16, stem_channels=64),
                          MMResNeSt(depth=50, base_channels=16, stem_channels=64,
                                    avg_down_stride=True))):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    # Given, base_width is channels per group at base_channels planes (the demo configs' rule).
    assert ResNeSt(depth=14, base_channels=16, base_width=32, stem_channels=32
                   ).layer1[0].conv1.out_channels == 32


def test_avg_down_stride_is_mmdetections_name_for_avd():
    assert ResNeSt(depth=50, avg_down_stride=False).layer2[0].avd is False
    assert ResNeSt(depth=50, avg_down_stride=True).layer2[0].avd is True


def test_a_conv_cfg_that_needs_nchw_keeps_the_network_nchw():
    """mmcv's DCNv2 through conv_cfg reads its input as NCHW memory: computed channels-last it
    gave wrong outputs; auto now stays NCHW, and channels_last=True is refused."""
    import mmcv.ops  # noqa: F401  registers DCN/DCNv2
    from mmdet.models.backbones import ResNet as MMResNet
    cfg = dict(depth=18, base_channels=8, conv_cfg=dict(type='DCNv2', deform_groups=1))
    with pytest.raises(ValueError, match='channels_last'):
        ResNet(**cfg, channels_last=True)
    torch.manual_seed(0)
    ours, theirs = ResNet(**cfg), MMResNet(**cfg)
    ours.eval()
    theirs.eval()  # MMDetection's train() returns None: not chained
    for m in ours.modules():
        if hasattr(m, 'conv_offset'):  # non-zero offsets, so that the sampling matters
            torch.nn.init.normal_(m.conv_offset.weight, std=0.1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_init_cfg_entries_beside_pretrained_are_applied(tmp_path):
    """Like mmengine: the other entries first (plugins the checkpoint lacks get them), then the
    checkpoint."""
    plugins = [dict(cfg=dict(type='ContextBlock', ratio=0.25), position='after_conv3')]
    ckpt = tmp_path / 'r18.pth'
    torch.save(ResNet(depth=50, base_channels=8).state_dict(), ckpt)
    model = ResNet(depth=50, base_channels=8, plugins=plugins, init_cfg=[
        dict(type='Pretrained', checkpoint=str(ckpt)),
        dict(type='Constant', val=0.5, layer='Conv2d')])
    model.init_weights()
    plugin = model.layer1[0].context_block.conv_mask.weight
    assert torch.all(plugin == 0.5)
    assert torch.equal(model.conv1.weight, torch.load(ckpt)['conv1.weight'])


def test_norm_kinds_mm_users_use_are_accepted():
    import mmcv.ops  # noqa: F401  registers MMSyncBN (a plain Module, not a _BatchNorm)
    from resnest_mm.models.checks import check_norm_kind
    for layer in ('BN', 'BN2d', 'SyncBN', 'MMSyncBN', 'GN', 'IN2d', torch.nn.BatchNorm2d,
                  mmcv.ops.SyncBatchNorm):
        check_norm_kind('ResNet', dict(type=layer))
    with pytest.raises(ValueError, match='InstanceNorm2d|instance norm'):
        ResNeSt(depth=14, base_channels=8, stem_channels=16,
                norm_cfg=dict(type=torch.nn.InstanceNorm2d))


def test_pretrained_init_given_as_its_class_loads_and_is_not_zeroed(tmp_path):
    from mmengine.model.weight_init import PretrainedInit
    src = ResNet(depth=50, base_channels=8)
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(0.5, 1.0)
    path = tmp_path / 'r50.pth'
    torch.save(src.state_dict(), path)
    model = ResNet(depth=50, base_channels=8,
                   init_cfg=dict(type=PretrainedInit, checkpoint=str(path)))
    model.init_weights()
    for (name, a), b in zip(model.state_dict().items(), src.state_dict().values()):
        assert torch.equal(a, b), name  # zero_init_residual did not overwrite bn3

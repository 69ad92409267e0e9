"""The benchmark, in its fast mode on tiny networks: every column filled, ratios from one run."""
import importlib.metadata
import importlib.util
import json
import os

import pytest
import torch

from resnest_mm import benchmark as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RESNEST = dict(base_channels=8, base_width=8)  # groups=1: the 3x3 width is `planes`
# Ours widens the bottleneck to base_width (64) channels per group at base_channels; the
# built-ins keep it at `planes`. base_width = base_channels is the same network in both.
TINY = dict(base_channels=8, block_kwargs=dict(base_width=8))


def fast(**kwargs) -> bm.BenchmarkSettings:
    return bm.BenchmarkSettings(**dict(dict(batch=2, size=32, iters=3, warmup=1, threads=1),
                                       **kwargs))


@pytest.fixture(scope='module')
def result():
    specs = [bm.resolve_spec('resnest50', **TINY_RESNEST), bm.resolve_spec('resnet50', **TINY)]
    return bm.run_benchmark(specs, fast(peers=('mmdet',)), progress=False)


def test_every_column_is_filled(result):
    header, rows = bm.measurement_table(result)
    assert len(rows) == 4  # ours and MMDetection's, two networks
    assert [(r[0], r[1].split('.')[0]) for r in rows[:2]] == [('resnest50', 'resnest_mm'),
                                                              ('resnest50', 'mmdet')]
    for row in rows:
        assert len(row) == len(header)
        assert all(cell not in ('', 'n/a', None) for cell in row), dict(zip(header, row))
    for m in result.measurements:
        assert len(m.times['infer']) == len(m.times['train']) == 3
        assert all(t > 0 for t in m.times['infer'] + m.times['train'])
        assert m.peak_bytes['train'] > m.peak_bytes['infer'] > 0
        assert m.macs > 0 and m.params > 0
        assert m.max_abs_diff_vs_ours < 1e-4  # same network, same weights


def test_peers_have_the_same_architecture(result):
    for net in result.networks:
        ours, peer = result.get(net, 'ours'), result.get(net, 'mmdet')
        assert peer.params == ours.params
        # Counted per implementation: equal up to how an op is written (ResNeSt's attention).
        assert peer.macs == pytest.approx(ours.macs, rel=0.01)


def test_res2net_peer_and_its_note():
    res = bm.run_benchmark([bm.resolve_spec('res2net50', base_channels=8, base_width=4)],
                           fast(peers=('mmdet',), modes=('infer',), flops=False, memory=False,
                                iters=1, warmup=0), progress=False)
    ours, peer = res.get('res2net50', 'ours'), res.get('res2net50', 'mmdet')
    assert peer.params == ours.params
    # Ours is the official network: the one extra pool changes the output, and the note says so.
    assert peer.max_abs_diff_vs_ours > 1e-4
    assert 'MMDetection lacks' in peer.note and 'MMDetection lacks' in bm.render_markdown(res)


def test_ratios_come_from_the_same_run(result):
    ratios = bm.peer_ratios(result)
    assert [(r['network'], r['peer']) for r in ratios] == [('resnest50', 'mmdet'),
                                                           ('resnet50', 'mmdet')]
    for r in ratios:
        ours, peer = result.get(r['network'], 'ours'), result.get(r['network'], 'mmdet')
        for mode in ('infer', 'train'):
            assert r[f'{mode}_speedup'] == pytest.approx(peer.median(mode) / ours.median(mode))
            rounds = sorted(p / o for p, o in zip(peer.times[mode], ours.times[mode]))
            q1, q3 = r[f'{mode}_speedup_quartiles']
            assert rounds[0] <= q1 <= q3 <= rounds[-1]
            assert r[f'{mode}_memory_ratio'] == pytest.approx(
                ours.peak_bytes[mode] / peer.peak_bytes[mode])
    flops = bm.flop_ratios(result)
    assert [(r['network'], r['reference']) for r in flops] == [('resnest50', 'resnet50')]
    r = flops[0]
    s, n = result.get('resnest50', 'ours'), result.get('resnet50', 'ours')
    assert r['flop_ratio'] == pytest.approx(s.macs / n.macs) and r['flop_ratio'] > 1
    assert r['train_time_ratio'] == pytest.approx(s.median('train') / n.median('train'))
    assert r['train_within_flop_ratio'] == (r['train_time_ratio'] <= r['flop_ratio'])
    q1, q3 = r['train_time_ratio_quartiles']
    rounds = sorted(a / b for a, b in zip(s.times['train'], n.times['train']))
    assert rounds[0] <= q1 <= q3 <= rounds[-1]


@pytest.mark.parametrize('network, cls, depth, reference', [
    ('res2net50', 'Res2Net', 50, 'resnet50'), ('res2net101', 'Res2Net', 101, 'resnet101'),
    ('resnext50_32x4d', 'ResNeXt', 50, 'resnet50'),
    ('faster_rcnn_resnest50_fpn', 'ResNeSt', 50, 'resnet50'),
    ('my_backbone', 'ResNeSt', 101, 'resnet101'),  # the depth is the network's, not its name's
    ('resnest269', 'ResNeSt', 269, None),
    # ResNets of any name or style are the references, never compared with one.
    ('resnet50', 'ResNet', 50, None), ('faster_rcnn_resnet50_fpn', 'ResNet', 50, None),
    ('resnet50_v1d', 'ResNetV1d', 50, None),
])
def test_flop_ratio_reference_is_the_resnet_of_the_same_depth(network, cls, depth, reference):
    def ours(net, cls, depth):
        return bm.Measurement(net, 'ours', f'resnest_mm.{cls}', '', params=1, depth=depth)
    run = bm.BenchmarkResult(fast(), {}, [ours('resnet50', 'ResNet', 50),
                                          ours('resnet101', 'ResNet', 101),
                                          ours(network, cls, depth)], [])
    assert bm._base_depth_resnet(run, network) == reference


def test_paired_quartiles_pair_rounds_not_sorted_times():
    # Round by round the peer takes twice as long, while a drift spreads both series: the
    # per-round ratio has no spread, which quartiles of the separate series would not show.
    ours = [1.0, 3.0, 2.0, 5.0, 4.0]
    peer = [2 * t for t in ours]
    assert bm.paired_quartiles(peer, ours) == pytest.approx((2.0, 2.0))
    assert bm.paired_quartiles([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx((1.5, 2.5))
    # Ratios 2, 1/3, 1.5: quartiles of the separate or sorted series would give (1, 1).
    assert bm.paired_quartiles([2.0, 1.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx((11 / 12, 1.75))
    assert bm.paired_quartiles([2.0], [1.0]) == (2.0, 2.0)
    assert bm.paired_quartiles([], []) is None


def test_markdown_shows_the_per_round_spread(result):
    text = bm.render_markdown(result)
    r = bm.peer_ratios(result)[0]
    q1, q3 = r['train_speedup_quartiles']
    assert f"{r['train_speedup']:.2f}x ({q1:.2f}-{q3:.2f})" in text


def test_allocator_settings_are_recorded_and_shown(result, monkeypatch):
    monkeypatch.delenv('LD_PRELOAD', raising=False)
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.trim_threshold=1000000000')
    env = bm.environment(fast())
    assert env['allocator_env'] == {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1000000000'}
    result.environment, saved = env, result.environment
    try:
        assert '; GLIBC_TUNABLES=glibc.malloc.trim_threshold=1000000000.' in bm.render_markdown(result)
    finally:
        result.environment = saved


def test_cpu_vector_capability_is_recorded_and_shown(result, monkeypatch):
    """CPU speed-ups differ between AVX2 and AVX-512 machines: a run names what it had."""
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    env = bm.environment(fast())
    assert env['cpu_capability'] == 'AVX512'
    result.environment, saved = dict(env, processor='Some CPU'), result.environment
    try:
        assert 'cpu (Some CPU, AVX512, ' in bm.render_markdown(result)
    finally:
        result.environment = saved


def test_package_versions_are_recorded():
    """The official resnest package has no __version__; its installed version is still named.
    So is the resnest_mm measured, and where it was imported from (a checkout or a release)."""
    import resnest_mm
    env = bm.environment(fast())
    for pkg in ('mmengine', 'mmcv', 'mmdet', 'resnest'):
        assert env[pkg] == importlib.metadata.version(pkg), pkg
    assert env['resnest_mm'] == resnest_mm.__version__
    assert env['resnest_mm_path'] == os.path.dirname(resnest_mm.__file__)


def test_peer_packages_that_are_not_installed_are_skipped_with_the_reason(monkeypatch):
    # MMDetection is not a requirement of resnest_mm itself; neither is the official package.
    import sys
    for name in ('mmdet', 'mmdet.registry', 'mmdet.models', 'resnest', 'resnest.torch'):
        monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package imports as
    res = bm.run_benchmark([bm.resolve_spec('resnest50', **TINY_RESNEST)],
                           fast(modes=('infer',), flops=False, memory=False, iters=1),
                           progress=False)
    assert [m.source for m in res.measurements] == ['ours']
    assert {d['peer']: d['reason'] for d in res.skipped_peers} == {
        'official': 'the official resnest package is not installed (pip install resnest==0.0.5)',
        'mmdet': 'MMDetection is not installed (pip install mmdet==3.3.0)'}


def test_interleaved_round_robin(monkeypatch):
    """Calls alternate between implementations, every other round reversed: A B, B A, A B ...,
    never A A ... B B, and A does not always run first."""
    order = []
    original = bm._runner

    def spy(impl, mode, x, settings):
        run = original(impl, mode, x, settings)

        def logged():
            order.append((mode, impl.source))
            run()
        return logged
    monkeypatch.setattr(bm, '_runner', spy)
    specs = [bm.resolve_spec('resnet50', **TINY)]
    bm.run_benchmark(specs, fast(peers=('mmdet',), flops=False, memory=False, iters=2),
                     progress=False)
    rounds = [('ours', 'mmdet'), ('mmdet', 'ours'), ('ours', 'mmdet')]
    assert order == [(mode, s) for mode in ('infer', 'train') for r in rounds for s in r]


def test_official_peer_gets_the_same_weights():
    specs = [bm.resolve_spec('resnest50')]
    res = bm.run_benchmark(specs, fast(peers=('official',), modes=('infer',), flops=False,
                                       memory=False, iters=1, warmup=0), progress=False)
    off = res.get('resnest50', 'official')
    assert off.label == 'resnest.torch.resnest50'
    assert off.params == res.get('resnest50', 'ours').params  # stages only, no classifier
    assert off.max_abs_diff_vs_ours < 1e-4
    assert not res.skipped_peers


def test_missing_peers_are_reported_not_faked():
    res = bm.run_benchmark([bm.resolve_spec('resnest14', **TINY_RESNEST)],
                           fast(modes=('infer',), flops=False, memory=False, iters=1),
                           progress=False)
    assert [m.source for m in res.measurements] == ['ours']
    assert {d['peer'] for d in res.skipped_peers} == {'mmdet', 'official'}
    text = bm.render_markdown(res)
    assert 'no official peer' in text and 'no mmdet peer' in text


def test_config_file_backbone(tmp_path):
    cfg = tmp_path / 'net.py'
    cfg.write_text("model = dict(backbone=dict(type='resnest_mm.ResNeSt', depth=50, "
                   "frozen_stages=1, norm_eval=True, out_indices=(3,), "
                   "init_cfg=dict(type='Pretrained', checkpoint='missing.pth')))\n")
    spec = bm.resolve_spec(str(cfg))
    assert spec.label == 'net' and spec.variant == 'resnest50'  # the official one is found
    assert spec.config['frozen_stages'] == -1 and 'init_cfg' not in spec.config
    bad = tmp_path / 'mmdet_net.py'
    bad.write_text("model = dict(backbone=dict(type='ResNeSt', depth=50))\n")
    with pytest.raises(ValueError, match="model.backbone.type='ResNeSt'"):
        bm.resolve_spec(str(bad))


@pytest.mark.parametrize('kwargs,match', [
    (dict(batch=0), 'batch=0'), (dict(size=16), 'size=16'), (dict(device='tpu'), 'device'),
    (dict(modes=('fit',)), 'modes'), (dict(peers=('timm',)), 'peers'),
    (dict(compile='tensorrt'), "compile='tensorrt'.*inductor"),
    (dict(compile='inductor', warmup=0), 'warmup=0.*compile'),
    (dict(amp='False'), 'amp'), (dict(memory='no'), 'memory'), (dict(channels_last=0), 'channels'),
    (dict(modes=('infer', 'infer')), 'distinct'), (dict(modes='infer'), 'modes'),
    (dict(peers=None), 'peers=None'),
    (dict(batch=1), r'batch=1 is not valid with the train mode: batch norm in training needs more '
                    r'than one value per channel'),
])
def test_bad_settings_fail_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bm.run_benchmark([bm.resolve_spec('resnet50', **TINY)], fast(**kwargs), progress=False)


def test_one_image_is_benchmarked_in_inference():
    res = bm.run_benchmark([bm.resolve_spec('resnest14', **TINY_RESNEST)],
                           fast(batch=1, modes=('infer',), peers=(), flops=False, memory=False,
                                iters=1, warmup=0), progress=False)
    assert res.get('resnest14', 'ours').median('infer') > 0


def test_unknown_network():
    with pytest.raises(ValueError, match="network 'resnest51'"):
        bm.resolve_spec('resnest51')
    with pytest.raises(FileNotFoundError, match='nope.py'):
        bm.resolve_spec('nope.py')


def _cli():
    spec = importlib.util.spec_from_file_location('benchmark_cli',
                                                  os.path.join(ROOT, 'tools', 'benchmark.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.parametrize('args, message', [
    (['--fast', '--iters', '7'], 'give either --fast or --iters/--warmup'),
    (['resnet18'], "networks ['resnet18'] are given more than once"),
    (['--json', '{tmp}'], "--json='{tmp}' is a folder"),
    (['--png', '{tmp}/chart.xyz'], "the extension 'xyz' is not one of"),
    (['--batch', '0'], 'batch=0 is not valid'),
    (['--peers', 'none,mmdet'], "'none' cannot be combined"),
])
def test_cli_refuses_bad_arguments_before_running(tmp_path, capsys, args, message):
    tmp = str(tmp_path)
    with pytest.raises(SystemExit) as err:
        _cli().main(['resnet18', *[a.format(tmp=tmp) for a in args], '--no-progress'])
    assert err.value.code == 2
    assert message.format(tmp=tmp) in capsys.readouterr().err


def test_check_output_file(tmp_path):
    from resnest_mm.report import check_output_file
    check_output_file(str(tmp_path / 'new' / 'deeper' / 'out.json'), name='out')  # made later
    (tmp_path / 'file').write_text('')
    with pytest.raises(ValueError, match=r"out=.*: .*file' is a file, not a folder"):
        check_output_file(str(tmp_path / 'file' / 'out.json'), name='out')
    with pytest.raises(ValueError, match='is a folder'):
        check_output_file(str(tmp_path), name='out')
    with pytest.raises(ValueError, match="'txt' is not one of png, svg"):
        check_output_file(str(tmp_path / 'a.txt'), name='out', extensions=['png', 'svg'])


def test_cli_writes_markdown_json_and_png(tmp_path, capsys, svg_backend):
    import matplotlib
    cli = _cli()
    out_json, out_png = tmp_path / 'b.json', tmp_path / 'b.png'
    cli.main(['resnet18', '--fast', '--size', '32', '--peers', 'mmdet', '--threads', '1',
              '--mode', 'infer', '--no-progress', '--json', str(out_json), '--png', str(out_png)])
    stdout = capsys.readouterr().out
    assert '| resnet18 | mmdet.ResNet |' in stdout
    assert 'infer speed-up (peer time / ours)' in stdout
    data = json.loads(out_json.read_text())
    assert data['settings']['batch'] == 2 and data['settings']['iters'] == 3
    assert len(data['measurements']) == 2 and len(data['peer_ratios']) == 1
    assert out_png.read_bytes()[:4] == b'\x89PNG'
    assert matplotlib.get_backend() == svg_backend  # the caller's backend is left alone


def test_amp_and_channels_last_on_cpu(monkeypatch):
    seen = []
    original = bm._call

    def spy(model, x):
        seen.append((type(model).__module__.split('.')[0], torch.is_autocast_enabled('cpu'),
                     x.is_contiguous(memory_format=torch.channels_last)))
        return original(model, x)
    monkeypatch.setattr(bm, '_call', spy)
    res = bm.run_benchmark([bm.resolve_spec('resnet50', **TINY)],
                           fast(peers=('mmdet',), amp=True, channels_last=True, flops=False,
                                iters=1, warmup=0), progress=False)
    for m in res.measurements:
        assert m.times['infer'] and m.times['train'] and m.peak_bytes['train'] > 0
    # Every timed call of both implementations ran under bfloat16 autocast on channels-last input.
    assert {(pkg, amp, cl) for pkg, amp, cl in seen if amp} == {('resnest_mm', True, True),
                                                                ('mmdet', True, True)}
    assert sum(amp for _, amp, _ in seen) == 2 * 2 * 2  # 2 implementations, 2 modes, 1 + memory
    assert 'AMP, channels-last' in bm.render_markdown(res)


def test_memory_is_measured_from_no_gradients(monkeypatch):
    # On CUDA a call that frees the previous call's gradients would net them out of its peak.
    had_grads = []
    original = bm.peak_memory

    def spy(run, settings):
        had_grads.append(any(p.grad is not None for p in spy.models[len(had_grads)].parameters()))
        return original(run, settings)
    original_build = bm.build_implementations

    def build(spec, peers):
        impls, skipped = original_build(spec, peers)
        spy.models += [i.model for i in impls]
        return impls, skipped
    spy.models = []
    monkeypatch.setattr(bm, 'peak_memory', spy)
    monkeypatch.setattr(bm, 'build_implementations', build)
    bm.run_benchmark([bm.resolve_spec('resnet50', **TINY)],
                     fast(peers=('mmdet',), modes=('train',), flops=False, iters=1, warmup=0),
                     progress=False)
    assert had_grads == [False, False]


def test_with_cp_and_frozen_norms_are_benchmarked_alike(tmp_path):
    # Config files of the official network's architecture: matched to the variant resnest50.
    for name, extra in (('cp', 'with_cp=True'),
                        ('frozen', "norm_cfg=dict(type='BN', requires_grad=False)")):
        cfg = tmp_path / f'{name}.py'
        cfg.write_text(f"model = dict(backbone=dict(type='resnest_mm.ResNeSt', depth=50, "
                       f"{extra}))\n")
        spec = bm.resolve_spec(str(cfg))
        assert spec.variant == 'resnest50'
        impls, skipped = bm.build_implementations(spec, ('mmdet', 'official'))
        assert [i.source for i in impls] == ['ours', 'mmdet']
        assert impls[1].model.with_cp == impls[0].model.with_cp == (name == 'cp')
        assert [d['peer'] for d in skipped] == ['official']
        assert ('with_cp' if name == 'cp' else 'requires_grad') in skipped[0]['reason']


def test_frozen_stages_keep_the_official_peer():
    # frozen_stages turns requires_grad off too; only a norm_cfg that freezes norms matters.
    from resnest_mm.models import variant_config
    spec = bm.NetworkSpec(label='resnest50', config=dict(variant_config('resnest50'),
                                                         frozen_stages=1), variant='resnest50')
    impls, skipped = bm.build_implementations(spec, ('official',))
    assert [i.source for i in impls] == ['ours', 'official'] and not skipped


def test_the_callers_thread_count_is_restored():
    before = torch.get_num_threads()
    bm.run_benchmark([bm.resolve_spec('resnet50', **TINY)],
                     fast(peers=(), threads=before + 1, modes=('infer',), flops=False,
                          memory=False, iters=1, warmup=0), progress=False)
    assert torch.get_num_threads() == before


def test_compiled_implementations_are_timed_compiled():
    """--compile: each implementation and mode runs as a compiled graph (counted by Dynamo), the
    compiling in the warm-up; the report says so."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    res = bm.run_benchmark([bm.resolve_spec('resnet50', **TINY)],
                           fast(peers=('mmdet',), compile='aot_eager', flops=False, memory=False,
                                iters=2), progress=False)
    # One graph per implementation and mode, none of them broken up.
    assert counters['stats']['unique_graphs'] == 4
    assert not counters['graph_break']
    for m in res.measurements:
        assert len(m.times['infer']) == len(m.times['train']) == 2
    assert 'fp32, torch.compile (aot_eager), cpu' in bm.render_markdown(res)
    assert bm.to_json(res)['settings']['compile'] == 'aot_eager'

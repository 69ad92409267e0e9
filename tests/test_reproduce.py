"""The reproduction pipeline: reading work dirs, planning commands, rendering the tables.

The fixture work dirs (tests/fixtures/reproduce/runs) hold what mmengine writes, for rows that
finished (by their final validation, or by a test run), stopped part way, failed, and finished
training without a final evaluation.
"""
import importlib.util
import json
import os
import re
import shutil
import sys

import pytest

from resnest_mm import paper_results as pr
from resnest_mm import reproduce as rp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, 'tests', 'fixtures', 'reproduce', 'runs')


def _cli():
    spec = importlib.util.spec_from_file_location('reproduce_cli',
                                                  os.path.join(ROOT, 'tools', 'reproduce.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('key,status,metrics,detail', [
    ('faster_rcnn_resnest50', 'finished', {'bbox_mAP': 42.1}, 'final validation'),
    # The test run's numbers win over the validation's.
    ('mask_rcnn_resnest50', 'finished', {'bbox_mAP': 42.75, 'segm_mAP': 38.12}, 'test'),
    ('deeplabv3_resnest50_ade20k', 'finished', {'mIoU': 45.31}, 'final validation'),
    ('faster_rcnn_resnet50', 'unfinished', {}, 'epoch 7/12; last validation at epoch 6: '
                                               'bbox_mAP 35.20'),
    ('deeplabv3_resnet50_ade20k', 'unfinished', {}, 'iter 160000/160000, trained, not evaluated'),
    ('cascade_rcnn_resnest50', 'failed', {}, 'train exited with 1'),
    ('cascade_rcnn_resnest101', 'not run', {}, ''),
])
def test_collect_row_states(key, status, metrics, detail):
    res = rp.collect_row(os.path.join(RUNS, key))
    assert res.status == status
    assert res.metrics.keys() == metrics.keys()
    for name, value in metrics.items():
        assert res.metrics[name] == pytest.approx(value)
    assert detail in res.detail if detail else res.detail == ''


def test_published_schedules_and_toolbox_references():
    # REFERENCE.md: the PyTorch-Encoding / GluonCV recipe is 120 epochs; MMSegmentation's 160k.
    for key in ('resnet50', 'resnet101', 'resnest50', 'resnest101'):
        row = pr.row(f'deeplabv3_{key}_ade20k')
        assert row.published.schedule == '120 ep'
        assert all(ref.schedule == '160k' for ref in row.also)
    # MMDetection's Cascade Mask R-CNN S-50 / S-101, like its other ResNeSt rows.
    assert pr.row('cascade_mask_rcnn_resnest50').also[0].values == {'bbox_mAP': 45.4,
                                                                    'segm_mAP': 39.5}
    assert pr.row('cascade_mask_rcnn_resnest101').also[0].values == {'bbox_mAP': 47.7,
                                                                     'segm_mAP': 41.4}


def test_a_test_run_before_the_last_training_run_does_not_count(tmp_path):
    work = tmp_path / 'faster_rcnn_resnest50'
    shutil.copytree(os.path.join(RUNS, 'faster_rcnn_resnest50'), work)
    # A test of an intermediate checkpoint, run before the training that finished the row.
    early = work / '20231231_120000'
    early.mkdir()
    (early / '20231231_120000.json').write_text('{"coco/bbox_mAP": 0.352}')
    res = rp.collect_row(str(work))
    assert res.detail == 'final validation' and res.metrics['bbox_mAP'] == pytest.approx(42.1)
    # A test after it is the row's result.
    late = work / '20240102_120000'
    late.mkdir()
    (late / '20240102_120000.json').write_text('{"coco/bbox_mAP": 0.425}')
    res = rp.collect_row(str(work))
    assert res.detail == 'test' and res.metrics['bbox_mAP'] == pytest.approx(42.5)


def test_tables_side_by_side_with_published_numbers():
    rows = rp.full_rows()
    text = rp.render_markdown(rows, rp.collect(rows, RUNS))
    lines = text.splitlines()

    def line(method, backbone):
        hits = [ln for ln in lines if ln.startswith(f'| {method} | {backbone} |')]
        assert len(hits) == 1, (method, backbone)
        return [c.strip() for c in hits[0].strip('|').split('|')]

    for title, _ in pr.TABLES.values():
        assert f'### {title}' in text
    assert line('Faster R-CNN', 'ResNeSt-50')[2:5] == ['42.33', '42.10', '-0.23']
    assert line('Faster R-CNN', 'ResNeSt-50')[-1] == 'finished'
    assert line('Mask R-CNN', 'ResNeSt-50')[2:8] == ['42.81', '42.75', '-0.06',
                                                     '38.14', '38.12', '-0.02']
    assert line('DeepLabV3', 'ResNeSt-50')[2:5] == ['45.12', '45.31', '+0.19']
    unfinished = line('Faster R-CNN', 'ResNet-50')
    assert unfinished[3:5] == ['—', '—'] and unfinished[-1].startswith('unfinished: epoch 7/12')
    failed = line('Cascade R-CNN', 'ResNeSt-50')
    assert failed[3] == '—' and failed[-1].startswith('failed: train exited with 1')
    assert line('DeepLabV3', 'ResNet-50')[-1].startswith('unfinished:')
    assert line('DeepLabV3', 'Res2Net-101')[2] == '—'  # nothing published
    assert line('Cascade R-CNN', 'ResNeSt-101')[-1] == 'not run'
    # Sources are cited under each table, toolbox results beside the paper's.
    assert 'arXiv:2004.08955' in text and 'configs/resnest/metafile.yml' in text
    assert '42.66 (160k)' in line('DeepLabV3', 'ResNet-50')[6]
    assert text.rstrip().endswith('Rows: 1 failed, 3 finished, 20 not run, 2 unfinished')


def test_commands_skip_finished_and_resume_unfinished():
    by_key = {r.key: r for r in rp.full_rows()}

    def stages(key):
        return [(s, ' '.join(a)) for s, a in rp.commands(by_key[key], RUNS, demo=False)]

    assert stages('faster_rcnn_resnest50') == []
    assert stages('mask_rcnn_resnest50') == []
    trained = stages('deeplabv3_resnet50_ade20k')  # only the evaluation is missing
    assert [s for s, _ in trained] == ['test']
    assert trained[0][1] == ('bash tools/dist_test.sh configs/deeplabv3_resnet50_ade20k.py '
                             '/mnt/cluster/resnest_mm/work_dirs/reproduce/deeplabv3_resnet50_'
                             f'ade20k/iter_160000.pth 4 --work-dir {RUNS}/deeplabv3_resnet50_ade20k')
    resumed = stages('faster_rcnn_resnet50')
    assert [s for s, _ in resumed] == ['train', 'test']
    assert resumed[0][1].endswith('--resume')
    fresh = stages('cascade_rcnn_resnest101')
    assert fresh[0][1] == ('bash tools/dist_train.sh configs/cascade_rcnn_resnest101_fpn.py 8 '
                           f'--work-dir {RUNS}/cascade_rcnn_resnest101')
    assert '$(cat ' in fresh[1][1]
    assert 'resume' not in stages('cascade_rcnn_resnest50')[0][1]  # failed, no checkpoint


@pytest.mark.parametrize('args, message', [
    (['--collect-only', '--dry-run'], 'give one'),
    (['--demo-iters', '5', '--dry-run'], '--demo-iters only applies with --demo'),
    (['--demo-dir', 'configs/demo', '--demo-iters', '5'], 'and --demo-iters only apply with'),
    (['--demo', '--gpus', '4', '--dry-run'], '--gpus applies to the full-scale rows'),
    (['--rows', '(', '--dry-run'], "rows: '(' is not a regular expression"),
    (['--rows', 'no_such_row', '--dry-run'], "match no row"),
    (['--collect-only', '--gpus', '2'], '--gpus only applies when rows run'),
    (['--demo', '--collect-only', '--demo-iters', '3'], '--demo-iters only applies when'),
    (['--dry-run', '--out', 'somewhere'], '--dry-run writes none'),
])
def test_cli_refuses_arguments_it_would_ignore_or_cannot_use(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as err:
        _cli().main([*args, '--work-root', str(tmp_path)])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing was run or written


def test_dry_run_prints_every_full_scale_command(tmp_path, capsys):
    _cli().main(['--dry-run', '--work-root', str(tmp_path), '--gpus', '2'])
    out = capsys.readouterr().out.splitlines()
    train = [ln for ln in out if ln.startswith('bash tools/dist_train.sh')]
    test = [ln for ln in out if ln.startswith('bash tools/dist_test.sh')]
    assert len(train) == len(test) == len(pr.ROWS) == 26
    configs = {ln.split()[2] for ln in train}
    expected = {f'configs/{m}_{b}_fpn.py' for m in ('faster_rcnn', 'cascade_rcnn', 'mask_rcnn',
                                                    'cascade_mask_rcnn')
                for b in ('resnet50', 'resnet101', 'resnest50', 'resnest101')}
    expected |= {f'configs/{m}_{b}_fpn.py' for m in ('faster_rcnn', 'mask_rcnn')
                 for b in ('resnext101_32x4d', 'res2net101')}
    expected |= {f'configs/deeplabv3_{b}_ade20k.py' for b in (
        'resnet50', 'resnet101', 'resnest50', 'resnest101', 'resnext101_32x4d', 'res2net101')}
    assert configs == expected
    assert all(ln.split()[3] == '2' for ln in train)
    # 2 GPUs instead of 8 or 4: a quarter or half the batch, so the learning rate follows it.
    assert all(ln.endswith('--cfg-options auto_scale_lr.enable=True') for ln in train)
    assert any('learning rate is scaled' in ln for ln in out)
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_gpus_of_the_recipe_keep_its_learning_rate():
    row = rp.full_rows(['^faster_rcnn_resnest50$'])[0]
    assert rp.with_gpus(row, 8) is row
    assert rp.with_gpus(row, 16).cfg_options == ('auto_scale_lr.enable=True',)
    with pytest.raises(ValueError, match='gpus=0 is not valid'):
        rp.with_gpus(row, 0)


def test_row_selection_and_bad_input():
    assert [r.key for r in rp.full_rows(['^mask_rcnn_resnest'])] == ['mask_rcnn_resnest50',
                                                                     'mask_rcnn_resnest101']
    assert {r.table for r in rp.full_rows(tables=['ade20k'])} == {'ade20k'}
    with pytest.raises(ValueError, match='match no row'):
        rp.full_rows(['retinanet'])
    with pytest.raises(ValueError, match="'voc'"):
        rp.full_rows(tables=['voc'])


def test_output_folders_that_cannot_be_made_are_refused_before_running(tmp_path, capsys):
    afile = tmp_path / 'afile'
    afile.write_text('')
    for args, message in ((['--work-root', str(afile)], "--work-root='"),
                          (['--work-root', str(tmp_path / 'runs'), '--out', str(afile / 'x')],
                           "--out='")):
        with pytest.raises(SystemExit) as err:
            _cli().main(['--collect-only', *args])
        assert err.value.code == 2
        captured = capsys.readouterr()
        assert message in captured.err and 'is a file' in captured.err
        assert captured.out == ''  # refused before any table was rendered
    assert sorted(os.listdir(tmp_path)) == ['afile']


def test_relative_work_root_is_made_absolute(tmp_path, capsys, monkeypatch):
    # The stages run in the repository root: a relative path would point elsewhere there.
    monkeypatch.chdir(tmp_path)
    _cli().main(['--dry-run', '--rows', '^faster_rcnn_resnest50$', '--work-root', 'runs'])
    train = [ln for ln in capsys.readouterr().out.splitlines() if 'dist_train' in ln]
    assert train[0].endswith(f'--work-dir {tmp_path}/runs/faster_rcnn_resnest50')


def _mask_rcnn_run(tmp_path, test_metrics):
    work = tmp_path / 'mask_rcnn_resnest50'
    shutil.copytree(os.path.join(RUNS, 'mask_rcnn_resnest50'), work)
    (work / '20240103_080000' / '20240103_080000.json').write_text(json.dumps(test_metrics))
    return work


def test_a_row_is_finished_only_with_every_metric_of_its_table(tmp_path):
    table_metrics = pr.TABLES['coco_inst'][1]
    # The test run gave no mask AP: the final validation's (38.0) fills it in.
    work = _mask_rcnn_run(tmp_path, {'coco/bbox_mAP': 0.427})
    res = rp.collect_row(str(work), metrics=table_metrics)
    assert res.status == 'finished'
    assert res.metrics == pytest.approx({'bbox_mAP': 42.7, 'segm_mAP': 38.0})
    # Neither gave it: not finished, and the table says what is missing.
    scalars = work / '20240101_120000' / 'vis_data' / 'scalars.json'
    scalars.write_text('\n'.join(ln for ln in scalars.read_text().splitlines()
                                 if 'segm_mAP' not in ln))
    res = rp.collect_row(str(work), metrics=table_metrics)
    assert res.status == 'unfinished'
    assert 'trained; no segm_mAP in the test run or the final validation' in res.detail
    row = rp.full_rows(['^mask_rcnn_resnest50$'])[0]
    assert [s for s, _ in rp.commands(row, str(tmp_path), demo=False)] == ['test']


def test_a_training_run_shorter_than_the_log_interval_is_still_found(tmp_path):
    # It logged no loss; the test run after it rewrote the top-level config without the
    # training's --cfg-options (max_iters 600 there, 5 in the run's own).
    work = tmp_path / 'demo_row'
    train_run, test_run = work / '20240101_120000', work / '20240101_120500'
    (train_run / 'vis_data').mkdir(parents=True)
    (test_run / 'vis_data').mkdir(parents=True)
    (train_run / 'vis_data' / 'config.py').write_text("train_cfg = dict(max_iters=5)\n")
    (train_run / 'vis_data' / 'scalars.json').write_text('{"mIoU": 20.5, "step": 5}\n')
    (test_run / 'vis_data' / 'config.py').write_text("train_cfg = dict(max_iters=600)\n")
    (test_run / '20240101_120500.json').write_text('{"mIoU": 20.6}')
    (work / 'demo.py').write_text("train_cfg = dict(max_iters=600)\n")
    (work / 'last_checkpoint').write_text(str(work / 'iter_5.pth'))
    assert rp.planned_end(str(work)) == ('iter', 5)
    res = rp.collect_row(str(work), metrics=('mIoU',))
    assert res.status == 'finished' and res.metrics == {'mIoU': 20.6}


def test_demo_schedule_logs_within_its_iterations():
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'demo',
                                       'deeplabv3_resnest14-d8_demo-ade.py'))
    assert 'default_hooks.logger.interval=5' in rp._tiny_schedule(cfg, 5)
    assert not any('logger' in o for o in rp._tiny_schedule(cfg, 40))


def test_a_test_stage_without_checkpoint_fails_and_the_next_row_goes_on(tmp_path, monkeypatch):
    rows = rp.full_rows(['^faster_rcnn_resnest50$', '^faster_rcnn_resnest101$'])
    test = ('test', [sys.executable, '-c', 'pass', '$(cat x/last_checkpoint)'])
    monkeypatch.setattr(rp, 'commands', lambda row, *a, **k: [test])
    lines: list[str] = []
    rp.run_rows(rows, str(tmp_path), demo=False, echo=lines.append, progress=False)
    for row in rows:
        res = rp.collect_row(str(tmp_path / row.key))
        assert res.status == 'failed' and f'test exited with {rp.NO_CHECKPOINT}' in res.detail
        assert 'no checkpoint' in (tmp_path / row.key / 'reproduce_test.log').read_text()
    assert any(ln.startswith('faster_rcnn_resnest101: test started (log: ') for ln in lines)
    assert sum('FAILED' in ln for ln in lines) == 2


def test_run_stage_records_exit_status(tmp_path):
    row = rp.full_rows(['^faster_rcnn_resnest50$'])[0]
    fail = [sys.executable, '-c', 'import sys; print("boom"); sys.exit(3)']
    assert rp.run_stage(row, 'train', fail, str(tmp_path)) == 3
    res = rp.collect_row(str(tmp_path / row.key))
    assert res.status == 'failed' and 'train exited with 3' in res.detail
    assert (tmp_path / row.key / 'reproduce_train.log').read_text().strip() == 'boom'
    # A later successful stage clears the failure (the row is then merely unfinished).
    assert rp.run_stage(row, 'train', [sys.executable, '-c', 'pass'], str(tmp_path)) == 0
    assert rp.collect_row(str(tmp_path / row.key)).status == 'unfinished'
    status = json.loads((tmp_path / row.key / rp.STATUS_FILE).read_text())
    assert [s['returncode'] for s in status['stages']] == [3, 0]


def test_collect_only_writes_markdown_json_and_chart(tmp_path, capsys, svg_backend):
    import matplotlib
    runs = tmp_path / 'runs'
    shutil.copytree(RUNS, runs)
    _cli().main(['--collect-only', '--work-root', str(runs), '--out', str(tmp_path / 'out'),
                 '--no-progress'])
    assert '| Faster R-CNN | ResNeSt-50 | 42.33 | 42.10 | -0.23 |' in capsys.readouterr().out
    data = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert len(data) == 26
    assert {d['result']['status'] for d in data} == {'finished', 'unfinished', 'failed',
                                                     'not run'}
    assert (tmp_path / 'out' / 'results.png').read_bytes()[:4] == b'\x89PNG'
    assert matplotlib.get_backend() == svg_backend  # the caller's backend is left alone
    assert (tmp_path / 'out' / 'results.md').read_text().startswith('### COCO object')


# Every value taken from a toolbox's metafile, checked against the installed copy.
TOOLBOX_REFS = [(r.key, ref) for r in pr.ROWS
                for ref in ((r.published,) if r.published else ()) + r.also
                if ref.source.startswith(('mmdet-', 'mmseg-'))]
METAFILE_FIELDS = {'bbox_mAP': 'box AP', 'segm_mAP': 'mask AP', 'mIoU': 'mIoU'}


def test_toolbox_references_are_all_collected():
    # 4 toolbox-published detection rows, 8 MMDetection ResNeSt and 3 MMSegmentation references.
    assert len(TOOLBOX_REFS) == 15
    assert all(ref.entry for _, ref in TOOLBOX_REFS)


@pytest.mark.parametrize('key,ref', TOOLBOX_REFS, ids=[f'{k}-{r.source}' for k, r in TOOLBOX_REFS])
def test_toolbox_references_match_installed_metafiles(key, ref):
    yaml = pytest.importorskip('yaml')
    pkg, algo = ref.source.split('-', 1)
    root = os.path.join(os.path.dirname(importlib.util.find_spec(pkg).origin), '.mim', 'configs')
    path = os.path.join(root, algo, 'metafile.yml' if pkg == 'mmdet' else 'metafile.yaml')
    with open(path) as f:
        models = yaml.safe_load(f)['Models']
    entry = next((m for m in models if m['Name'] == ref.entry), None)
    assert entry is not None, f'{key}: {ref.entry!r} is not in {path}'
    results = entry['Results'] if isinstance(entry['Results'], list) else [entry['Results']]
    values = {k: v for r in results for k, v in r['Metrics'].items()}
    assert ref.values, key
    for metric, value in ref.values.items():
        assert value == pytest.approx(values[METAFILE_FIELDS[metric]]), (key, metric)


def test_every_row_is_cited_and_tables_are_complete():
    for r in pr.ROWS:
        if r.published is not None:
            assert r.published.source in pr.SOURCES
            assert set(r.published.values) == set(pr.TABLES[r.table][1])
        assert all(a.source in pr.SOURCES for a in r.also)
    families = {r.backbone.split('-')[0] for r in pr.ROWS}
    assert families == {'ResNet', 'ResNeXt', 'Res2Net', 'ResNeSt'}


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, 'configs', 'demo')),
                    reason='no demo configs')
def test_demo_rows_pair_each_demo_config_with_a_resnet_of_the_same_widths(tmp_path):
    from mmengine.config import Config
    from resnest_mm.registry import MODELS
    import resnest_mm.models  # noqa: F401
    rows = rp.demo_rows(os.path.join(ROOT, 'configs', 'demo'), str(tmp_path), iters=5)
    assert len(rows) >= 2 and len(rows) % 2 == 0
    for own, swapped in zip(rows[::2], rows[1::2]):
        assert swapped.derived_from == own.config and swapped.table == own.table
        assert 'train_cfg.max_iters=5' in own.cfg_options or \
            'train_cfg.max_epochs=1' in own.cfg_options
        rp.write_derived_config(swapped)
        cfg = Config.fromfile(swapped.config)
        ours = MODELS.build(Config.fromfile(own.config).model.backbone)
        resnet = MODELS.build(cfg.model.backbone)
        assert type(resnet).__name__ == 'ResNet' and resnet.depth == 18
        assert resnet.stage_channels == ours.stage_channels
        assert resnet.stage_strides == ours.stage_strides


@pytest.mark.parametrize('progress', [False, True])
def test_run_rows_goes_on_after_a_failed_row_with_and_without_a_bar(tmp_path, monkeypatch,
                                                                    progress):
    rows = rp.full_rows(['^faster_rcnn_resnest50$', '^faster_rcnn_resnet50$'])
    calls = []

    def fake_stage(row, stage, argv, work_root):
        calls.append((row.key, stage))
        return 1 if row.key == 'faster_rcnn_resnest50' else 0
    monkeypatch.setattr(rp, 'run_stage', fake_stage)
    lines = []
    rp.run_rows(rows, str(tmp_path), demo=False, echo=lines.append, progress=progress)
    # The failed row stops at its train stage; the other row still trains and tests.
    assert sorted(calls) == [('faster_rcnn_resnest50', 'train'), ('faster_rcnn_resnet50', 'test'),
                             ('faster_rcnn_resnet50', 'train')]
    ended = [line for line in lines if ' started (log: ' not in line]
    failed = [line for line in ended if line.startswith('faster_rcnn_resnest50')]
    assert len(failed) == 1 and failed[0].startswith('faster_rcnn_resnest50: train FAILED (exit 1')
    assert [line for line in ended if line.startswith('faster_rcnn_resnet50')] == [
        'faster_rcnn_resnet50: train done', 'faster_rcnn_resnet50: test done']
    # Each stage is announced before it runs (no live bar under nohup or Slurm).
    assert [line.split(' (log: ')[0] for line in lines if ' started (log: ' in line] == [
        'faster_rcnn_resnet50: train started', 'faster_rcnn_resnet50: test started',
        'faster_rcnn_resnest50: train started']


def test_library_calls_with_relative_paths_run_stages_on_absolute_ones(tmp_path, monkeypatch):
    # The stages run in the repository root: relative paths given to the library (not only to
    # the tool) must not be read from there.
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(rp, 'run_stage', lambda row, stage, argv, root: seen.append(argv) or 0)
    rp.run_rows(rp.full_rows(['^faster_rcnn_resnest50$']), 'runs', demo=False, progress=False,
                echo=lambda line: None)
    work_dir = str(tmp_path / 'runs' / 'faster_rcnn_resnest50')
    assert [argv[argv.index('--work-dir') + 1] for argv in seen] == [work_dir, work_dir]
    shutil.copytree(os.path.join(ROOT, 'configs'), tmp_path / 'configs')
    rows = rp.demo_rows('configs/demo', 'runs', keys=['^demo_faster_rcnn'])
    assert [r.config for r in rows] == [
        str(tmp_path / 'configs' / 'demo' / 'faster_rcnn_resnest14_demo.py'),
        str(tmp_path / 'runs' / '_configs' / 'demo_faster_rcnn_resnest14_demo_resnet18.py')]


def test_running_rows_outside_a_checkout_is_one_clear_error(tmp_path, monkeypatch, capsys):
    # A pip-installed copy has no tools/ or configs/ beside it.
    monkeypatch.setattr(rp, 'REPO_ROOT', str(tmp_path / 'site-packages'))
    rows = rp.full_rows(['^faster_rcnn_resnest50$'])
    for dry_run in (True, False):
        with pytest.raises(rp.NotACheckout, match=r'lacks tools/dist_test\.sh, tools/dist_train'
                           r'\.sh, configs/faster_rcnn_resnest50_fpn\.py: a pip-installed'):
            rp.run_rows(rows, str(tmp_path / 'runs'), demo=False, dry_run=dry_run,
                        progress=False, echo=lambda line: None)
    assert not (tmp_path / 'runs').exists()
    with pytest.raises(SystemExit) as err:
        _cli().main(['--dry-run', '--work-root', str(tmp_path / 'runs')])
    assert err.value.code == 2
    assert re.search(r'lacks tools/dist_test\.sh, tools/dist_train\.sh, configs/\S+, configs/'
                     r'\S+ and \d+ more: a pip-installed resnest_mm holds the library only',
                     capsys.readouterr().err)


def test_a_row_finished_at_another_schedule_is_skipped_with_a_note(tmp_path):
    # A demo row finished with --demo-iters 5; the tool is now run with --demo-iters 8.
    work_root = tmp_path / 'root'
    work = work_root / 'demo_row'
    run = work / '20240101_120000'
    (run / 'vis_data').mkdir(parents=True)
    (run / 'vis_data' / 'config.py').write_text("train_cfg = dict(max_iters=5)\n")
    (run / 'vis_data' / 'scalars.json').write_text('{"loss": 1.0, "iter": 5, "step": 5}\n'
                                                   '{"mIoU": 20.5, "step": 5}\n')
    (work / 'last_checkpoint').write_text(str(work / 'iter_5.pth'))
    row = rp.RunRow(key='demo_row', table='ade20k', method='DeepLabV3', backbone='b',
                    config='configs/demo/deeplabv3_resnest14_demo.py', published=None, gpus=1,
                    cfg_options=('train_cfg.max_iters=8', 'train_cfg.val_interval=8'))
    state = rp.collect_row(str(work), metrics=('mIoU',))
    assert state.status == 'finished' and rp.requested_end(row) == ('iter', 8)
    assert rp.commands(row, str(work_root), demo=True, state=state) == []
    lines = []
    rp.run_rows([row], str(work_root), demo=True, echo=lines.append, progress=False)
    assert lines == ['demo_row: finished, skipped (trained to iter 5, not to the iter 8 asked '
                     'for now; to run it again, remove its folder or use another --work-root)']
    lines.clear()
    rp.run_rows([row], str(work_root), demo=True, dry_run=True, echo=lines.append)
    assert lines[1] == ('#   trained to iter 5, not to the iter 8 asked for now; to run it '
                        'again, remove its folder or use another --work-root')
    # The schedule it was trained to: skipped without a note.
    same = rp.replace(row, cfg_options=('train_cfg.max_iters=5',))
    assert rp.other_schedule(same, state) is None
    assert rp.requested_end(rp.replace(row, cfg_options=())) is None

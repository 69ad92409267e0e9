"""The reproduction pipeline: reading work dirs, planning commands, rendering the tables.

The fixture work dirs (tests/fixtures/reproduce/runs) hold what mmengine writes, for rows that
finished (by their final validation, or by a test run), stopped part way, failed, and finished
training without a final evaluation.
"""
import importlib.util
import json
import os
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
    assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_row_selection_and_bad_input():
    assert [r.key for r in rp.full_rows(['^mask_rcnn_resnest'])] == ['mask_rcnn_resnest50',
                                                                     'mask_rcnn_resnest101']
    assert {r.table for r in rp.full_rows(tables=['ade20k'])} == {'ade20k'}
    with pytest.raises(ValueError, match='match no row'):
        rp.full_rows(['retinanet'])
    with pytest.raises(ValueError, match="'voc'"):
        rp.full_rows(tables=['voc'])


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


def test_collect_only_writes_markdown_json_and_chart(tmp_path, capsys):
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
    assert (tmp_path / 'out' / 'results.md').read_text().startswith('### COCO object')


# Published numbers that the toolboxes' metafiles hold (checked against the installed copies).
METAFILE_CHECKS = [
    ('mmdet', 'faster_rcnn/metafile.yml', 'faster-rcnn_x101-32x4d_fpn_1x_coco',
     'faster_rcnn_resnext101_32x4d', 'bbox_mAP', 'box AP'),
    ('mmdet', 'mask_rcnn/metafile.yml', 'mask-rcnn_x101-32x4d_fpn_1x_coco',
     'mask_rcnn_resnext101_32x4d', 'segm_mAP', 'mask AP'),
    ('mmdet', 'res2net/metafile.yml', 'faster-rcnn_res2net-101_fpn_2x_coco',
     'faster_rcnn_res2net101', 'bbox_mAP', 'box AP'),
    ('mmdet', 'res2net/metafile.yml', 'mask-rcnn_res2net-101_fpn_2x_coco',
     'mask_rcnn_res2net101', 'segm_mAP', 'mask AP'),
]


@pytest.mark.parametrize('pkg,path,name,key,metric,field', METAFILE_CHECKS)
def test_published_numbers_match_installed_metafiles(pkg, path, name, key, metric, field):
    yaml = pytest.importorskip('yaml')
    root = os.path.dirname(importlib.util.find_spec(pkg).origin)
    with open(os.path.join(root, '.mim', 'configs', path)) as f:
        models = yaml.safe_load(f)['Models']
    entry = next(m for m in models if m['Name'] == name)
    values = {k: v for r in entry['Results'] for k, v in r['Metrics'].items()}
    assert pr.row(key).published.values[metric] == pytest.approx(values[field])


def test_mmseg_references_match_installed_metafiles():
    yaml = pytest.importorskip('yaml')
    root = os.path.dirname(importlib.util.find_spec('mmseg').origin)

    def miou(path, name):
        with open(os.path.join(root, '.mim', 'configs', path)) as f:
            models = yaml.safe_load(f)['Models']
        return next(m for m in models if m['Name'] == name)['Results']['Metrics']['mIoU']

    also = {r.key: r.also[0].values['mIoU'] for r in pr.rows_of('ade20k') if r.also}
    assert also['deeplabv3_resnet50_ade20k'] == miou(
        'deeplabv3/metafile.yaml', 'deeplabv3_r50-d8_4xb4-160k_ade20k-512x512')
    assert also['deeplabv3_resnet101_ade20k'] == miou(
        'deeplabv3/metafile.yaml', 'deeplabv3_r101-d8_4xb4-160k_ade20k-512x512')
    assert also['deeplabv3_resnest101_ade20k'] == miou(
        'resnest/metafile.yaml', 'resnest_s101-d8_deeplabv3_4xb4-160k_ade20k-512x512')


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
    failed = [line for line in lines if line.startswith('faster_rcnn_resnest50')]
    assert len(failed) == 1 and failed[0].startswith('faster_rcnn_resnest50: train FAILED (exit 1')
    assert [line for line in lines if line.startswith('faster_rcnn_resnet50')] == [
        'faster_rcnn_resnet50: train done', 'faster_rcnn_resnet50: test done']

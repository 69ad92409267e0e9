"""Packaging: a source distribution holds what setup.py reads and installs; the installed copy
(not the editable checkout) builds and runs a backbone from outside the repository."""
import glob
import os
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a release is cut from: setup.py, the files MANIFEST.in names, the package, and the tests
# (which setuptools would pick up by name unless MANIFEST.in prunes them).
SOURCES = ('setup.py', 'MANIFEST.in', 'README.md', 'LICENSE', 'requirements', 'resnest_mm',
           'tests')


def _run(args, cwd, **env):
    # No index: nothing is downloaded, and the build uses this environment's setuptools.
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PIP_NO_INDEX='1', **env))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_the_sdist_installs_and_its_copy_runs_outside_the_repository(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
        else:
            shutil.copy(path, src / name)
    _run([sys.executable, 'setup.py', '-q', 'sdist', '-d', str(tmp_path / 'dist')], src)
    sdist, = glob.glob(str(tmp_path / 'dist' / 'resnest_mm-*.tar.gz'))
    with tarfile.open(sdist) as tar:
        names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    assert {'LICENSE', 'README.md', 'requirements/runtime.txt', 'requirements/mminstall.txt',
            'requirements/tests.txt', 'requirements/build.txt'} <= names
    # Not a partial test suite (test files without their conftest and fixtures cannot run).
    assert not [n for n in names if n.startswith('tests/')]

    site = tmp_path / 'site'
    _run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
          '--target', str(site), sdist], tmp_path)
    assert glob.glob(str(site / 'resnest_mm-*.dist-info' / 'licenses' / 'LICENSE'))
    script = ('import torch, resnest_mm\n'
              'from resnest_mm.models import ResNeSt\n'
              'model = ResNeSt(depth=14, base_channels=8, stem_channels=16).eval()\n'
              'with torch.no_grad():\n'
              '    outs = model(torch.rand(1, 3, 64, 64))\n'
              'print(resnest_mm.__file__, [tuple(o.shape) for o in outs])\n')
    out = _run([sys.executable, '-c', script], tmp_path, PYTHONPATH=str(site))
    assert out.split()[0] == str(site / 'resnest_mm' / '__init__.py')
    assert '[(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]' in out

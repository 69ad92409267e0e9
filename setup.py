"""Install resnest_mm. The pinned stack is installed by ``tools/install.sh``."""
# Lets an older Python read this file and report python_requires, not a TypeError.
from __future__ import annotations

import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name: str) -> list[str]:
    """Return the requirement lines of ``requirements/<name>.txt`` without comments."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt'), encoding='utf-8') as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'resnest_mm', 'version.py'), encoding='utf-8') as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='resnest_mm',
    version=read_version(),
    description='ResNeSt, ResNeXt, Res2Net and ResNet backbones for MMDetection 3.x and '
                'MMSegmentation 1.x',
    long_description=open(osp.join(HERE, 'README.md'), encoding='utf-8').read()
    if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['resnest_mm', 'resnest_mm.*']),
    python_requires='>=3.9',
    install_requires=read_requirements('runtime'),
    extras_require={
        'mm': read_requirements('mminstall'),
        'tests': read_requirements('tests'),
        'build': read_requirements('build'),
    },
    license='Apache-2.0',
    license_files=['LICENSE'],
)

#!/usr/bin/env python
"""Write the synthetic demo data sets (used by configs/demo/ and the tests).

    python tools/make_demo_data.py                 # both, under data/
    python tools/make_demo_data.py --kind coco     # data/demo_coco: shapes, COCO instance format
    python tools/make_demo_data.py --kind ade      # data/demo_ade: toy scenes, ADE20K layout

tools/train.py writes a demo set by itself when a demo config needs it and it is missing.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KINDS = {'coco': 'demo_coco', 'ade': 'demo_ade'}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kind', choices=['coco', 'ade', 'all'], default='all',
                        help='which data set (default: all)')
    parser.add_argument('--root', default='data',
                        help='parent folder; the sets go to ROOT/demo_coco and ROOT/demo_ade')
    parser.add_argument('--num-train', type=int, help='training images (default: per set)')
    parser.add_argument('--num-val', type=int, help='validation images (default: per set)')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (('num_train', args.num_train), ('num_val', args.num_val),
                                ('seed', args.seed)) if v is not None}
    for kind in (['coco', 'ade'] if args.kind == 'all' else [args.kind]):
        module = f'resnest_mm.demo_data.{kind}'
        try:
            import importlib
            make = getattr(importlib.import_module(module), f'make_demo_{kind}')
        except (ImportError, AttributeError) as err:
            print(f'error: the {kind} demo data generator ({module}.make_demo_{kind}) is not '
                  f'available: {err}', file=sys.stderr)
            return 1
        root = os.path.join(args.root, KINDS[kind])
        try:
            make(root, **kwargs)
        except ValueError as err:
            print(f'error: {err}', file=sys.stderr)
            return 2
        except OSError as err:  # e.g. --root is a file, or a folder that cannot be written
            print(f'error: cannot write {root!r}: {err}', file=sys.stderr)
            return 1
        print(f'wrote {root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

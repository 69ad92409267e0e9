#!/usr/bin/env python
r"""Convert a backbone checkpoint (official ResNeSt, Res2Net, torchvision, timm, MMDetection or
MMSegmentation layout) to resnest_mm's layout, strictly, optionally verifying the result.

    python tools/convert_weights.py resnest50-528c19ca.pth checkpoints/resnest50_mm.pth \
        --variant resnest50 --verify
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_value(text: str):
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None) -> int:
    from resnest_mm.models import VARIANTS
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='source checkpoint')
    parser.add_argument('dst', help='output checkpoint')
    parser.add_argument('--variant', required=True, choices=sorted(VARIANTS), metavar='NAME',
                        help='backbone variant, e.g. resnest50, res2net101, resnext101_32x4d')
    parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                        help='backbone argument overrides, e.g. pool_first_stage=False')
    parser.add_argument('--prefix', help="take the keys under this prefix (default: 'backbone' "
                        'when the checkpoint is a detector/segmentor)')
    parser.add_argument('--verify', action='store_true',
                        help='reload strictly and compare with the official network if any')
    parser.add_argument('--trust', action='store_true',
                        help='allow arbitrary pickled objects in SRC (only for trusted files)')
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        if '=' not in item:
            parser.error(f'--set {item!r}: expected KEY=VALUE')
        key, value = item.split('=', 1)
        overrides[key] = parse_value(value)
    import pickle
    from resnest_mm.checkpoint import CheckpointMismatchError, convert_file
    try:
        convert_file(args.src, args.dst, args.variant, overrides, prefix=args.prefix,
                     verify=args.verify, trust=args.trust)
    except ValueError as err:  # bad arguments: --variant with --set, dst
        parser.error(str(err))
    except (CheckpointMismatchError, FileNotFoundError, pickle.UnpicklingError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

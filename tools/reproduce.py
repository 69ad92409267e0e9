"""Reproduce the ResNeSt paper's transfer tables (COCO detection, COCO instance segmentation,
ADE20K) and render them beside the published numbers.

Examples:
    python tools/reproduce.py --dry-run                 # the full-scale commands
    python tools/reproduce.py --rows faster_rcnn --gpus 8
    python tools/reproduce.py --collect-only            # tables from the work dirs as they are
    python tools/reproduce.py --demo                    # the whole pipeline, miniature, on CPU

See docs/reproduce.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnest_mm.report import check_output_folder  # noqa: E402
from resnest_mm.reproduce import (REPO_ROOT, NotACheckout, collect, demo_rows,  # noqa: E402
                                  full_rows, render_markdown, run_rows, with_gpus,
                                  write_outputs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--demo', action='store_true',
                   help='run the demo configs (configs/demo) with tiny schedules on this machine')
    p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    p.add_argument('--collect-only', action='store_true',
                   help='run nothing; render the tables from the work dirs')
    p.add_argument('--rows', nargs='+', default=None, help='regexes of the row keys to take')
    p.add_argument('--tables', nargs='+', default=None,
                   choices=('coco_det', 'coco_inst', 'ade20k'))
    p.add_argument('--gpus', type=int, default=None,
                   help='GPUs per run (default: the published recipe: 8 for COCO, 4 for ADE20K)')
    p.add_argument('--work-root', default=None,
                   help='default work_dirs/reproduce (work_dirs/reproduce_demo with --demo)')
    p.add_argument('--out', default=None, help='folder of results.{md,json,png} '
                   '(default: the work root)')
    p.add_argument('--demo-dir', default=None,
                   help='with --demo: folder of the demo configs (default: configs/demo)')
    p.add_argument('--demo-iters', type=int, default=None,
                   help='with --demo: training iterations of each demo row (default: 20)')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.collect_only and args.dry_run:
        parser.error('--collect-only runs nothing and --dry-run prints the commands; give one')
    if args.collect_only:
        given = [flag for flag, value in (('--gpus', args.gpus), ('--demo-iters', args.demo_iters))
                 if value is not None]
        if given:
            verb = 'applies' if len(given) == 1 else 'apply'
            parser.error(f'{" and ".join(given)} only {verb} when rows run; --collect-only '
                         'runs nothing')
    if args.dry_run and args.out is not None:
        parser.error('--out names where the tables go; --dry-run writes none')
    if not args.demo:
        given = [flag for flag, value in (('--demo-dir', args.demo_dir),
                                          ('--demo-iters', args.demo_iters)) if value is not None]
        if given:
            verb = 'applies' if len(given) == 1 else 'apply'
            parser.error(f'{" and ".join(given)} only {verb} with --demo')
    elif args.gpus is not None:
        parser.error('--gpus applies to the full-scale rows; --demo runs each row in one '
                     'process on this machine')
    if args.gpus is not None and args.gpus < 1:
        parser.error(f'--gpus={args.gpus} is not valid; expected an integer >= 1')
    demo_iters = 20 if args.demo_iters is None else args.demo_iters
    if demo_iters < 1:
        parser.error(f'--demo-iters={demo_iters} is not valid; expected >= 1')
    # Absolute: the stages run in the repository root, wherever this tool was started.
    root = os.path.abspath(args.work_root or os.path.join(
        'work_dirs', 'reproduce_demo' if args.demo else 'reproduce'))
    out = os.path.abspath(args.out) if args.out else root
    for flag, path in (('--work-root', root), ('--out', out)):
        try:
            check_output_folder(path, name=flag)
        except ValueError as err:
            parser.error(str(err))
    try:
        if args.demo:
            rows = demo_rows(os.path.abspath(args.demo_dir) if args.demo_dir
                             else os.path.join(REPO_ROOT, 'configs', 'demo'), root,
                             iters=demo_iters, keys=args.rows, tables=args.tables)
        else:
            rows = full_rows(args.rows, args.tables)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.gpus is not None:
        changed = sorted({row.gpus for row in rows} - {args.gpus})
        rows = [with_gpus(row, args.gpus) for row in rows]
        if changed:
            print(f'--gpus {args.gpus}: the published recipes train on {changed} GPUs; the '
                  'total batch changes with the GPU count, so the learning rate is scaled to it '
                  '(--cfg-options auto_scale_lr.enable=True, base batch 16)')
    if not args.collect_only:
        try:
            run_rows(rows, root, demo=args.demo, dry_run=args.dry_run,
                     progress=not args.no_progress)
        except NotACheckout as err:
            parser.error(str(err))
        if args.dry_run:
            return
    results = collect(rows, root)
    print(render_markdown(rows, results, demo=args.demo))
    paths = write_outputs(rows, results, out, demo=args.demo)
    print(f"\nwritten: {paths['md']}, {paths['json']}, {paths['png']}")


if __name__ == '__main__':
    main()

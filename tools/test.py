#!/usr/bin/env python
r"""Evaluate a checkpoint of an MMDetection or MMSegmentation config of resnest_mm on its test data
(the toolbox follows the config's default_scope) and print the metrics.

    python tools/test.py configs/demo/faster_rcnn_resnest14_demo.py \
        work_dirs/faster_rcnn_resnest14_demo/iter_600.pth
    torchrun --nproc_per_node 8 tools/test.py CONFIG CHECKPOINT --launcher pytorch

Checkpoints are read with torch's safe loading (weights_only=True) plus the few numpy/mmengine
types mmengine checkpoints hold; nothing else is unpickled.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    from resnest_mm.runner import LAUNCHERS, DictAction
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file, or a URL (https://...)')
    parser.add_argument('--work-dir', help='output folder for the logs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    parser.add_argument('--out', help='MMDetection: a .pkl file for the raw predictions; '
                                      'MMSegmentation: a folder for the predicted label maps')
    parser.add_argument('--show', action='store_true',
                        help='show each image with its predictions (needs a display)')
    parser.add_argument('--show-dir', help='draw the predictions into image files in this '
                                           'folder (MMDetection: under the work dir; '
                                           'MMSegmentation: every 50th test batch, see '
                                           'default_hooks.visualization.interval)')
    parser.add_argument('--wait-time', type=float, default=2.0,
                        help='seconds each image of --show stays up (default 2)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation (the config's tta_model and tta_pipeline)")
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from resnest_mm import runner as rr
    try:
        cfg = rr.load_config(args.config, cfg_options=args.cfg_options, work_dir=args.work_dir,
                             launcher=args.launcher, load_from=args.checkpoint)
        rr.add_test_outputs(cfg, out=args.out, show=args.show, show_dir=args.show_dir,
                            wait_time=args.wait_time)
        if args.tta:
            rr.use_tta(cfg)
        rr.check_launch_environment(args.launcher)  # before any data is written
        rr.prepare_data(cfg, mode='test')
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    try:
        metrics = rr.test(cfg, checkpoint=args.checkpoint)
        # Before the process group goes: without it every rank is the main process.
        rr.print_metrics(metrics, title='test metrics')
    except rr.RUN_ERRORS as err:
        print(f'error: {rr.run_error_message(err)}', file=sys.stderr)
        return 2
    finally:
        rr.shutdown_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())

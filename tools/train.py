#!/usr/bin/env python
r"""Train an MMDetection or MMSegmentation config of resnest_mm (the toolbox follows the config's
default_scope) with mmengine's Runner, then print the final validation metrics.

    python tools/train.py configs/demo/faster_rcnn_resnest14_demo.py
    python tools/train.py configs/faster_rcnn_resnest50_fpn.py --work-dir work_dirs/frcnn_s50 \
        --cfg-options model.backbone.init_cfg.checkpoint=/data/resnest50-528c19ca.pth
    torchrun --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch   # tools/dist_train.sh

Demo configs (data_root data/demo_coco or data/demo_ade) write their synthetic data when missing.
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
    parser.add_argument('--work-dir', help='output folder (logs, checkpoints)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CHECKPOINT',
                        help='resume from CHECKPOINT, or from the latest in the work dir when '
                             'no path is given')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help="scale the learning rate to the total batch size (the config's "
                             'auto_scale_lr.base_batch_size is what its rate is for)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_iters=100 '
                             'model.backbone.init_cfg=None')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='job launcher (tools/dist_train.sh and tools/slurm_train.sh set it)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)  # torch.distributed.launch compatibility
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from resnest_mm import runner as rr
    try:
        cfg = rr.load_config(args.config, cfg_options=args.cfg_options, work_dir=args.work_dir,
                             resume=args.resume, amp=args.amp, launcher=args.launcher,
                             auto_scale_lr=args.auto_scale_lr)
        rr.check_launch_environment(args.launcher)  # before any data is written
        rr.prepare_data(cfg, mode='train')
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    try:
        metrics = rr.train(cfg)
        # Before the process group goes: without it every rank is the main process.
        rr.print_metrics(metrics)
    except rr.RUN_ERRORS as err:
        print(f'error: {rr.run_error_message(err)}', file=sys.stderr)
        return 2
    finally:
        rr.shutdown_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())

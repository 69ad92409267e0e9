"""Benchmark backbones against MMDetection's built-ins and the official ResNeSt, interleaved.

Examples:
    python tools/benchmark.py resnest50 resnext50_32x4d res2net50 resnet50
    python tools/benchmark.py configs/faster_rcnn_resnest50_fpn.py --mode infer --peers mmdet
    python tools/benchmark.py resnest50 --device cuda --amp --channels-last --batch 32
    python tools/benchmark.py resnest50 resnet50 --compile    # every implementation compiled

See docs/benchmark.md for what each column measures.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnest_mm.benchmark import (BenchmarkSettings, chart_formats, check_specs,  # noqa: E402
                                  render_markdown, resolve_spec, run_benchmark, save_chart,
                                  save_json)
from resnest_mm.report import check_output_file  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('networks', nargs='+', help='variant names (resnest50, ...) or config files')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--size', type=int, default=224, help='input height and width')
    p.add_argument('--iters', type=int, default=None, help='timed repetitions (default 10)')
    p.add_argument('--warmup', type=int, default=None, help='warm-up repetitions (default 3)')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', action='store_true',
                   help='mixed precision (float16 on CUDA, bfloat16 on CPU)')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--mode', default='both', choices=('infer', 'train', 'both'))
    p.add_argument('--peers', default='mmdet,official',
                   help="comma-separated subset of 'mmdet,official', or 'none'")
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads')
    p.add_argument('--compile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help='torch.compile every implementation (backend: inductor if not given; '
                        'compiling takes the first warm-up repetition)')
    p.add_argument('--json', default=None, help='write the results as JSON here')
    p.add_argument('--png', default=None, help='write a chart of speed against parameters here')
    p.add_argument('--fast', action='store_true',
                   help='1 warm-up and 3 timed repetitions (smoke tests, not figures to quote)')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fast and (args.iters is not None or args.warmup is not None):
        parser.error('--fast sets 3 timed and 1 warm-up repetitions; give either --fast or '
                     '--iters/--warmup')
    default = dict(iters=3, warmup=1) if args.fast else dict(iters=10, warmup=3)
    names = [p for p in args.peers.split(',') if p]
    if 'none' in names and names != ['none']:
        parser.error(f"--peers={args.peers!r}: 'none' cannot be combined with peers")
    peers = tuple(p for p in names if p != 'none')
    try:
        settings = BenchmarkSettings(
            batch=args.batch, size=args.size,
            iters=default['iters'] if args.iters is None else args.iters,
            warmup=default['warmup'] if args.warmup is None else args.warmup, device=args.device,
            amp=args.amp, channels_last=args.channels_last,
            modes=('infer', 'train') if args.mode == 'both' else (args.mode,), peers=peers,
            threads=args.threads, compile=args.compile)
        settings.check()
        specs = [resolve_spec(n) for n in args.networks]
        check_specs(specs)
        if args.json:
            check_output_file(args.json, name='--json')
        if args.png:
            check_output_file(args.png, name='--png', extensions=chart_formats())
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    result = run_benchmark(specs, settings, progress=not args.no_progress)
    print(render_markdown(result))
    if args.json:
        save_json(result, args.json)
        print(f'\nJSON: {args.json}')
    if args.png:
        save_chart(result, args.png)
        print(f'chart: {args.png}')


if __name__ == '__main__':
    main()

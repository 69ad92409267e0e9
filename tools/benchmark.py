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

from resnest_mm.benchmark import (BenchmarkSettings, render_markdown, resolve_spec,  # noqa: E402
                                  run_benchmark, save_chart, save_json)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('networks', nargs='+', help='variant names (resnest50, ...) or config files')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--size', type=int, default=224, help='input height and width')
    p.add_argument('--iters', type=int, default=10, help='timed repetitions')
    p.add_argument('--warmup', type=int, default=3, help='warm-up repetitions')
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
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    peers = tuple(p for p in args.peers.split(',') if p and p != 'none')
    settings = BenchmarkSettings(
        batch=args.batch, size=args.size, iters=3 if args.fast else args.iters,
        warmup=1 if args.fast else args.warmup, device=args.device, amp=args.amp,
        channels_last=args.channels_last,
        modes=('infer', 'train') if args.mode == 'both' else (args.mode,), peers=peers,
        threads=args.threads, compile=args.compile)
    specs = [resolve_spec(n) for n in args.networks]
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

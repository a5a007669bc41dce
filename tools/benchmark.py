#!/usr/bin/env python
"""One benchmark for every evit_mm model against what a user would run instead, side by side in one run.

Families (``--models``; a family name selects all its models, ``--quick`` one small model of each): efficientvit_m
(M0..M5 classifiers; peers timm, MobileNetV3-Large), efficientvit_b / efficientvit_l (backbones; peer timm),
efficientvit_seg (peer SegFormer-B1, mmseg), efficientvit_sam (image encoders; peers SAM ViT-B/H, ViT-L on request),
efficientvit_sr (x2 lightweight and high-res; peers SwinIR-light, EDSR, Restormer, mmagic).  Each evit_mm model runs
eager, deploy (``evit_mm.deploy``) and onnx (onnxruntime); timm's same architecture, with the same weights, eager,
fused, channels_last and onnx.  Outputs are checked before any timing.

Timing: ``--warmup`` seconds untimed, then ``--repeats`` windows of ``--duration`` seconds, interleaved in rounds;
a ratio is the median over windows of the ratio to the other candidate's nearest window.  Outputs: markdown tables
on stdout; benchmark.json, benchmark.md and speed_vs_params.png in ``--out-dir``.  The harness is the package
``evit_mm.benchmark``; docs/benchmarks.md describes the protocols and the results.

Examples:
  python tools/benchmark.py --quick                           # every family, tiny, about a minute
  python tools/benchmark.py --models efficientvit_m --threads 1 all
  python tools/benchmark.py --models efficientvit_seg_b1 --peers segformer --img-size 1024x2048
  python tools/benchmark.py --models efficientvit_sam --peers sam_vit_b sam_vit_l sam_vit_h
  python tools/benchmark.py --models efficientvit_sr --img-size 160x240 --threads 1 all
  python tools/benchmark.py --models efficientvit_m --device cuda --amp fp16
"""
from __future__ import annotations

import argparse
import os.path as osp
import shlex
import sys

try:
    import evit_mm  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from evit_mm.benchmark import options as opt  # noqa: E402
from evit_mm.benchmark.report import write_outputs  # noqa: E402
from evit_mm.benchmark.runner import run  # noqa: E402
from evit_mm.benchmark.specs import DEFAULT_PEERS, MODEL_SPECS, PEER_SPECS, families  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    doc_head, doc_rest = __doc__.split('\n\n', 1)
    parser = argparse.ArgumentParser(description=doc_head, epilog=doc_rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    known = ', '.join(list(families()) + list(MODEL_SPECS))
    add('--models', nargs='+', default=['efficientvit_m'], metavar='NAME',
        help=f'models or families to benchmark (default: efficientvit_m = M0..M5; all: every family); known: {known}')
    add('--quick', action='store_true',
        help='one small model per family at a tiny size, batch 2, 0.1 s windows, no warm-up: checks that every '
             'family runs (seconds, not a measurement); overrides --models')
    add('--peers', nargs='*', default=list(DEFAULT_PEERS), metavar='PEER',
        help=f"comparison points: {', '.join(PEER_SPECS)} (default: all but sam_vit_l; each is used with the "
             "families it belongs to; none: --peers)")
    add('--no-onnx', dest='onnx', action='store_false',
        help='skip the onnxruntime forms (evit_mm and timm exported to ONNX)')
    add('--no-peer-channels-last', dest='peer_channels_last', action='store_false',
        help='do not also time timm and MobileNetV3 with channels_last weights')
    add('--device', nargs='+', default=['cpu'], choices=['cpu', 'cuda'],
        help='cpu: the CPU protocol; cuda: the GPU protocol (skipped with a message without a GPU)')
    add('--threads', nargs='+', type=opt.threads_arg, default=[1], metavar='N',
        help="CPU threads, positive ints or 'all' (torch's default); several run in turn (default 1)")
    add('--batch-size', type=opt.positive(int), default=None,
        help='CPU batch size (default: 16 for M/B/L, 1 for seg/SAM/SR)')
    add('--gpu-batch-size', type=opt.gpu_batch, default='max',
        help="GPU batch: 'max' (largest power of two that fits, default) or a positive int")
    add('--max-batch', type=opt.positive(int), default=4096,
        help='upper bound of the GPU batch search (default 4096; the paper uses 2048)')
    add('--amp', choices=['fp16', 'bf16', 'off'], default='fp16',
        help='GPU autocast dtype (default fp16, as the paper); the CPU protocol is always fp32')
    add('--img-size', type=opt.img_size, default=None, metavar='N|HxW',
        help="input resolution for every model and peer, N (square) or HxW (default: each model's own: 224 for "
             "M/B/L, 512x1024 seg, 512/1024 SAM, 128 SR; SAM ViT peers 1024)")
    add('--warmup', type=opt.non_negative, default=2.0,
        help='seconds of untimed iterations per model before timing (default 2; 0: none)')
    add('--duration', type=opt.positive(float), default=10.0, help='seconds per timed window (default 10)')
    add('--repeats', type=opt.positive(int), default=3,
        help='timed windows per model; the median is reported (default 3)')
    add('--peer-windows', choices=['per-model', 'once'], default='per-model',
        help='time a light shared peer (MobileNetV3) after every model of its family (default), so that each '
             'ratio against it pairs adjacent windows, or once per round')
    add('--interleave', choices=['model', 'all'], default='model',
        help="model (default): build, time and free one model at a time (its evit_mm and timm forms, its family's "
             'peers beside it), so memory is that of the largest model; all: build every candidate first and '
             'interleave all of them in each round (memory: all models at once)')
    add('--seed', type=int, default=0, help='seed of the inputs and weights')
    add('--out-dir', default=osp.join('work_dirs', 'benchmark'),
        help='where benchmark.json, benchmark.md and speed_vs_params.png go (default work_dirs/benchmark)')
    add('--progress', choices=['auto', 'on', 'off'], default='auto',
        help='tqdm progress bar on stderr (auto: for runs estimated at 20 s or more)')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--quick' in argv:
        parser.set_defaults(batch_size=2, duration=0.1, repeats=1, warmup=0.0)
    return opt.finish(parser, parser.parse_args(argv), argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = 'python tools/benchmark.py' + (' ' + shlex.join(argv) if argv else '')
    result = run(args, command, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if result is None:
        return 0
    table, paths = write_outputs(result, args.out_dir)
    print(table)
    print()
    for path in paths.values():
        print(f'wrote {osp.abspath(path)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

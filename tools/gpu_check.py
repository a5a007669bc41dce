#!/usr/bin/env python
"""The prepared GPU check: every evit_mm model family on CUDA in one short command, with one report.

For EfficientViT-M0/M5 + FPN, B1/L1 + seg head, SAM-L0/XL1 (encoder, predictor, a phase-2 training step on
mmengine's AmpOptimWrapper) and SR lightweight x2: fp32 and bf16/fp16 autocast forward and backward against a CPU
fp32 run of the same weights (max relative error; NaN/inf fails), evit_mm.deploy and channels_last on CUDA, then
throughput beside timm's same architecture (batch 64 at 224) and segment_anything's ViT-H encoder (batch 16 at
each model's size), eager and torch.compile. Writes gpu_check.json and gpu_check.md to --out-dir (after every
phase, so a run cut short leaves a report). Exit status 1 when a check failed, 0 otherwise.

A global --budget (default 440 s) bounds the run so that it ends within 8 minutes on one H100: the numerics
always run, timings and compiles that would not fit are skipped with a note. Missing optional libraries (timm,
segment_anything, mmengine) make their parts skipped, with the reason. The harness is
evit_mm.benchmark.gpu_check; docs/gpu.md says how to run it on a machine without network (the carry list).

Examples:
  python tools/gpu_check.py                           # on a CUDA machine: the whole check, about 7 minutes
  python tools/gpu_check.py --dry-run                 # on the CPU, tiny sizes: the same code paths (a test)
  python tools/gpu_check.py --models efficientvit_sam_l0 --budget 200
  python tools/gpu_check.py --carry-command           # the pip download command of the carry list
"""
from __future__ import annotations

import argparse
import os.path as osp
import shlex
import sys
import time

try:
    import evit_mm  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from evit_mm.benchmark import gpu_check  # noqa: E402
from evit_mm.benchmark.options import non_negative, positive  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    doc_head, doc_rest = __doc__.split('\n\n', 1)
    parser = argparse.ArgumentParser(description=doc_head, epilog=doc_rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add('--dry-run', action='store_true',
        help='run on the CPU with tiny sizes and batches, fp32, 0.05 s windows and no compile: checks the code '
             'paths')
    add('--models', nargs='+', default=None, metavar='NAME',
        help=f"cases to run (default all): {', '.join(gpu_check.CASES)}")
    add('--amp', choices=['fp16', 'bf16'], default='fp16',
        help="autocast dtype of the timings, the compile checks and the training step on CUDA (default fp16, the "
             "papers' GPU protocol; the dry run times fp32)")
    add('--precisions', nargs='*', choices=['bf16', 'fp16'], default=None,
        help='autocast dtypes checked against the CPU besides fp32 (default both on CUDA, none in the dry run: '
             'CPU autocast is slow, give --precisions bf16 to exercise it)')
    add('--compile', choices=['auto', 'on', 'off'], default='auto',
        help='torch.compile forms (auto: on CUDA, off in the dry run)')
    add('--compile-backend', default='inductor',
        help="torch.compile's backend (default inductor; 'eager' traces without generating code: a quick test)")
    add('--no-throughput', dest='throughput', action='store_false', help='numerics only, no timing')
    add('--budget', dest='budget_s', type=positive(float), default=None,
        help='seconds for the whole run (default 440 on CUDA, 600 in the dry run)')
    add('--warmup', type=non_negative, default=None, help='untimed seconds per model (default 0.5; dry run 0)')
    add('--duration', type=positive(float), default=None,
        help='seconds per timed window (default 0.5; dry run 0.05)')
    add('--repeats', type=positive(int), default=None, help='timed windows per model (default 3; dry run 1)')
    add('--compile-guess', dest='compile_guess_s', type=positive(float), default=45.0,
        help='seconds one torch.compile is assumed to take before the first one was measured (default 45)')
    add('--reserve', dest='reserve_s', type=non_negative, default=None,
        help='seconds kept free at the end of the budget (default 15; dry run 0)')
    add('--seed', type=int, default=0, help='seed of the weights and inputs')
    add('--out-dir', default=osp.join('work_dirs', 'gpu_check'),
        help='where gpu_check.json and gpu_check.md go (default work_dirs/gpu_check)')
    add('--carry-command', action='store_true',
        help='print the pip download command of the wheels a machine without network needs, and exit')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    dry = args.dry_run
    defaults = dict(precisions=[] if dry else ['bf16', 'fp16'], budget_s=600.0 if dry else 440.0,
                    warmup=0.0 if dry else 0.5, duration=0.05 if dry else 0.5, repeats=1 if dry else 3,
                    reserve_s=0.0 if dry else 15.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        gpu_check.select_cases(args.models)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.carry_command:
        print(gpu_check.carry_command())
        return 0
    argv = sys.argv[1:] if argv is None else argv
    command = 'python tools/gpu_check.py' + (' ' + shlex.join(argv) if argv else '')

    start = time.perf_counter()

    def log(msg):
        print(f'[{time.perf_counter() - start:6.1f} s] {msg}', file=sys.stderr, flush=True)

    paths = {}

    def write(result):
        paths.update(gpu_check.write_report(result, args.out_dir))

    try:
        result = gpu_check.run(args, command, log=log, write=write)
    except RuntimeError as err:
        print(f'gpu_check: {err}', file=sys.stderr)
        return 2
    print(gpu_check.markdown(result))
    for path in paths.values():
        print(f'wrote {osp.abspath(path)}')
    failed = [r for r in result['checks'] if r['status'] in ('fail', 'error')]
    if failed:
        print(f"{len(failed)} check(s) failed: " + '; '.join(f"{r['case']} {r['check']} {r['precision']}"
                                                           for r in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

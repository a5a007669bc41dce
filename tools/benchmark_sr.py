#!/usr/bin/env python
"""Super-resolution speed: EfficientViT-SR against mmagic's SwinIR (lightweight), Restormer and EDSR, in one run.

Models (all x2, random weights; speed does not depend on the values):

  evit-sr-light        EfficientViT-SR lightweight, width 1.0    (configs/efficientvit_sr/...lightweight-w1.0_x2...)
  evit-sr-light-w0.75  the same, width 0.75
  evit-sr-highres      EfficientViT-SR high-resolution, width 1.0 (stride-4 blocks; ...highres-w1.0_x2...)
  evit-sr-highres-w0.75
  swinir-light         mmagic SwinIRNet from mmagic's swinir_x2s64w8d4e60 config (SwinIR-light: embed 60, 4x6 blocks,
                       window 8, pixelshuffledirect), the paper's lightweight-SR baseline
  restormer            mmagic Restormer from mmagic's restormer_official_dfwb-color-sigma15 config (dim 48, blocks
                       4/6/6/8, 4 refinement), the paper's high-resolution-SR baseline
  edsr                 mmagic EDSRNet from mmagic's edsr_x2c64b16 config (64 channels, 16 blocks)

Every peer is built by mmagic's ``MODELS`` registry from the ``model.generator`` of its published config, so its
hyper-parameters are mmagic's. Restormer has no upsampler (it restores at its input size); it is timed on the
same LR input as the others, the cheapest way it could serve x2 SR (a pre-upsampled 2H x 2W input costs about 4x
more), so the speed-up reported over it is a lower bound.

Protocol: batch ``--batch-size`` (1) at each ``--sizes`` (160x240, the paper's BSD100 x2 input, and 512x512, the
FFHQ input), fp32, ``torch.inference_mode()``, on CPU with each of ``--threads`` (1 and all cores), and on the GPU
when one is present (``--devices``; ``--gpu-dtype`` for autocast). Each model first runs ``--warmup`` seconds (at
least one call); then ``--repeats`` rounds, in each of which every model runs, one after the other (interleaved,
so that a change in machine load hits all models alike), for ``--duration`` seconds (at least one call). A model's
latency is the median over rounds of (window time / calls); throughput is batch / latency. Each speed-up is the
median over rounds of (peer latency / EfficientViT latency) within the same round.

Outputs: a markdown table on stdout, ``--json`` (every measurement, the machine and the command).

    python tools/benchmark_sr.py --threads 1 all --json work_dirs/benchmark_sr.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import cpu_model_name  # noqa: E402

PEER_CONFIGS = {
    'swinir-light': 'mmagic::swinir/swinir_x2s64w8d4e60_8xb4-lr2e-4-500k_div2k.py',
    'restormer': 'mmagic::restormer/restormer_official_dfwb-color-sigma15.py',
    'edsr': 'mmagic::edsr/edsr_x2c64b16_1xb16-300k_div2k.py',
}
OURS = {
    'evit-sr-light': ('lightweight', 1.0),
    'evit-sr-light-w0.75': ('lightweight', 0.75),
    'evit-sr-highres': ('highres', 1.0),
    'evit-sr-highres-w0.75': ('highres', 0.75),
}
ALL_MODELS = list(OURS) + list(PEER_CONFIGS)
#: which EfficientViT-SR each peer is compared with (the paper's pairings)
REFERENCE = {'swinir-light': 'evit-sr-light', 'edsr': 'evit-sr-light', 'restormer': 'evit-sr-highres'}


def build_model(name: str) -> torch.nn.Module:
    if name in OURS:
        from evit_mm.models import efficientvit_sr_highres, efficientvit_sr_lightweight
        preset, width = OURS[name]
        return (efficientvit_sr_lightweight if preset == 'lightweight' else efficientvit_sr_highres)(2, width)
    from mmagic.registry import MODELS
    from mmengine.hub import get_config
    from mmengine.registry import init_default_scope
    init_default_scope('mmagic')
    cfg = get_config(PEER_CONFIGS[name])  # the config file shipped inside the installed mmagic
    return MODELS.build(cfg.model.generator)


def count_macs(model: torch.nn.Module, shape) -> int:
    """Multiply-accumulates of one forward (FlopCounterMode: convolutions and matrix products, 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(*shape))
    return counter.get_total_flops() // 2


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _window(model, x, device: str, seconds: float, autocast_dtype) -> float:
    """Run ``model`` for about ``seconds`` (at least once); return seconds per call."""
    ctx = torch.autocast('cuda', dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    calls, start = 0, time.perf_counter()
    with torch.inference_mode(), ctx:
        while True:
            model(x)
            calls += 1
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return elapsed / calls


def measure(models: dict, size, device: str, threads, args, progress) -> list[dict]:
    """Interleaved rounds of every model at one setting; returns one row per model."""
    if device == 'cpu':
        torch.set_num_threads(threads)
    dtype = getattr(torch, args.gpu_dtype) if device == 'cuda' and args.gpu_dtype != 'float32' else None
    x = torch.rand(args.batch_size, 3, *size, device=device)
    outputs = {}
    for name, model in models.items():
        model.to(device)
        with torch.inference_mode():
            outputs[name] = tuple(model(x).shape)
        _window(model, x, device, args.warmup, dtype)
        progress.update(1)
    rounds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            rounds[name].append(_window(model, x, device, args.duration, dtype))
            progress.update(1)
    rows = []
    for name in models:
        latency = statistics.median(rounds[name])
        row = dict(model=name, device=device, threads=threads if device == 'cpu' else None, size=list(size),
                   batch_size=args.batch_size, output_shape=list(outputs[name]), latency_s=latency,
                   throughput_img_s=args.batch_size / latency, windows_s=rounds[name])
        ref = REFERENCE.get(name)
        if ref in rounds:
            row['vs'] = ref
            row['speedup_of_vs'] = statistics.median(p / r for p, r in zip(rounds[name], rounds[ref]))
        rows.append(row)
    for model in models.values():
        model.to('cpu')
    return rows


def format_table(report: dict) -> str:
    lines = ['| setting | model | params (M) | GMACs | latency (ms) | throughput (img/s) | EfficientViT-SR speed-up |',
             '|---|---|---:|---:|---:|---:|---|']
    for r in report['results']:
        setting = f"{r['size'][0]}x{r['size'][1]} {r['device']}" + (
            f" {r['threads']} thr" if r['threads'] is not None else '')
        info = report['models'][r['model']]
        macs = info['gmacs'].get(f"{r['size'][0]}x{r['size'][1]}")
        speed = f"{r['speedup_of_vs']:.1f}x ({r['vs']})" if 'speedup_of_vs' in r else ''
        lines.append(f"| {setting} | {r['model']} | {info['params_m']:.2f} | "
                     f"{'' if macs is None else f'{macs:.1f}'} | {r['latency_s'] * 1000:.0f} | "
                     f"{r['throughput_img_s']:.2f} | {speed} |")
    return '\n'.join(lines)


def _threads(text: str):
    if text == 'all':
        return os.cpu_count() or 1
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'threads must be >= 1 or "all", got {text}')
    return value


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be HxW (e.g. 160x240), got {text!r}') from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return h, w


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=ALL_MODELS, choices=ALL_MODELS, help='models (default: all)')
    parser.add_argument('--sizes', nargs='+', type=_size, default=[(160, 240), (512, 512)],
                        help='LR input sizes HxW (default 160x240 512x512)')
    parser.add_argument('--devices', nargs='+', default=['cpu', 'cuda'], choices=['cpu', 'cuda'],
                        help='devices (cuda is skipped, with a message, without a GPU)')
    parser.add_argument('--threads', nargs='+', type=_threads, default=[1, os.cpu_count() or 1],
                        help='CPU threads, one setting each: a number or "all" (default: 1 and all)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--warmup', type=float, default=1.0, help='untimed seconds per model (at least one call)')
    parser.add_argument('--duration', type=float, default=2.0, help='seconds per timed window (at least one call)')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds; the median is reported')
    parser.add_argument('--gpu-dtype', default='float32', choices=['float32', 'float16', 'bfloat16'],
                        help='GPU autocast dtype (default fp32, no autocast)')
    parser.add_argument('--no-macs', action='store_true', help='skip counting MACs')
    parser.add_argument('--json', help='write every measurement here')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error('--repeats and --batch-size must be >= 1')
    return args


def main(argv=None) -> dict:
    from tqdm import tqdm
    args = parse_args(argv)
    devices = [d for d in args.devices if d == 'cpu' or torch.cuda.is_available()]
    if 'cuda' in args.devices and 'cuda' not in devices:
        print('no CUDA GPU: GPU timings skipped', file=sys.stderr)
    models = {}
    for name in args.models:
        models[name] = build_model(name).eval()
    info = {}
    for name, model in models.items():
        gmacs = {}
        if not args.no_macs:
            for size in args.sizes:
                gmacs[f'{size[0]}x{size[1]}'] = count_macs(model, (1, 3, *size)) / 1e9
        info[name] = dict(params_m=sum(p.numel() for p in model.parameters()) / 1e6, gmacs=gmacs)
    settings = [(size, 'cpu', t) for size in args.sizes for t in args.threads] if 'cpu' in devices else []
    settings += [(size, 'cuda', None) for size in args.sizes] if 'cuda' in devices else []
    default_threads = torch.get_num_threads()
    results = []
    with tqdm(total=len(settings) * len(models) * (1 + args.repeats), desc='benchmark_sr') as progress:
        for size, device, threads in settings:
            results += measure(models, size, device, threads, args, progress)
    torch.set_num_threads(default_threads)
    report = dict(
        command='python ' + ' '.join(shlex.quote(a) for a in [sys.argv[0]] + list(argv if argv is not None
                                                                                      else sys.argv[1:])),
        machine=dict(cpu=cpu_model_name(), cpu_count=os.cpu_count(), platform=platform.platform(),
                     torch=torch.__version__, gpu=torch.cuda.get_device_name(0) if 'cuda' in devices else None),
        protocol=dict(batch_size=args.batch_size, warmup_s=args.warmup, duration_s=args.duration,
                      repeats=args.repeats, gpu_dtype=args.gpu_dtype if 'cuda' in devices else None),
        models=info, results=results)
    print(format_table(report))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
        print(f'wrote {args.json}')
    return report


if __name__ == '__main__':
    main()

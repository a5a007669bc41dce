#!/usr/bin/env python
"""Latency of EfficientViT-B1 seg against mmseg's SegFormer-B1 at Cityscapes resolution, in one run.

    python tools/benchmark_seg.py [--height 1024] [--width 2048] [--repeats 3] [--warmup 1]
                                  [--devices cpu cuda] [--threads N] [--json results.json]

Both models take a ``1 x 3 x H x W`` image and return their decode head's logits for 19 classes at the head's
native stride (EfficientViT: backbone + SegHead, stride 8; SegFormer: MiT-B1 + SegformerHead, stride 4); that is
what each network computes, and what each reference measures. ``--full-res`` adds each model's own final resize
to ``H x W`` (bicubic for EfficientViT, as its reference evaluation; bilinear for SegFormer, as mmseg).

* EfficientViT-B1: evit_mm's pure-PyTorch ``EfficientViTB('b1')`` + ``EfficientViTSegHead('b1_cityscapes')``
  with every BatchNorm folded into its conv (``fuse()``, the deploy mode).
* SegFormer-B1: the model of ``mmseg::segformer/segformer_mit-b1_8xb1-160k_cityscapes-1024x1024.py`` built by
  mmseg (SyncBN reverted to BN; random weights; ``EncoderDecoder._forward``, whole image).

Weights are random (latency does not depend on them). Every model runs under ``torch.inference_mode()``; each
timing is one forward (after ``--warmup`` untimed ones; CUDA timings are synchronised), and the models take
turns (A B A B ...) so that load from other processes on a shared machine hits both alike; the table shows the
median of ``--repeats`` and the speed-up ``SegFormer median / EfficientViT median`` per device. CUDA runs when
``cuda`` is among ``--devices`` and a GPU is present (``--gpu-dtype float16|bfloat16`` runs both models under
autocast). ``--channels-last`` runs both models (and the input) in the NHWC memory format, which oneDNN's CPU
convolutions prefer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import cpu_model_name  # noqa: E402

SEGFORMER_CONFIG = 'mmseg::segformer/segformer_mit-b1_8xb1-160k_cityscapes-1024x1024.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--height', type=int, default=1024, help='input height (default 1024)')
    parser.add_argument('--width', type=int, default=2048, help='input width (default 2048)')
    parser.add_argument('--repeats', type=int, default=3, help='timed forwards per model and device (default 3)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed forwards before timing (default 1)')
    parser.add_argument('--devices', nargs='+', default=['cpu', 'cuda'], choices=['cpu', 'cuda'],
                        help='devices to run on (cuda is skipped without a GPU); default: cpu cuda')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads (default: torch.get_num_threads(), i.e. all cores)')
    parser.add_argument('--gpu-dtype', choices=['float32', 'float16', 'bfloat16'], default='float32',
                        help='CUDA only: run under autocast with this dtype (default float32, no autocast)')
    parser.add_argument('--full-res', action='store_true',
                        help="include each model's final resize of the logits to H x W")
    parser.add_argument('--no-fuse', action='store_true', help='do not fold EfficientViT BatchNorms (train-mode graph)')
    parser.add_argument('--channels-last', action='store_true',
                        help='run both models and the input in channels_last (NHWC) memory format')
    parser.add_argument('--json', default=None, help='write the results here (default: print only)')
    return parser.parse_args(argv)


class EfficientViTSeg(torch.nn.Module):
    """backbone -> SegHead (-> optional bicubic resize to the input size)."""

    def __init__(self, fuse: bool, full_res: bool):
        super().__init__()
        from evit_mm.models import EfficientViTB, EfficientViTSegHead
        self.backbone = EfficientViTB('b1')
        self.head = EfficientViTSegHead.from_config('b1_cityscapes')
        self.eval()
        if fuse:
            self.backbone.fuse()
            self.head.fuse()
        self.full_res = full_res

    def forward(self, x):
        out = self.head(self.backbone(x))
        if self.full_res:
            out = torch.nn.functional.interpolate(out.float(), size=x.shape[-2:], mode='bicubic', align_corners=False)
        return out


class SegFormer(torch.nn.Module):
    """mmseg's SegFormer-B1 Cityscapes model (-> optional bilinear resize to the input size)."""

    def __init__(self, full_res: bool):
        super().__init__()
        from mmengine.hub import get_config
        from mmengine.model import revert_sync_batchnorm
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        from evit_mm.compat import apply_all
        apply_all()
        init_default_scope('mmseg')
        cfg = get_config(SEGFORMER_CONFIG).model
        cfg.backbone.init_cfg = None  # no download; latency does not depend on the weights
        cfg.decode_head.num_classes = 19
        self.model = revert_sync_batchnorm(MODELS.build(cfg)).eval()
        self.full_res = full_res

    def forward(self, x):
        out = self.model._forward(x)
        if self.full_res:
            out = torch.nn.functional.interpolate(out.float(), size=x.shape[-2:], mode='bilinear', align_corners=False)
        return out


def _sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_models(models: dict, x, repeats: int, warmup: int, autocast_dtype=None) -> dict:
    """Time the models on ``x`` with the repeats *interleaved* (A B A B ...), so that a load change on a shared
    machine affects every model alike. Returns ``{name: (times in s, output shape)}``."""
    device = x.device.type
    ctx = (torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(device_type=device, enabled=False))
    times = {name: [] for name in models}
    shapes = {}
    with torch.inference_mode(), ctx:
        for name, model in models.items():
            for _ in range(warmup):
                model(x)
        _sync(device)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                out = model(x)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
                shapes[name] = tuple(out.shape)
    return {name: (times[name], shapes[name]) for name in models}


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [d for d in args.devices if d == 'cpu' or torch.cuda.is_available()]
    skipped = [d for d in args.devices if d not in devices]
    models = {
        'EfficientViT-B1' + ('' if args.no_fuse else ' (fused)'):
            lambda: EfficientViTSeg(not args.no_fuse, args.full_res),
        'SegFormer-B1 (mmseg)': lambda: SegFormer(args.full_res),
    }
    results = []
    for device in devices:
        dtype = None
        if device == 'cuda' and args.gpu_dtype != 'float32':
            dtype = getattr(torch, args.gpu_dtype)
        x = torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(0)).to(device)
        built = {name: factory().to(device) for name, factory in models.items()}
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            built = {name: model.to(memory_format=torch.channels_last) for name, model in built.items()}
        timed = time_models(built, x, args.repeats, args.warmup, dtype)
        for name, model in built.items():
            times, out_shape = timed[name]
            params = sum(p.numel() for p in model.parameters())
            results.append(dict(model=name, device=device, dtype=args.gpu_dtype if device == 'cuda' else 'float32',
                                input=[args.height, args.width], output=list(out_shape), params_m=params / 1e6,
                                median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times),
                                times_ms=[1e3 * t for t in times]))
            print(f'  {device}: {name}: median {results[-1]["median_ms"]:.1f} ms over {len(times)}', flush=True)
        del built
        if device == 'cuda':
            torch.cuda.empty_cache()
    speedups, paired = {}, {}
    for device in devices:
        rows = {r['model']: r for r in results if r['device'] == device}
        evit = next(r for n, r in rows.items() if n.startswith('EfficientViT'))
        seg = rows['SegFormer-B1 (mmseg)']
        speedups[device] = seg['median_ms'] / evit['median_ms']
        # the two models ran back to back in every repeat: the median of the per-repeat ratios is robust to load
        # that changes between repeats on a shared machine
        paired[device] = statistics.median(s / e for s, e in zip(seg['times_ms'], evit['times_ms']))
    return dict(
        torch=torch.__version__, threads=torch.get_num_threads(), cpu=cpu_model_name(),
        gpu=torch.cuda.get_device_name(0) if 'cuda' in devices else None, skipped_devices=skipped,
        repeats=args.repeats, warmup=args.warmup, full_res=args.full_res, channels_last=args.channels_last,
        results=results, speedup=speedups,
        paired_speedup=paired)


def format_table(report: dict) -> str:
    lines = ['| model | device | input | output | params (M) | median (ms) | min (ms) '
             '| speed-up vs SegFormer-B1: of medians / median of per-repeat ratios |',
             '|---|---|---|---|---|---|---|---|']
    for r in report['results']:
        ratio = '' if r['model'].startswith('SegFormer') else \
            f"{report['speedup'][r['device']]:.2f}x / {report['paired_speedup'][r['device']]:.2f}x"
        dev = r['device'] if r['device'] == 'cpu' else f"{r['device']} ({r['dtype']})"
        lines.append(f"| {r['model']} | {dev} | {r['input'][0]}x{r['input'][1]} | "
                     f"{'x'.join(str(s) for s in r['output'][1:])} | {r['params_m']:.2f} | {r['median_ms']:.1f} | "
                     f"{r['min_ms']:.1f} | {ratio} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    print(f'benchmark at {args.height}x{args.width}, {args.repeats} timed forwards (+{args.warmup} warm-up), '
          f'torch {torch.__version__}, {torch.get_num_threads() if not args.threads else args.threads} CPU threads'
          f"{', channels_last' if args.channels_last else ''}", flush=True)
    report = dict(command=' '.join(['python', 'tools/benchmark_seg.py'] + list(sys.argv[1:] if argv is None else argv)),
                  **run(args))
    print(format_table(report))
    if report['skipped_devices']:
        print(f"skipped (not available): {', '.join(report['skipped_devices'])}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'wrote {args.json}')
    return report


if __name__ == '__main__':
    main()

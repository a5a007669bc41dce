#!/usr/bin/env python
"""Image-encoder throughput of EfficientViT-SAM L0..XL1 against segment-anything's ViT-B/L/H, in one run.

    python tools/sam_benchmark.py [--models l0 l1 l2 xl0 xl1 vit_b vit_h] [--device cpu|cuda] [--threads N]
                                  [--batch-size B] [--warmup S] [--duration S] [--repeats R] [--fuse]
                                  [--amp fp16|bf16] [--image-size N] [--json out.json]

Each model's image encoder runs at its own input size (512 for L0-L2, 1024 for XL and SAM ViT; ``--image-size``
forces one size for all, e.g. for a quick look), fp32 unless ``--amp``, under ``torch.inference_mode()``, with
random weights (timing does not depend on them). The SAM ViT encoders are segment-anything's
``ImageEncoderViT`` with SAM's settings. ``--fuse`` folds the EfficientViT BatchNorms into the convolutions first
(the deploy form; the official TensorRT numbers are measured that way).

Timing: ``--warmup`` seconds of untimed iterations per model, then ``--repeats`` windows of at least
``--duration`` seconds (at least one iteration each), interleaved across models so that changes in machine load
hit all alike; the reported throughput is the median over the windows. The table gives images/s, ms/image and
the speed-up over the slowest SAM ViT in the run (ViT-H if included). Compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EVIT = ('l0', 'l1', 'l2', 'xl0', 'xl1')
# segment_anything's build_sam settings: embed dim, depth, heads, global attention blocks
SAM_VIT = {'vit_b': (768, 12, 12, (2, 5, 8, 11)), 'vit_l': (1024, 24, 16, (5, 11, 17, 23)),
           'vit_h': (1280, 32, 16, (7, 15, 23, 31))}


def build_encoder(name: str, image_size, fuse: bool):
    import torch
    if name in EVIT:
        from evit_mm.models.sam import build_efficientvit_sam
        enc = build_efficientvit_sam(name, image_size=image_size).image_encoder
        if fuse:
            enc.fuse()
        return enc.eval(), enc.img_size
    if name in SAM_VIT:
        from functools import partial

        from segment_anything.modeling import ImageEncoderViT
        dim, depth, heads, glob = SAM_VIT[name]
        size = image_size or 1024
        with torch.device('meta'):  # skip the slow default init: fill with small random values instead
            enc = ImageEncoderViT(depth=depth, embed_dim=dim, img_size=size, mlp_ratio=4,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                                  qkv_bias=True, use_rel_pos=True, global_attn_indexes=glob, window_size=14,
                                  out_chans=256)
        enc = enc.to_empty(device='cpu')
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, t in enc.state_dict(keep_vars=True).items():
                t.copy_(torch.randn(t.shape, generator=g) * 0.02 if t.dim() > 1 else
                        (torch.ones(t.shape) if n.endswith('weight') else torch.zeros(t.shape)))
        return enc.eval(), size
    raise SystemExit(f'error: unknown model {name!r}; known: {", ".join(EVIT + tuple(SAM_VIT))}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--models', nargs='+', default=list(EVIT) + ['vit_b', 'vit_h'])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    ap.add_argument('--batch-size', type=int, default=1)
    ap.add_argument('--warmup', type=float, default=2.0, help='seconds of warm-up per model')
    ap.add_argument('--duration', type=float, default=5.0, help='seconds per timed window (at least 1 iteration)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--fuse', action='store_true', help='fold EfficientViT BatchNorms into the convs')
    ap.add_argument('--amp', choices=['fp16', 'bf16'], help='autocast dtype (GPU)')
    ap.add_argument('--image-size', type=int, help='one input size for every model (default: each model\'s own)')
    ap.add_argument('--json', help='also write the results here')
    args = ap.parse_args(argv)

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but no CUDA GPU is available')
    amp = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(args.amp)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    runs = {}
    for name in args.models:
        enc, size = build_encoder(name, args.image_size, args.fuse)
        enc = enc.to(device)
        x = torch.randn(args.batch_size, 3, size, size, device=device)
        params = sum(p.numel() for p in enc.parameters()) / 1e6

        def step(enc=enc, x=x):
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32,
                                                        enabled=amp is not None):
                enc(x)

        t0 = time.perf_counter()
        step()
        sync()
        while time.perf_counter() - t0 < args.warmup:
            step()
            sync()
        runs[name] = dict(step=step, size=size, params=params, rates=[])
        print(f'  {name}: built, input {size}, {params:.1f}M params', file=sys.stderr)

    for _ in range(args.repeats):
        for name, r in runs.items():
            n, t0 = 0, time.perf_counter()
            while True:
                r['step']()
                sync()
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= args.duration:
                    break
            r['rates'].append(n * args.batch_size / elapsed)

    vits = [n for n in runs if n in SAM_VIT]
    base = min(vits, key=lambda n: statistics.median(runs[n]['rates'])) if vits else None
    base_rate = statistics.median(runs[base]['rates']) if base else None
    threads = torch.get_num_threads() if device.type == 'cpu' else '-'
    print(f'image-encoder throughput, device {args.device}, threads {threads}, batch {args.batch_size}, '
          f'{"amp " + args.amp if amp else "fp32"}{", fused BN" if args.fuse else ""}')
    header = f'| model | input | params | img/s | ms/img |' + (f' x {base} |' if base else '')
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    results = []
    for name, r in runs.items():
        rate = statistics.median(r['rates'])
        row = f'| {name} | {r["size"]} | {r["params"]:.1f}M | {rate:.3g} | {1000 / rate:.1f} |'
        if base:
            row += f' {rate / base_rate:.1f} |'
        print(row)
        results.append(dict(model=name, input=r['size'], params_m=r['params'], img_per_s=rate,
                            speedup=rate / base_rate if base else None, windows=r['rates']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=args.device, threads=threads, batch_size=args.batch_size, amp=args.amp,
                           fuse=args.fuse, results=results), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())

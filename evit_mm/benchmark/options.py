"""The options of ``tools/benchmark.py``: argument types, model and peer selection, and the timed settings."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import torch

from .specs import MODEL_SPECS, PEER_SPECS, QUICK, QUICK_PEERS, ModelSpec, families


def threads_arg(text: str):
    if text == 'all':
        return 'all'
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive (or 'all'), got {value}")
    return value


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a positive {kind.__name__}, got {text!r}') from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    parse.__name__ = f'positive {kind.__name__}'
    return parse


def non_negative(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of seconds, got {text!r}') from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def gpu_batch(text):
    return 'max' if text == 'max' else positive(int)(text)


def img_size(text: str):
    """``N`` (square) or ``HxW``: an int or an (H, W) tuple, each side at least 16 (the models' stride)."""
    parts = text.lower().split('x')
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected N or HxW (e.g. 224 or 160x240), got {text!r}') from None
    if len(values) not in (1, 2) or min(values) < 16:
        raise argparse.ArgumentTypeError(f'must be N or HxW with sides of at least 16 (the models have stride 16 '
                                         f'or more), got {text!r}')
    return values[0] if len(values) == 1 else tuple(values)


def finish(parser: argparse.ArgumentParser, args, argv: Sequence[str]):
    """Resolve the parsed arguments: ``--quick``'s models and sizes, models and families, peers; errors name the
    bad value."""
    args.sizes = {}
    if args.quick:
        args.models = [name for name, _ in QUICK if name in MODEL_SPECS]
        args.sizes = {name: size for name, size in QUICK}
        if '--peers' not in argv:
            args.peers = list(QUICK_PEERS)
        missing = [name for name, _ in QUICK if name not in MODEL_SPECS]
        if missing:
            print(f"--quick: skipped {', '.join(missing)} (evit_mm/models/sr.py does not exist)", file=sys.stderr)
    args.specs = resolve_models(parser, args.models)
    # a peer with a size of its own (SAM ViT: 1024) keeps it unless --img-size (or --quick) sets one for all
    args.peer_own_size = not args.quick and args.img_size is None
    peers = [p.lower() for p in args.peers if p.lower() != 'none']
    bad = [p for p in peers if p not in PEER_SPECS]
    if bad:
        parser.error(f"unknown peer(s): {', '.join(bad)}. Known peers: {', '.join(PEER_SPECS)} (or none)")
    args.peers = list(dict.fromkeys(peers))
    args.device = list(dict.fromkeys(args.device))
    args.threads = list(dict.fromkeys(args.threads))
    return args


def estimate_seconds(args, n_settings: int) -> float:
    """A lower bound of the timing time (warm-ups and windows; building and ONNX export come on top)."""
    n_forms = 2 + args.onnx
    n_model = sum(n_forms + (1 + n_forms + args.peer_channels_last) * ('timm' in args.peers and
                                                                      s.timm_build is not None) for s in args.specs)
    fams = {s.family for s in args.specs}
    n_peer = sum(1 + PEER_SPECS[p].onnx * args.onnx for p in args.peers
                 if not PEER_SPECS[p].per_model and fams & set(PEER_SPECS[p].families))
    return n_settings * ((n_model + n_peer) * args.warmup + (n_model + n_peer * 2) * args.repeats * args.duration)


def resolve_models(parser: argparse.ArgumentParser, names: Sequence[str]) -> list[ModelSpec]:
    """The specs named by ``names`` (models, families or ``all``), in order, once each; a parser error names the
    unknown ones and lists the known models and families."""
    fams = families()
    selected, unknown, empty = [], [], []
    for name in names:
        key = name.lower().replace('-', '_')
        if key == 'all':
            selected.extend(n for f in fams.values() for n in f)
        elif key in MODEL_SPECS:
            selected.append(key)
        elif key in fams:
            if not fams[key]:
                empty.append(key)
            selected.extend(fams[key])
        else:
            unknown.append(name)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}. Known models: {', '.join(MODEL_SPECS)}; "
                     f"families: {', '.join(f'{k} ({len(v)} models)' for k, v in fams.items())}")
    for key in empty:
        print(f'{key}: skipped, evit_mm/models/sr.py does not exist in this checkout', file=sys.stderr)
    return [MODEL_SPECS[name] for name in dict.fromkeys(selected)]


def settings_of(args) -> list[dict]:
    settings = []
    for device in args.device:
        if device == 'cuda':
            if not torch.cuda.is_available():
                built = torch.version.cuda or 'no CUDA (CPU-only build)'
                print(f'--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False; torch '
                      f'{torch.__version__}, built with {built}). Skipping the GPU protocol.', flush=True)
                continue
            label = (f"CUDA {torch.cuda.get_device_name(0)}, AMP {args.amp}, "
                     f"batch {args.gpu_batch_size if args.gpu_batch_size != 'max' else 'max pow2'}")
            settings.append(dict(device='cuda', protocol='gpu', batch_size=args.gpu_batch_size, label=label))
        else:
            for threads in args.threads:
                n = torch.get_num_threads() if threads == 'all' else threads
                name = f'all threads ({n})' if threads == 'all' else f"{n} thread{'s' if n > 1 else ''}"
                batch = f'batch {args.batch_size}' if args.batch_size else 'batch 16 (M/B/L) or 1 (seg/SAM/SR)'
                settings.append(dict(device='cpu', protocol='cpu', threads=n, batch_size=args.batch_size,
                                     label=f'CPU, {name}, {batch}, fp32'))
    return settings

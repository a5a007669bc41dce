#!/usr/bin/env python
"""Convert an EfficientViT-M (MSRA) checkpoint to evit_mm's ``EfficientViTM`` layout.

Inputs (detected automatically, or named with --format):
  cream-cls  official Cream ImageNet checkpoint, e.g. efficientvit_m4.pth ({'model': ...})
  cream-det  Cream detection checkpoint (mmdet 2.x, keys under 'backbone.'), or Cream's backbone alone
  timm       a timm efficientvit_m0..m5 state dict (.pth / .safetensors)
  evit_mm    this package's own layout (only the bias tables are resized if --window-size differs)

The converted backbone is checked by building EfficientViTM and loading it strictly; any missing, unexpected or
wrongly shaped key is listed and the tool exits with status 1.  The output is written with torch.save as
{'state_dict': ..., 'meta': {...}}.  For a whole detector checkpoint the output keeps the neck and head keys
unchanged (they already match mmdet 3.x and evit_mm's EfficientViTFPN) and puts the converted backbone under
'backbone.'; pass --backbone-only to keep only the backbone.

Examples:
  python tools/convert_efficientvit_msra.py efficientvit_m4.pth m4_evit_mm.pth
  python tools/convert_efficientvit_msra.py retinanet_efficientvit_m4_fpn_1x_coco.pth retinanet_m4.pth
  python tools/convert_efficientvit_msra.py timm_m0.safetensors m0.pth --format timm --arch m0
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys


def _import_evit_mm():
    try:
        import evit_mm  # noqa: F401
    except ImportError:  # running from a checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from evit_mm.models import checkpoint, convert_msra, efficientvit_msra
    return efficientvit_msra, convert_msra, checkpoint


def _window_size(text: str):
    try:
        values = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an int or 3 comma-separated ints, got {text!r}') from None
    if len(values) not in (1, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f'expected an int or 3 comma-separated ints, got {text!r}')
    return values[0] if len(values) == 1 else values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('input', help='checkpoint to convert (.pth/.pt/.safetensors)')
    parser.add_argument('output', help='where to write the converted checkpoint')
    parser.add_argument('--arch', default='auto',
                        help="m0..m5, or 'auto' to read it off the checkpoint (default)")
    parser.add_argument('--format', dest='fmt', default='auto',
                        choices=['auto', 'cream-cls', 'cream-det', 'timm', 'evit_mm'],
                        help='layout of the input (default: detect)')
    parser.add_argument('--window-size', type=_window_size, default=7,
                        help='attention window of the target model, an int or 3 comma-separated ints '
                             '(default 7, the detection setting; bias tables of other sizes are resized)')
    parser.add_argument('--kernels', default=None,
                        help="q-conv kernel sizes, comma-separated (default: the arch's, or the checkpoint's "
                             "with --arch auto)")
    parser.add_argument('--backbone-only', action='store_true',
                        help='for a detector checkpoint, write only the backbone weights (without prefix)')
    parser.add_argument('--allow-pickle', action='store_true',
                        help='read the input with torch.load(weights_only=False): only for files you trust '
                             '(needed when a checkpoint stores Python objects besides tensors)')
    return parser.parse_args(argv)


def _read(path: str, allow_pickle: bool, checkpoint):
    if allow_pickle:  # (torch_load_file: an empty or truncated file is reported with its name)
        return checkpoint.unwrap_state_dict(checkpoint.torch_load_file(path, map_location='cpu', weights_only=False))
    try:
        return checkpoint.read_checkpoint(path)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if 'Unsupported global' in line),
                      str(err).splitlines()[0])
        raise ValueError(f'{path} holds Python objects besides tensors and cannot be read safely ({reason}).\n'
                         'If you trust the file, re-run with --allow-pickle.') from None


def main(argv=None) -> int:
    args = parse_args(argv)
    msra, convert, checkpoint = _import_evit_mm()
    import torch

    if not os.path.isfile(args.input):
        print(f'error: no such file: {args.input}', file=sys.stderr)
        return 1
    try:
        state_dict = _read(args.input, args.allow_pickle, checkpoint)
        converted, report = convert.convert_msra_state_dict(state_dict, fmt=args.fmt, window_size=args.window_size,
                                                           return_report=True)
        inferred = convert.infer_msra_arch(converted)
    except (ValueError, KeyError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'input: {args.input} ({len(state_dict)} keys)')
    report.source = args.input
    print(report.summary())

    if args.arch == 'auto':
        if inferred['name'] is None:
            arch = {k: inferred[k] for k in ('embed_dims', 'depths', 'num_heads', 'kernels', 'key_dims')}
            print(f'arch: custom {arch}')
        else:
            arch = inferred['name']
            print(f'arch: {arch} (read off the checkpoint)')
        kernels = inferred['kernels'] if args.kernels is None else None
    else:
        arch = args.arch
        kernels = None
        print(f'arch: {arch}')
    if args.kernels is not None:
        kernels = tuple(int(k) for k in args.kernels.split(','))
    if isinstance(arch, str) and kernels is not None:
        default = msra.ARCH_SETTINGS[arch]['kernels']
        if tuple(default[:len(kernels)]) == tuple(kernels):
            kernels = None  # the arch's own kernels
        else:
            print(f'q-conv kernels: {kernels} (differ from the {arch} default {default})')

    try:
        model = msra.EfficientViTM(arch, window_size=args.window_size, kernels=kernels)
        checkpoint.load_state_dict_strict(model, converted, source=f'{args.input} ({report.format})')
    except checkpoint.CheckpointMismatchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'verified: strict load into EfficientViTM({arch!r}, window_size={args.window_size}) '
          f'with {len(converted)} backbone keys')

    if report.from_detector and not args.backbone_only:
        out = {f'backbone.{k}': v for k, v in converted.items()}
        out.update(report.other)
        print(f'kept {len(report.other)} non-backbone keys of the detector unchanged')
    else:
        out = converted
    meta = dict(source=os.path.basename(args.input), source_format=report.format,
                arch=arch if isinstance(arch, str) else dict(arch), window_size=args.window_size,
                kernels=tuple(model.arch_settings['kernels']), converter='evit_mm convert_efficientvit_msra')
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({'state_dict': out, 'meta': meta}, args.output)
    print(f'wrote {args.output} ({len(out)} keys)')
    return 0


if __name__ == '__main__':
    sys.exit(main())

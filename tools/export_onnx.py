#!/usr/bin/env python
"""Export an EfficientViT backbone or segmentation model to ONNX and check it in onnxruntime.

    python tools/export_onnx.py MODEL OUT.onnx [--checkpoint FILE] [--img-size H [W]] [--batch-size N]
                                [--static-batch] [--no-deploy] [--no-check] [--atol 1e-4] [--opset 17]

MODEL is a backbone (``efficientvit_m0`` .. ``m5``, ``efficientvit_b0`` .. ``b3``, ``efficientvit_l0`` .. ``l3``,
``efficientvit_xl0``/``xl1``; the graph returns every stage the backbone returns, as ``out0``, ``out1``, ...) or
a segmentation model (``efficientvit_seg_b1_cityscapes``, ``..._l2_ade20k``, ...: image -> stride-8 logits,
``output``). The input is ``input`` (B, 3, H, W), traced at ``--img-size`` (224; seg 512x1024) with a dynamic batch
unless ``--static-batch``.

The exported graph is the model's deploy form (``evit_mm.deploy``, NCHW: BatchNorms folded, constant attention
biases) unless ``--no-deploy``. Unless ``--no-check``, the file is run in onnxruntime and compared with the
eval-mode PyTorch model; the tool exits with status 1 if an output differs by more than ``--atol``.
``--pretrained``: the published weights of MODEL (downloaded once, docs/model_zoo.md); ``--checkpoint``: official /
timm / evit_mm weights, a path, URL or ``evit://NAME`` (read with the models' strict loaders); with neither the
weights are random (fine for checking the export). For EfficientViT-SAM use tools/sam_export_onnx.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(name: str, checkpoint: str | None, pretrained: bool = False):
    """The registry model ``name`` (a backbone or a segmentation model) and its default traced size."""
    from evit_mm.models.registry import create_model, get_entry, list_models
    try:
        entry = get_entry(name)
    except KeyError as err:
        raise SystemExit(f'error: {err.args[0]}') from None
    families = ('efficientvit_m', 'efficientvit_b', 'efficientvit_l', 'efficientvit_xl', 'efficientvit_seg')
    if entry.family not in families:
        raise SystemExit(f'error: {entry.name} is not a backbone or a segmentation model; this tool exports '
                         + ', '.join(n for n in list_models() if get_entry(n).family in families)
                         + ' (EfficientViT-SAM: tools/sam_export_onnx.py)')
    model = create_model(entry.name, pretrained=checkpoint or pretrained)
    return model, ((512, 1024) if entry.family == 'efficientvit_seg' else (224, 224))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('model')
    ap.add_argument('out')
    ap.add_argument('--checkpoint', help='weights to load: a path, a URL or evit://NAME (default: random)')
    ap.add_argument('--pretrained', action='store_true', help='the published weights of MODEL (docs/model_zoo.md)')
    ap.add_argument('--img-size', type=int, nargs='+', metavar='N', help='H [W] of the traced input')
    ap.add_argument('--batch-size', type=int, default=1, help='batch of the traced input (default 1)')
    ap.add_argument('--static-batch', action='store_true', help='fixed batch instead of a dynamic one')
    ap.add_argument('--no-deploy', action='store_true', help='export the eval-mode model as it is (BNs kept)')
    ap.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    ap.add_argument('--atol', type=float, default=1e-4)
    ap.add_argument('--opset', type=int, default=17)
    args = ap.parse_args(argv)
    if args.img_size is not None and not 1 <= len(args.img_size) <= 2:
        ap.error('--img-size takes H or H W')

    from evit_mm.onnx import export_onnx
    model, size = build(args.model, args.checkpoint, args.pretrained)
    if args.img_size:
        size = (args.img_size[0], args.img_size[-1])
    try:
        result = export_onnx(model.eval(), args.out, img_size=size, batch_size=args.batch_size,
                             dynamic_batch=not args.static_batch, deploy=not args.no_deploy,
                             check=not args.no_check, atol=args.atol, opset=args.opset)
    except AssertionError as err:
        print(f'error: onnxruntime check failed for {args.out}: {err}', file=sys.stderr)
        return 1
    print(f'wrote {result.path}: input {result.input_shape} -> '
          + ', '.join(f'{n} {s}' for n, s in zip(result.output_names, result.output_shapes)))
    if result.max_abs_diff_deploy is not None:
        print(f'deploy form vs eval-mode PyTorch: max abs diff {result.max_abs_diff_deploy:.2e}')
    if result.max_abs_diff is not None:
        print(f'onnxruntime vs eval-mode PyTorch: max abs diff {result.max_abs_diff:.2e} (atol {args.atol:g})')
    return 0


if __name__ == '__main__':
    sys.exit(main())

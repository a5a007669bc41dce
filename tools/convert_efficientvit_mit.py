#!/usr/bin/env python
"""Convert EfficientViT (MIT Han lab) checkpoints to evit_mm state dicts.

Accepted inputs (detected automatically, or forced with ``--from``):

* official classification checkpoints (``backbone.input_stem/stages.*.op_list...`` + ``head.op_list.*``),
* official segmentation checkpoints (``backbone.*`` + ``head.input_ops/middle/output_ops.*``),
* official EfficientViT-SAM checkpoints (``image_encoder.backbone.*`` ...; only ``--part backbone`` applies),
* timm ``efficientvit_b0..b3`` / ``efficientvit_l1..l3`` state dicts (``stem.*``, ``stages.N.blocks.M.*``),
* evit_mm's own state dicts (full, or a bare backbone).

The output is ``{'state_dict': ..., 'meta': ...}`` saved with ``torch.save``:

* ``--part all`` (default): evit_mm's full layout, ``backbone.*`` (+ ``head.*``), which is also the official layout;
* ``--part backbone``: bare backbone keys, for ``EfficientViTB/L.load_pretrained`` or an mm backbone's
  ``init_cfg=dict(type='Pretrained', checkpoint=...)``;
* ``--part head``: bare seg-head keys, for ``EfficientViTSegHead.load_pretrained``.

``--arch`` / ``--seg-head`` additionally build that model and load the result strictly, so a wrong checkpoint
fails here with the list of missing / unexpected / mis-shaped keys rather than later in training.

Examples::

    python tools/convert_efficientvit_mit.py l2.pt l2_evit.pth --arch l2
    python tools/convert_efficientvit_mit.py timm_b1.pth b1_backbone.pth --part backbone --arch b1
    python tools/convert_efficientvit_mit.py b1-ade20k.pt b1_ade.pth --arch b1 --seg-head b1_ade20k
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from evit_mm.models.checkpoint import CheckpointMismatchError, load_state_dict_strict, read_checkpoint
from evit_mm.models.efficientvit_mit import (MIT_BACKBONE_ARCHS, MIT_CHECKPOINT_FORMATS, build_efficientvit_backbone,
                                             convert_mit_state_dict, detect_mit_format, split_mit_state_dict)
from evit_mm.models.seg_head import SEG_HEAD_CONFIGS, EfficientViTSegHead


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Convert official / timm EfficientViT (MIT) B/L/XL checkpoints to evit_mm state dicts.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='source formats:\n' + '\n'.join(f'  {k:9s} {v}' for k, v in MIT_CHECKPOINT_FORMATS.items()))
    p.add_argument('src', help='input checkpoint (.pt/.pth/.safetensors)')
    p.add_argument('dst', help='output file')
    p.add_argument('--from', dest='src_format', default='auto', choices=['auto', *MIT_CHECKPOINT_FORMATS],
                   help='source format (default: detect)')
    p.add_argument('--part', default='all', choices=['all', 'backbone', 'head'],
                   help='what to write: everything with prefixes, or the bare backbone / head dict (default: all)')
    p.add_argument('--arch', choices=sorted(MIT_BACKBONE_ARCHS),
                   help='verify: build this backbone and load the converted weights strictly')
    p.add_argument('--norm-eps', type=float, default=None,
                   help='BatchNorm eps of the verification backbone (irrelevant to the weights; default per arch)')
    p.add_argument('--seg-head', choices=sorted(SEG_HEAD_CONFIGS),
                   help='verify: build this reference seg head and load the converted head weights strictly')
    p.add_argument('--overwrite', action='store_true', help='replace DST if it exists')
    return p.parse_args(argv)


def convert(args: argparse.Namespace) -> dict:
    """Read, convert, select, verify; returns the object to save."""
    raw = read_checkpoint(args.src)
    fmt = detect_mit_format(raw) if args.src_format == 'auto' else args.src_format
    full = convert_mit_state_dict(raw, fmt)
    backbone, head = split_mit_state_dict(full)
    print(f'{args.src}: {fmt} format, {len(raw)} tensors -> backbone {len(backbone)}, head {len(head)}')

    if args.arch:
        if not backbone:
            raise ValueError(f'{args.src} holds no backbone weights to verify against --arch {args.arch}')
        model = build_efficientvit_backbone(args.arch, norm_eps=args.norm_eps)
        load_state_dict_strict(model, backbone, source=f'{args.src} (backbone part)')
        print(f'verified: backbone loads strictly into EfficientViT-{args.arch.upper()}')
    if args.seg_head:
        if not head or any(k.startswith('op_list.') for k in head):
            found = 'a classification head' if head else 'no head'
            raise ValueError(f'{args.src} holds no segmentation head (found {found})')
        load_state_dict_strict(EfficientViTSegHead.from_config(args.seg_head), head,
                               source=f'{args.src} (head part)')
        print(f'verified: head loads strictly into the {args.seg_head} seg head')

    if args.part == 'backbone':
        out = backbone
    elif args.part == 'head':
        out = head
    else:
        out = full
    if not out:
        raise ValueError(f'{args.src} has nothing for --part {args.part}')
    meta = dict(source=os.path.basename(os.fspath(args.src)), source_format=fmt, part=args.part,
                converter='evit_mm tools/convert_efficientvit_mit.py')
    return {'state_dict': dict(out), 'meta': meta}


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.dst) and not args.overwrite:
        print(f'error: {args.dst} exists (use --overwrite)', file=sys.stderr)
        return 1
    try:
        ckpt = convert(args)
    except CheckpointMismatchError as e:
        print(f'error: verification failed:\n{e}', file=sys.stderr)
        return 1
    except (FileNotFoundError, KeyError, TypeError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    parent = os.path.dirname(os.path.abspath(args.dst))
    os.makedirs(parent, exist_ok=True)
    torch.save(ckpt, args.dst)
    print(f'wrote {len(ckpt["state_dict"])} tensors to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

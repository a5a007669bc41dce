#!/usr/bin/env python
"""EfficientViT-SAM demo: segment an image from a box, points, or everything, and save an overlay PNG.

    python tools/sam_demo.py IMAGE (--box X0 Y0 X1 Y1 | --point X Y [--point X Y ...] | --everything)
                             --out overlay.png [--model efficientvit_sam_l0] [--pretrained | --checkpoint FILE]

IMAGE is a file (PNG/JPEG/TIFF: grayscale, RGBA and 16-bit are converted) or ``skimage:NAME`` for one of
scikit-image's sample photographs (``skimage:astronaut``, ``skimage:coffee``, ``skimage:coins`` ...), which need
no download. ``--neg-point X Y`` adds background clicks; with a box and/or points, the mask with the highest
predicted IoU is drawn (``--all-masks`` draws the three). ``--everything`` runs the automatic mask generator
(``--points-per-side``, ``--pred-iou-thresh``, ``--stability-score-thresh``; the defaults are the reference
demo's 0.8 / 0.85).

``--pretrained`` loads the published weights of ``--model`` (``efficientvit_sam_{l0,l1,l2,xl0,xl1}.pt`` from
huggingface.co/mit-han-lab/efficientvit-sam, downloaded once and cached: docs/model_zoo.md); ``--checkpoint`` a
path, URL or ``evit://`` name. With neither the model has random weights: the tool runs end to end, but the masks
mean nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('image', help='image file or skimage:NAME')
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument('--box', nargs=4, type=float, metavar=('X0', 'Y0', 'X1', 'Y1'))
    mode.add_argument('--point', nargs=2, type=float, action='append', metavar=('X', 'Y'))
    mode.add_argument('--everything', action='store_true', help='automatic mask generation')
    ap.add_argument('--with-point', nargs=2, type=float, action='append', metavar=('X', 'Y'), default=[],
                    help='foreground point added to a --box prompt')
    ap.add_argument('--neg-point', nargs=2, type=float, action='append', metavar=('X', 'Y'), default=[],
                    help='background point (with --box or --point)')
    ap.add_argument('--out', required=True, help='output PNG')
    ap.add_argument('--model', default='efficientvit_sam_l0',
                    help='efficientvit_sam_l0 ... _l2, _xl0, _xl1 (or l0 ... xl1; default efficientvit_sam_l0)')
    ap.add_argument('--pretrained', action='store_true', help='the published weights (downloaded once, cached)')
    ap.add_argument('--checkpoint', help='weights: a path, a URL or evit://NAME (default: random weights)')
    ap.add_argument('--all-masks', action='store_true', help='draw all three multimask outputs')
    ap.add_argument('--points-per-side', type=int, default=32)
    ap.add_argument('--pred-iou-thresh', type=float, default=0.8)
    ap.add_argument('--stability-score-thresh', type=float, default=0.85)
    ap.add_argument('--device', default='cpu')
    args = ap.parse_args(argv)

    import torch
    from evit_mm.sam import (EfficientViTSamAutomaticMaskGenerator, EfficientViTSamPredictor, as_rgb_uint8,
                             build_efficientvit_sam)
    from evit_mm.sam.visualize import draw_prompts, load_image, overlay

    try:
        rgb = as_rgb_uint8(load_image(args.image))
    except ValueError as e:
        raise SystemExit(f'error: {args.image}: {e}')
    if args.checkpoint is None and not args.pretrained:
        print('warning: neither --pretrained nor --checkpoint: random weights, the masks are meaningless',
              file=sys.stderr)
    try:
        model = build_efficientvit_sam(args.model, args.checkpoint, pretrained=args.pretrained).to(args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f'error: {e}')

    t0 = time.perf_counter()
    points, labels, box = [], [], None
    if args.everything:
        amg = EfficientViTSamAutomaticMaskGenerator(model, points_per_side=args.points_per_side,
                                                    pred_iou_thresh=args.pred_iou_thresh,
                                                    stability_score_thresh=args.stability_score_thresh)
        with torch.inference_mode():
            records = amg.generate(rgb)
        records.sort(key=lambda r: r['area'], reverse=True)
        masks = [r['segmentation'] for r in records]
        summary = f'{len(masks)} masks'
    else:
        pos = args.point or args.with_point
        points = [tuple(p) for p in pos] + [tuple(p) for p in args.neg_point]
        labels = [1] * len(pos) + [0] * len(args.neg_point)
        box = np.array(args.box) if args.box else None
        predictor = EfficientViTSamPredictor(model)
        try:
            predictor.set_image(rgb)
            masks, iou, _ = predictor.predict(np.array(points).reshape(-1, 2) if points else None,
                                              np.array(labels) if points else None, box,
                                              multimask_output=box is None and len(points) == 1)
        except ValueError as e:
            raise SystemExit(f'error: {e}')
        order = np.argsort(-iou)
        masks = [masks[i] for i in order] if args.all_masks else [masks[order[0]]]
        summary = 'predicted IoU ' + ', '.join(f'{iou[i]:.3f}' for i in order)
    elapsed = time.perf_counter() - t0

    img = draw_prompts(overlay(rgb, masks), points, labels, box)
    from PIL import Image
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or '.', exist_ok=True)
    Image.fromarray(img).save(args.out)
    print(f'EfficientViT-SAM-{model.variant.upper()} on {args.image} ({rgb.shape[1]}x{rgb.shape[0]}): {summary}; '
          f'{elapsed:.2f} s; wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
